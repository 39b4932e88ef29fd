"""Test helpers: :func:`assert_parity` turns a parity report into a pytest-friendly assertion;
:func:`assert_outputs_equal` compares two outputs of any structure, leaf by leaf."""

from __future__ import annotations

from typing import Any

from torch import nn

from fxpass.comparison import compare_all, flat
from fxpass.parity import check

__all__ = ["assert_outputs_equal", "assert_parity"]


def assert_outputs_equal(reference: Any, candidate: Any, *, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Assert that two model outputs are equal leaf by leaf (bitwise unless a tolerance is given).

    Outputs may nest in any way :func:`fxpass.parity.check` understands: tuples, lists, dicts,
    dataclasses and ``ModelOutput``, pytree nodes, and the attributes of other objects (a
    transformers ``DynamicCache``'s key and value tensors). Non-tensor leaves must be equal.

    Raises:
        AssertionError: a leaf differs or exists on one side only; the message names the first.

    Example:
        >>> import torch
        >>> assert_outputs_equal({"a": torch.ones(2)}, {"a": torch.ones(2)})
        >>> assert_outputs_equal({"a": torch.ones(2)}, {"a": torch.zeros(2)})
        Traceback (most recent call last):
        ...
        AssertionError: output['a']: 2 of 2 elements differ, max abs diff 1
    """
    __tracebackhide__ = True
    result = compare_all(flat(reference, "output"), flat(candidate, "output"), float(atol), float(rtol))
    if not result.passed:
        raise AssertionError(result.detail)


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
