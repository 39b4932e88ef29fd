"""Test helpers: :func:`assert_parity` turns a parity report into a pytest-friendly assertion."""

from __future__ import annotations

from typing import Any

from torch import nn

from fxpass.parity import check

__all__ = ["assert_parity"]


def assert_parity(model: nn.Module, example_inputs: Any, **kwargs: Any) -> None:
    """Assert that a candidate trains exactly like ``model``: :func:`fxpass.parity.check` passes.

    Args:
        model: the reference model (typically runtime-patched); it is never modified.
        example_inputs: positional arguments of ``model``'s forward, as for
            :func:`fxpass.parity.check`.
        **kwargs: any keyword argument of :func:`fxpass.parity.check` (``candidate``, ``steps``,
            ``atol``, ``probes``, ...).

    Raises:
        AssertionError: some check failed; the message is a one-line summary followed by the
            table of the failing rows.
        ExampleInputsError: ``model``'s forward raises on ``example_inputs`` (an error in the
            test itself, not a parity failure).

    Example:
        >>> import torch, torch.nn as nn
        >>> from imitation_runtime import imitate
        >>> model = nn.Sequential(imitate(nn.Linear(3, 2), "halving", lambda w: w / 2))
        >>> assert_parity(model, (torch.randn(4, 3),), steps=1)
        >>> assert_parity(model, (torch.randn(4, 3),), steps=1, candidate=nn.Sequential(nn.Linear(3, 2)))
        Traceback (most recent call last):
        ...
        AssertionError: Sequential vs Sequential (given): parity FAILED, ...
    """
    __tracebackhide__ = True  # pytest shows the assertion, not this frame
    report = check(model, example_inputs, **kwargs)
    if not report.ok:
        raise AssertionError(report.summary() + "\n" + report.table(failures_only=True))
