"""Kept calls are exact for any module: the patched modules inside one read their tensors as at
run time, at each read and in read order, with the transform's own state.

A module fxpass does not trace into the graph (its forward reads ``self.training``, or torch.fx
cannot trace it) stays one call; the reads of patched tensors inside it are not graph nodes but
evaluated while it runs. Each row of issue "kept calls that are exact for any module" is a test
here, then reads 0 to 3 times per call with pure, stateful and parametrized transforms. Parity
claims are bitwise; models live at module level so compiled models pickle by reference.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

import fxpass
from fxpass import reading, zoo
from imitation_runtime import imitate
from tests.support import (
    Counting,
    assert_same_snapshot,
    assert_state_equal,
    halve,
    snapshot,
    steps_side_by_side,
)



def compile_copy(model: nn.Module) -> torch.fx.GraphModule:
    """Model scope on a copy; the input is left as it was."""
    copied = copy.deepcopy(model)
    before = snapshot(copied)
    gm = fxpass.compile(copied)
    assert_same_snapshot(before, snapshot(copied))
    return gm


# -- the rows of the issue -----------------------------------------------------------------------------


class Branchy(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) if x.sum() > 0 else self.inner(-x)


def test_row_untraceable_submodule_over_a_patched_layer_compiles_at_model_scope() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(Branchy(imitate(nn.Linear(4, 4), "halve", halve)))
    gm = compile_copy(model)
    (kept,) = fxpass.record_of(gm).kept_calls
    assert (kept.module, kept.overrides) == ("0", ("inner.weight", "inner.bias"))
    x = torch.randn(3, 4)
    for inputs in ((x.abs(),), (-x.abs(),)):  # both branches
        steps_side_by_side(model, gm, inputs, ("train", "train", "eval", "train"))


class CallsTwice(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.inner(x) + self.inner(x), 0.25, self.training)


def test_row_mode_reading_module_calling_its_patched_child_twice() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(CallsTwice(imitate(nn.Linear(4, 4), "halve", halve)))
    gm = compile_copy(model)
    assert [k.module for k in fxpass.record_of(gm).kept_calls] == ["0"]
    steps_side_by_side(model, gm, (torch.randn(3, 4),), ("train", "eval", "train", "train"))


# -- reads 0, 1, 2 and 3 times per call ----------------------------------------------------------------


class ReadsN(nn.Module):
    """Reads ``self.training`` (kept as a call) and its child's patched weight ``reads`` times,
    directly, between calls of the child."""

    def __init__(self, inner: nn.Module, reads: int) -> None:
        super().__init__()
        self.inner = inner
        self.reads = reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.dropout(x, 0.25, self.training)
        for _ in range(self.reads):
            y = y @ self.inner.weight.t() + 0.5 * y
        return y + 0.0 * x.sum()


def _transformed(kind: str) -> nn.Module:
    layer = nn.Linear(4, 4, bias=False)
    if kind == "pure":
        return imitate(layer, "halve", halve)
    if kind == "stateful":
        return imitate(layer, "count", Counting())
    parametrize.register_parametrization(layer, "weight", zoo.Symmetric())
    return imitate(layer, "halve", halve)  # imitate on top of a parametrization


@pytest.mark.parametrize("kind", ["pure", "stateful", "parametrized"])
@pytest.mark.parametrize("reads", [0, 1, 2, 3])
def test_reads_per_call_with_every_kind_of_transform(reads: int, kind: str) -> None:
    torch.manual_seed(reads)
    model = nn.Sequential(ReadsN(_transformed(kind), reads))
    gm = compile_copy(model)
    steps_side_by_side(model, gm, (torch.randn(2, 4),), ("train", "eval", "train", "train"))
    if kind == "stateful":  # the transform ran once per read, as at run time
        assert int(model[0].inner.count.calls) == 4 * reads
        assert torch.equal(model[0].inner.count.calls, gm.get_submodule("0.inner.count").calls)


class CountingSymmetric(nn.Module):
    """A parametrization that counts its evaluations."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (w + w.t()) / 2


def test_a_kept_call_inside_parametrize_cached_evaluates_once_per_block() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 4, bias=False)
    parametrize.register_parametrization(layer, "weight", CountingSymmetric())
    model = nn.Sequential(ReadsN(layer, 3))
    gm = compile_copy(model).eval()
    model.eval()
    x = torch.randn(2, 4)
    calls = gm.get_submodule("0.inner.parametrizations.weight.0").calls
    start = int(calls)  # (registering a parametrization evaluates it once)
    with parametrize.cached():
        expected = model(x)
        got = gm(x)
    assert torch.equal(got, expected)
    assert int(calls) - start == int(model[0].inner.parametrizations.weight[0].calls) - start == 1
    assert torch.equal(gm(x), model(x))  # outside the block: once per read
    assert int(calls) - start == 4


class ReadsBias(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.dropout(self.inner(x), 0.25, self.training)
        return y if self.inner.bias is None else y + self.inner.bias


def test_a_missing_bias_reads_as_none_without_calling_its_transform() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ReadsBias(imitate(nn.Linear(4, 4, bias=False), "halve", halve, halve)))
    gm = compile_copy(model)
    steps_side_by_side(model, gm, (torch.randn(2, 4),))


# -- state, pickling, errors ---------------------------------------------------------------------------


def test_pickling_before_and_after_a_forward_keeps_the_reads_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ReadsN(_transformed("stateful"), 2))
    x = torch.randn(2, 4)
    gm = compile_copy(model)
    before = pickle.loads(pickle.dumps(gm))  # no forward yet
    reference = copy.deepcopy(model)
    steps_side_by_side(reference, before, (x,))
    steps_side_by_side(model, gm, (x,))
    after = pickle.loads(pickle.dumps(gm))  # the counters have moved
    assert_state_equal(model, after)
    steps_side_by_side(model, after, (x,))
    assert reading.has_eager_forward(after.get_submodule("0"))


class RaisesAfterARead(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.inner.weight.t()
        if self.training and x.sum() > 100:
            raise ValueError("too large")
        return y


def test_a_kept_call_that_raises_halfway_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(RaisesAfterARead(imitate(nn.Linear(4, 4), "count", Counting())))
    gm = compile_copy(model)
    layer = gm.get_submodule("0.inner")
    cls = type(layer)
    with pytest.raises(ValueError, match="too large"):
        gm(torch.full((2, 4), 100.0))
    with pytest.raises(ValueError, match="too large"):
        model(torch.full((2, 4), 100.0))
    assert type(layer) is cls and not reading._EAGER.open  # nothing left open
    assert layer.weight is layer._parameters["weight"]  # raw again outside the call
    assert torch.equal(layer.count.calls, model[0].inner.count.calls)  # the one read happened
    steps_side_by_side(model, gm, (torch.randn(2, 4),))


def test_freeze_evaluates_the_reads_of_a_kept_call_once_and_scripts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ReadsN(_transformed("pure"), 2), imitate(nn.Linear(4, 4), "halve", halve))
    x = torch.randn(2, 4)
    with pytest.raises(fxpass.NotScriptableError, match=r"^0 \(ReadsN\) is kept as a call"):
        torch.jit.script(fxpass.compile(copy.deepcopy(model)))
    frozen = fxpass.freeze(model)
    model.eval()
    assert torch.equal(frozen(x), model(x))
    assert not any(reading.reads_exactly(m) or reading.has_eager_forward(m) for m in frozen.modules())
    assert torch.equal(torch.jit.script(frozen)(x), model(x))


class _SwitchesToEval(nn.Module):
    """Its forward uses its dropout, then switches it to eval: the next call runs without it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(4, 4), "halve", halve)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.fc(x))
        self.drop.eval()
        return y


class _AroundSwitch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _SwitchesToEval()
        self.head = imitate(nn.Linear(4, 2), "halve", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


def test_a_forward_that_sets_a_mode_is_kept_as_a_call() -> None:
    # A graph would not replay `self.drop.eval()`: the compiled model's dropout would stay on.
    torch.manual_seed(0)
    model = _AroundSwitch()
    gm = compile_copy(model)
    (kept,) = fxpass.record_of(gm).kept_calls
    assert (kept.module, kept.reason) == ("block", "its forward sets the mode of block.drop")
    # (side_by_side switches the models' mode only between steps of different modes)
    report = fxpass.parity.side_by_side(model, gm, (torch.randn(3, 4),), modes=("train", "train", "eval", "train", "train"))
    assert report.ok, report.table(failures_only=True)
    assert not gm.get_submodule("block.drop").training


def test_a_model_whose_own_forward_sets_a_mode_is_refused_at_model_scope() -> None:
    torch.manual_seed(0)
    model = _SwitchesToEval()
    with pytest.raises(fxpass.UntraceableModelError, match=r"the model \(_SwitchesToEval\): its forward sets the mode of drop, .*scope='module'"):
        fxpass.compile(model)
    assert model.drop.training  # (nothing of the model changed)
    gm = fxpass.compile(copy.deepcopy(model), scope="auto")
    assert fxpass.scope_record(gm) is not None
    report = fxpass.parity.side_by_side(model, gm, (torch.randn(3, 4),), modes=("train", "train", "eval", "train"))
    assert report.ok, report.table(failures_only=True)
