"""Helpers for tests: the model zoo as pytest params, and snapshots that prove a model was left
untouched."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.fx
import torch.nn as nn

import fxpass
from fxpass import zoo


def compile_entry(entry: zoo.ZooEntry, model: nn.Module) -> nn.Module:
    """Compile a zoo model with the options it needs (its scope, its boundaries)."""
    return fxpass.compile(model, **entry.compile_options())  # type: ignore[arg-type]


def graph_modules(model: nn.Module) -> list[torch.fx.GraphModule]:
    """The compiled parts of a model: itself in model scope, its GraphModules in module scope."""
    return [m for m in model.modules() if isinstance(m, torch.fx.GraphModule)]


def zoo_params() -> list[Any]:
    """One pytest param per zoo entry, skipped when its optional package is absent."""
    params = []
    for entry in zoo.entries():
        missing = entry.missing()
        marks = [pytest.mark.skip(reason=f"needs {', '.join(missing)}")] if missing else []
        params.append(pytest.param(entry, id=entry.name, marks=marks))
    return params


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything compile must leave as it was: classes, attribute names, tensor identities and
    values, the module tree."""
    return {
        "modules": [(name, type(m), tuple(m.__dict__), tuple(m._modules)) for name, m in model.named_modules()],
        "tensors": [
            (name, id(t), None if isinstance(t, nn.parameter.UninitializedTensorMixin) else t.detach().clone())
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        ],
        "training": [m.training for m in model.modules()],
    }


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["modules"] == after["modules"]
    assert before["training"] == after["training"]
    assert len(before["tensors"]) == len(after["tensors"])
    for (name, ident, value), (name2, ident2, value2) in zip(before["tensors"], after["tensors"]):
        assert (name, ident) == (name2, ident2)
        assert (value is None) == (value2 is None), name  # (a lazy module's uninitialized tensors)
        if value is not None:
            assert torch.equal(value, value2), name


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, NaN included: a model that diverges must diverge the same way."""
    return torch.equal(a, b) or (
        a.shape == b.shape and a.dtype == b.dtype and bool(torch.isclose(a, b, 0, 0, equal_nan=True).all())
    )


def forward(model: nn.Module, inputs: tuple[Any, ...], seed: int = 0) -> Any:
    """``model(*inputs)`` with torch's RNG seeded, so dropout draws the same numbers in both models."""
    torch.manual_seed(seed)
    return model(*inputs)


def assert_grads_equal(runtime: nn.Module, compiled: nn.Module) -> None:
    """Same parameter names in the same order, and bitwise-equal gradients (or both None)."""
    grads = [(n, p.grad) for n, p in runtime.named_parameters()]
    grads2 = [(n, p.grad) for n, p in compiled.named_parameters()]
    assert [n for n, _ in grads] == [n for n, _ in grads2]
    for (name, g), (_, g2) in zip(grads, grads2):
        assert (g is None) == (g2 is None), name
        if g is not None:
            assert same(g, g2), name


def assert_state_equal(runtime: nn.Module, compiled: nn.Module) -> None:
    """Same state_dict keys in the same order, bitwise-equal values."""
    state, state2 = runtime.state_dict(), compiled.state_dict()
    assert list(state) == list(state2)
    for key in state:
        assert same(state[key], state2[key]), key


def halve(w: torch.Tensor) -> torch.Tensor:
    """An importable pure transform."""
    return w / 2


class Counting(nn.Module):
    """A stateful transform: every call moves a counter, which shifts the result, so a transform
    evaluated once too often or too rarely shows in the output."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return w * (1.0 + 0.125 * self.calls.to(w.dtype))


def steps_side_by_side(
    runtime: nn.Module, compiled: nn.Module, inputs: tuple[Any, ...], modes: tuple[str, ...] = ("train", "eval", "train")
) -> None:
    """One optimizer step of each model per mode (fxpass.parity.side_by_side, which trains them
    in place): outputs, gradients, parameters, buffers and state_dict bitwise equal after every
    step (one side_by_side per step, so each sets its mode: see the kept-calls tests for a
    forward that changes a mode between steps)."""
    for step, mode in enumerate(modes):
        report = fxpass.parity.side_by_side(runtime, compiled, inputs, modes=(mode,), seed=step)
        assert report.ok, f"step {step} ({mode}):\n" + report.table(failures_only=True)
