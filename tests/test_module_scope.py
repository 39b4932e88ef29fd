"""Module scope on the kinds of model code real models are made of: each is exact or refused.

Every kind of code issue "module scope on real models" listed is a ``test_kind_*`` here, with its
minimal model: an optional argument defaulting to None, an untraceable parent reading a patched
child's tensor, a parent reading a compiled part's plain attributes (and its class), a bound
method registered as a hook, a patched module whose forward reads ``self.training``, freezing a
module-scope compile, and the parity harness on outputs holding caches. Parity claims are bitwise.
Models live at module level so that compiled models pickle by reference.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxpass
from fxpass import reading
from imitation_runtime import imitate
from tests.support import (
    Counting,
    assert_same_snapshot,
    graph_modules,
    halve,
    snapshot,
    steps_side_by_side,
)


def compile_modules(model: nn.Module) -> nn.Module:
    """Module scope on a copy; the input is left as it was."""
    copied = copy.deepcopy(model)
    before = snapshot(copied)
    compiled = fxpass.compile(copied, scope="module")
    assert_same_snapshot(before, snapshot(copied))
    return compiled


def round_trip(model: nn.Module) -> nn.Module:
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# -- an optional argument defaulting to None ---------------------------------------------------------


class OptionalExtra(nn.Module):
    """Traceable, with an argument whose None-ness steers its code."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(4, 4), "halve", halve)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        if extra is not None:
            x = x + extra
        return self.fc(x)


class CallsWithAndWithout(nn.Module):
    """Untraceable; calls its part without ``extra`` on one branch and with it on the other."""

    def __init__(self) -> None:
        super().__init__()
        self.part = OptionalExtra()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.part(x)
        return self.part(x, extra=x * 2)


def test_kind_optional_argument_defaulting_to_none() -> None:
    torch.manual_seed(0)
    model = CallsWithAndWithout()
    compiled = compile_modules(model)
    record = fxpass.records(compiled)["part"]
    assert record.specialized == ("extra",)  # traced as called without it
    x = torch.randn(3, 4).abs()
    for inputs in ((x,), (-x,)):  # the traced pattern, then a call that passes extra
        steps_side_by_side(model, compiled, inputs)
    # the graph holds only the traced pattern: no addition of extra
    assert "add" not in [node.name for node in compiled.part.graph.nodes]


class RequiredButNone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(4, 4), "halve", halve)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.fc(x if mask is None else x * mask)


class PassesNone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.part = RequiredButNone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x, None) if x.sum() > 0 else self.part(x, x)


def test_none_given_for_an_argument_traced_as_a_value_runs_the_forward_eagerly() -> None:
    torch.manual_seed(0)
    model = PassesNone()
    compiled = compile_modules(model)
    assert fxpass.records(compiled)["part"].specialized == ()
    x = torch.randn(2, 4).abs()
    for inputs in ((x,), (-x,)):
        steps_side_by_side(model, compiled, inputs)


# -- an untraceable parent reads a patched child's tensor --------------------------------------------


class ReadsChildWeight(nn.Module):
    """Reads its patched child's weight and bias itself, twice, as Mamba's mixer reads
    ``self.dt_proj.weight``; its transform is stateful, so every read counts."""

    def __init__(self) -> None:
        super().__init__()
        self.dt = imitate(nn.Linear(4, 4), "count", Counting())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            y = x @ self.dt.weight.t() + self.dt.bias
            return y + self.dt.weight.sum()
        return self.dt(x)


def test_kind_untraceable_parent_reads_a_patched_child_tensor() -> None:
    torch.manual_seed(0)
    model = ReadsChildWeight()
    compiled = compile_modules(model)
    assert fxpass.scope_record(compiled).parts == ("dt",)
    x = torch.randn(3, 4).abs()
    for inputs in ((x,), (-x,)):
        steps_side_by_side(model, compiled, inputs)
    assert torch.equal(model.dt.count.calls, compiled.dt.count.calls)  # once per read, as at run time
    # outside the model's own code the attribute is the raw tensor, as in model scope
    assert compiled.dt.weight is compiled.dt._parameters["weight"]


# -- a parent reads a compiled part's plain attributes ----------------------------------------------


class ReadsOutFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lm = imitate(nn.Linear(4, 6), "halve", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lm(x)
        if x.sum() > 0:
            return y.reshape(-1, self.lm.out_features)
        return y


def test_kind_parent_reads_a_compiled_part_plain_attributes_and_its_class() -> None:
    torch.manual_seed(0)
    model = ReadsOutFeatures()
    compiled = compile_modules(model)
    x = torch.randn(2, 3, 4).abs()
    steps_side_by_side(model, compiled, (x,))
    for candidate in (compiled, copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled)), round_trip(compiled)):
        part = candidate.lm
        assert isinstance(part, nn.Linear) and isinstance(part, torch.fx.GraphModule)
        assert (part.in_features, part.out_features) == (4, 6)
        assert "in_features=4, out_features=6" in repr(part)  # nn.Linear's own extra_repr
        candidate.eval()
        model.eval()
        assert torch.equal(candidate(x), model(x))


# -- a module registers a bound method as a hook -----------------------------------------------------


class HooksItself(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(4, 4), "halve", halve)
        self.loads = 0
        self._register_load_state_dict_pre_hook(self.count_load)
        self.fc.register_forward_hook(self.peek)
        self.peeked = 0

    def count_load(self, *args: object, **kwargs: object) -> None:
        self.loads += 1

    def peek(self, module: nn.Module, args: object, output: object) -> None:
        self.peeked += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else x


def test_kind_bound_method_hooks_are_rebound_to_the_copy() -> None:
    torch.manual_seed(0)
    model = HooksItself()
    compiled = compile_modules(model)
    loaded = pickle.loads(pickle.dumps(compiled))  # does not drag the patched input along
    x = torch.randn(2, 4).abs()
    for candidate in (compiled, loaded):
        candidate.load_state_dict(model.state_dict())
        assert torch.equal(candidate(x), model(x))
        assert (candidate.loads, candidate.peeked) == (1, 1)
    assert (model.loads, model.peeked) == (0, 2)  # its own two calls: the copies' hooks ran on the copies


# -- a patched module whose forward reads self.training ----------------------------------------------


class Router(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        return y * 0.5 if self.training else y


class RoutesWhenPositive(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.router = imitate(Router(4, 4), "halve", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.router(x) if x.sum() > 0 else x


def test_kind_mode_reading_patched_module_under_an_untraceable_parent() -> None:
    torch.manual_seed(0)
    model = RoutesWhenPositive()
    compiled = compile_modules(model)
    eager = {e.module: e for e in fxpass.scope_record(compiled).eager}
    assert eager["router"].patched and "self.training" in eager["router"].reason
    assert isinstance(compiled.router, Router) and not isinstance(compiled.router, torch.fx.GraphModule)
    x = torch.randn(2, 4).abs()
    steps_side_by_side(model, compiled, (x,), ("train", "eval", "train", "eval"))
    loaded = round_trip(compiled)
    assert type(loaded.router).__name__ == "Router"
    steps_side_by_side(model, loaded, (x,), ("eval", "train"))


# -- freeze of a module-scope compile ----------------------------------------------------------------


class LoopsOverBatch(nn.Module):
    """torch.fx cannot trace it (``range`` of a proxy); torch.export can (static shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(imitate(nn.Linear(4, 4), "halve", halve), nn.ReLU())
        self.bn = imitate(nn.BatchNorm1d(4), "count", Counting())
        self.head = imitate(nn.Linear(4, 2), "halve", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.block(x[i : i + 1]) for i in range(x.shape[0])]
        h = self.bn(torch.cat(rows))
        return nn.functional.linear(h, self.head.weight, self.head.bias)  # reads the head itself


def test_kind_freeze_of_a_module_scope_compile_exports() -> None:
    torch.manual_seed(0)
    model = LoopsOverBatch()
    x = torch.randn(3, 4)
    model(x)  # a training step's statistics
    with pytest.raises(fxpass.UntraceableModelError):
        fxpass.compile(model)
    before = snapshot(model)
    frozen_from_runtime = fxpass.freeze(model)
    frozen_from_compiled = fxpass.freeze(compile_modules(model))
    assert_same_snapshot(before, snapshot(model))
    model.eval()
    expected = model(x)
    for frozen in (frozen_from_runtime, frozen_from_compiled):
        assert type(frozen) is LoopsOverBatch and not frozen.training
        assert torch.equal(frozen(x), expected)
        # no patch left: no plan, no eager forward, no transform, the patched tensors frozen
        assert not any(reading.reads_exactly(m) or reading.has_eager_forward(m) for m in frozen.modules())
        assert "count" not in dict(frozen.named_modules()).get("bn", nn.Module())._modules
        assert torch.equal(frozen.head.weight, halve(model.head._parameters["weight"]))
        assert all(part._fxpass_frozen for part in graph_modules(frozen))
        program = torch.export.export(frozen, (x,))
        torch.testing.assert_close(program.module()(x), expected, atol=1e-6, rtol=0)
        assert torch.equal(round_trip(frozen)(x), expected)


# -- the parity harness on outputs holding caches ----------------------------------------------------


class Cache:
    """A cache object, as transformers' DynamicCache: plain attributes holding tensors."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.length = 0


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    cache: Cache


class MaskedDecoder(nn.Module):
    """Returns a dataclass holding a cache; in training draws a mask with numpy (as wav2vec2's
    ``mask_time_prob`` does)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = imitate(nn.Linear(4, 4), "halve", halve)

    def forward(self, x: torch.Tensor) -> Output:
        if self.training:
            x = x * torch.from_numpy((np.random.rand(*x.shape) > 0.3).astype("float32"))
        cache = Cache()
        h = self.proj(x)
        cache.keys.append(h * 2)
        cache.length = h.shape[1]
        return Output(h, cache)


def test_kind_parity_harness_compares_caches_and_seeds_numpy() -> None:
    torch.manual_seed(0)
    report = fxpass.parity.check(MaskedDecoder(), (torch.randn(2, 4),), steps=2, compile_options={"scope": "module"})
    assert report.ok, report.table(failures_only=True)
    first = report.rows[0]
    assert first.name == "train/step1/output" and first.bitwise
    # the cache's tensors are compared one by one: a candidate whose cache differs fails
    def off_cache(model: nn.Module) -> nn.Module:
        compiled = fxpass.compile(model, scope="module")
        return OffCache(compiled)

    report = fxpass.parity.check(MaskedDecoder(), (torch.randn(2, 4),), steps=1, candidate=off_cache)
    failed = [row for row in report.failures() if row.name.endswith("/output")]
    assert failed and "cache.keys[0]" in failed[0].detail


class OffCache(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Output:
        out = self.inner(x)
        out.cache.keys[0] = out.cache.keys[0] + 1
        return out

    def state_dict(self, *args: object, **kwargs: object):  # the inner model's keys
        return self.inner.state_dict(*args, **kwargs)

    def named_parameters(self, *args: object, **kwargs: object):
        return self.inner.named_parameters(*args, **kwargs)


# -- modules torch.nn keeps as calls, under an untraceable parent ------------------------------------


class NormAndAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = imitate(nn.BatchNorm1d(4), "halve", halve)
        self.attn = nn.MultiheadAttention(4, 2)
        imitate(self.attn.out_proj, "count", Counting())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(x) if x.sum() > 0 else x
        return self.attn(h[None], h[None], h[None], need_weights=False)[0][0]


def test_patched_batchnorm_and_attention_projection_under_an_untraceable_parent_are_exact() -> None:
    """They cannot be compiled on their own (BatchNorm reads the mode, MultiheadAttention reads its
    out_proj's weight itself); module scope runs them eagerly, with exact reads."""
    torch.manual_seed(0)
    model = NormAndAttention()
    compiled = compile_modules(model)
    eager = {e.module for e in fxpass.scope_record(compiled).eager}
    assert {"", "bn", "attn"} <= eager
    steps_side_by_side(model, compiled, (torch.randn(3, 4).abs(),))
    assert torch.equal(model.attn.out_proj.count.calls, compiled.attn.out_proj.count.calls)


# -- the eager machinery -----------------------------------------------------------------------------


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(2, 2), "halve", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            raise ValueError("positive")
        return self.fc(x)


def test_an_eager_forward_that_raises_leaves_reads_raw_afterwards() -> None:
    compiled = compile_modules(Raises())
    with pytest.raises(ValueError, match="positive"):
        compiled(torch.ones(1, 2))
    assert not reading._EAGER.open
    assert compiled.fc.weight is compiled.fc._parameters["weight"]  # raw again


def test_an_eager_forward_keeps_the_signature_of_the_forward_it_runs() -> None:
    compiled = compile_modules(CallsWithAndWithout())
    assert reading.has_eager_forward(compiled)
    assert inspect.signature(compiled.forward) == inspect.signature(CallsWithAndWithout().forward)


class AlwaysPassesExtra(nn.Module):
    """torch.fx cannot trace it (``range`` of a proxy); torch.export can. It always passes the
    argument its part was traced without."""

    def __init__(self) -> None:
        super().__init__()
        self.part = OptionalExtra()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.part(x[i : i + 1], extra=x[i : i + 1] * 2) for i in range(x.shape[0])]
        return torch.cat(rows)


def test_tracing_a_part_called_with_another_pattern_runs_its_own_forward() -> None:
    """torch.export (and any torch.fx tracing of the model) checks the pattern too: the part's
    graph, traced without ``extra``, must not stand in for a call that passes it."""
    torch.manual_seed(0)
    model = AlwaysPassesExtra().eval()
    x = torch.randn(3, 4)
    for candidate in (compile_modules(model).eval(), fxpass.freeze(model)):
        program = torch.export.export(candidate, (x,))
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-6, rtol=0)


def test_the_model_itself_is_traced_with_the_arguments_its_user_passes() -> None:
    """The root is called by its user with its inputs (transformers declares them ``=None``):
    it is not traced as if they were None."""
    torch.manual_seed(0)
    model = OptionalExtra()
    compiled = compile_modules(model)
    assert fxpass.records(compiled)[""].specialized == ()
    x = torch.randn(2, 4)
    assert torch.equal(compiled(x, x), model(x, x))


# -- scope="auto" ------------------------------------------------------------------------------------


def test_scope_auto_traces_a_traceable_model_whole_and_says_why() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(4, 4), "halve", halve), nn.ReLU())
    before = snapshot(model)
    auto = fxpass.compile(copy.deepcopy(model), scope="auto")  # (a compiled model shares the tensors)
    whole = fxpass.compile(model, scope="model")
    assert_same_snapshot(before, snapshot(model))
    assert isinstance(auto, torch.fx.GraphModule) and fxpass.scope_record(auto) is None
    assert auto.code == whole.code
    record = fxpass.record_of(auto)
    assert record.scope_reason == "scope='auto': model scope, since torch.fx traces the model's own forward"
    assert record.scope_reason in record.table()
    assert dataclasses.replace(record, scope_reason="") == fxpass.record_of(whole)
    assert fxpass.record_of(round_trip(auto)).scope_reason == record.scope_reason
    steps_side_by_side(model, auto, (torch.randn(3, 4),))


def test_scope_auto_compiles_an_untraceable_model_module_by_module_and_says_why() -> None:
    torch.manual_seed(0)
    model = ReadsChildWeight()
    auto, modules = fxpass.compile(copy.deepcopy(model), scope="auto"), compile_modules(model)
    record = fxpass.scope_record(auto)
    assert record is not None
    assert record.parts == fxpass.scope_record(modules).parts == ("dt",)
    assert record.eager == fxpass.scope_record(modules).eager
    assert record.reason.startswith("scope='auto': module scope, since torch.fx cannot trace it (")
    assert record.reason == f"scope='auto': module scope, since {record.eager[0].reason}"
    assert record.reason in record.table()
    assert auto.dt.code == modules.dt.code
    x = torch.randn(3, 4).abs()
    for inputs in ((x,), (-x,)):
        steps_side_by_side(model, auto, inputs)


def test_scope_auto_with_concrete_args_does_not_fall_back() -> None:
    # concrete_args apply to model scope only: a model they do not make traceable is refused
    with pytest.raises(fxpass.UntraceableModelError, match="ReadsChildWeight"):
        fxpass.compile(ReadsChildWeight(), scope="auto", concrete_args={})
