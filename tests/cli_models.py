"""Factories the command-line tests import as ``tests.cli_models:<name>``."""

from __future__ import annotations

import torch
import torch.nn as nn

from imitation_runtime import imitate


def small() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(4, 3), "halve", lambda w: w / 2), nn.ReLU())
    return model, (torch.randn(2, 4),)


def wrong_inputs() -> tuple[nn.Module, tuple[torch.Tensor]]:
    model, _ = small()
    return model, (torch.randn(2, 7),)


def raises() -> tuple[nn.Module, tuple[torch.Tensor]]:
    raise RuntimeError("no weights here")


def not_a_pair() -> nn.Module:
    return small()[0]


class Drifting:
    """A transform whose Python state changes on every call: tracing bakes the first value in,
    so the compiled model drifts from the runtime one (the parity harness must catch it)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return w * (1.0 + 0.1 * self.calls)


def drifting() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(4, 3), "drift", Drifting()))
    return model, (torch.randn(2, 4),)


class Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(4, 3), "halve", lambda w: w / 2)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.fc(x) * scale


def keywords() -> tuple[nn.Module, dict[str, object]]:
    torch.manual_seed(0)
    return Keywords(), {"x": torch.randn(2, 4), "scale": 3.0}


def multiline() -> nn.Module:
    raise ValueError("first line\nsecond line")


class Branchy(Keywords):
    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.fc(x) * scale if x.sum() > 0 else -x  # a branch on a value: module scope


def branchy() -> tuple[nn.Module, dict[str, object]]:
    torch.manual_seed(0)
    return Branchy(), {"x": torch.randn(2, 4).abs(), "scale": 3.0}
