"""What :func:`fxpass.parity.check` does after the trajectories: the save/load round trip and
the probes (``torch.export``, TorchScript, dynamo), each on a candidate it builds, each giving
rows instead of raising when the candidate fails.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fxpass._trajectory import Settings, row
from fxpass.comparison import error_text, flat
from fxpass.parity_report import ParityRow

__all__ = ["PROBES", "Probe", "save_load"]

#: A probe: (a function building a fresh candidate, the settings) -> (its row, graph breaks or None).
Probe = Callable[[Callable[[], nn.Module], Settings], tuple[ParityRow, int | None]]


def save_load(settings: Settings, candidate: nn.Module) -> list[ParityRow]:
    """``torch.save`` / ``torch.load`` of the candidate: the reloaded copy's state and output."""
    buffer = io.BytesIO()
    try:
        torch.save(candidate, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
        return [row("save_load/output", passed=False, detail=f"torch.save/torch.load failed: {error_text(e)}")]
    candidate.eval()
    loaded.eval()
    rows = [row("save_load/state_dict", settings.compare(candidate.state_dict(), loaded.state_dict()))]
    try:
        outputs = _eval_outputs(settings, candidate, loaded)
    except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
        return [*rows, row("save_load/output", passed=False, detail=f"reloaded candidate raised {error_text(e)}")]
    return [*rows, row("save_load/output", settings.compare(*outputs))]


def _eval_outputs(settings: Settings, *modules: nn.Module) -> list[dict[str, Any]]:
    """Each module's output, without gradients, after the same seed."""
    outputs = []
    for module in modules:
        settings.seed_for(0)
        with torch.no_grad():
            outputs.append(flat(settings.call(module), "output"))
    return outputs


def _converted(convert: Callable[[nn.Module, Settings], nn.Module], name: str) -> Probe:
    """A probe that converts the candidate and compares the result's outputs with the candidate's."""

    def probe(build: Callable[[], nn.Module], settings: Settings) -> tuple[ParityRow, int | None]:
        try:
            candidate = build().eval()
            outputs = _eval_outputs(settings, candidate, convert(candidate, settings))
        except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
            return row(name, passed=False, detail=error_text(e)), None
        return row(name, settings.compare(*outputs)), None

    return probe


def _exported(candidate: nn.Module, settings: Settings) -> nn.Module:
    args, kwargs = settings.fresh_inputs()
    return torch.export.export(candidate, tuple(args), kwargs).module()


def _scripted(candidate: nn.Module, settings: Settings) -> nn.Module:
    return torch.jit.script(candidate)


def _dynamo(build: Callable[[], nn.Module], settings: Settings) -> tuple[ParityRow, int | None]:
    """``torch._dynamo.explain`` runs on the candidate; its graph breaks are reported, not failed."""
    from torch import _dynamo

    try:
        candidate = build().eval()
        _dynamo.reset()
        try:
            settings.seed_for(0)
            args, kwargs = settings.fresh_inputs()
            explained = _dynamo.explain(candidate)(*args, **kwargs)
        finally:
            _dynamo.reset()
    except Exception as e:  # noqa: BLE001 - a failing candidate is a failing row
        return row("probe/dynamo", passed=False, detail=error_text(e)), None
    reasons = "".join(f"; first break: {b.reason}" for b in explained.break_reasons[:1])
    detail = f"{explained.graph_count} graph(s), {explained.graph_break_count} graph break(s){reasons}"
    return row("probe/dynamo", passed=True, detail=detail), explained.graph_break_count


PROBES: dict[str, Probe] = {
    "export": _converted(_exported, "probe/export"),
    "dynamo": _dynamo,
    "script": _converted(_scripted, "probe/script"),
}
"""The probes, by name: each builds a candidate and returns its row and, for ``dynamo``, the
number of graph breaks."""
