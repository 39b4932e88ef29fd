"""Scale: a model with 10,000 patched layers compiles (no recursion limit on the way) and runs.
The time per layer is measured by the benchmarks (compile_scaling), not asserted here."""

from __future__ import annotations

import torch
import torch.nn as nn

import fxpass
from imitation_runtime import imitate

LAYERS = 10_000


def halve(w: torch.Tensor) -> torch.Tensor:
    return w * 0.5


def test_ten_thousand_patched_layers_compile_and_match() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[imitate(nn.Linear(2, 2), "halve", halve) for _ in range(LAYERS)])
    gm = fxpass.compile(model)
    record = fxpass.record_of(gm)
    assert len(record.patched_modules) == LAYERS
    assert record.counts()["inlined"] == 2 * LAYERS
    x = torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))
