"""Every way PyTorch code patches a weight: exact, pickleable, or refused, never silently frozen.

Each row of issue "every way PyTorch code patches a weight" is a test here with its minimal model:
``parametrize.cached()``, a class patch fxpass does not know, forward pre-hooks that assign
attributes (prune, legacy weight_norm, lazy modules), and transform modules holding local
functions; then the parity harness on inputs that require grad. The zoo holds a model per
mechanism (spectral_norm, cached, sparsifier, pruned, lora, mode_reading), so every zoo-wide
guarantee runs over them too. Parity claims are bitwise.
"""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrizations, parametrize, prune

import fxpass
from fxpass import zoo
from imitation_runtime import imitate
from tests.support import assert_same_snapshot, assert_state_equal, halve, snapshot, steps_side_by_side


class InCached(nn.Module):
    """Runs its model inside ``parametrize.cached()``, as a user wraps a call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with parametrize.cached():
            return self.inner(x)


class Twice(nn.Module):
    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.fc(x)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: parametrizations.spectral_norm(nn.Linear(4, 4)),
        lambda: parametrizations.orthogonal(nn.Linear(4, 4)),
    ],
    ids=["spectral_norm", "orthogonal"],
)
def test_row_cached_evaluates_a_parametrization_once_per_block(make) -> None:
    torch.manual_seed(0)
    model = Twice(make())
    compiled = fxpass.compile(copy.deepcopy(model))
    x = torch.randn(3, 4)
    # inside a cached() block: one evaluation for both reads (spectral_norm's _u moves once)
    steps_side_by_side(InCached(model), InCached(compiled), (x,), ("train", "train", "eval", "train"))
    # outside: one evaluation per read, as before
    steps_side_by_side(model, compiled, (x,), ("train", "eval"))


def test_row_cached_entered_by_a_traced_forward_keeps_that_module_as_a_call() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(InCached(Twice(parametrizations.spectral_norm(nn.Linear(4, 4)))))
    compiled = fxpass.compile(copy.deepcopy(model))
    (kept,) = fxpass.record_of(compiled).kept_calls
    assert (kept.module, kept.reason) == ("0", "its forward enters parametrize.cached()")
    steps_side_by_side(model, compiled, (torch.randn(3, 4),), ("train", "train", "eval"))
    with pytest.raises(fxpass.UntraceableModelError, match=r"the model \(InCached\): its forward enters parametrize.cached"):
        fxpass.compile(InCached(Twice(parametrizations.spectral_norm(nn.Linear(4, 4)))))


# -- a class patch fxpass does not know --------------------------------------------------------------


def _doubled_weight(module: nn.Module) -> torch.Tensor:
    return module._parameters["weight"] * 2


# A class made at run time (its qualified name does not lead back to it): a class patch.
Doubling = type("Linear", (nn.Linear,), {"weight": property(_doubled_weight)})


@pytest.mark.parametrize("requires_grad", [False, True])
def test_row_an_unknown_class_patch_is_refused_not_frozen(requires_grad: bool) -> None:
    layer = nn.Linear(3, 3)
    layer.weight.requires_grad_(requires_grad)
    layer.__class__ = Doubling
    model = nn.Sequential(layer)
    before = snapshot(model)
    with pytest.raises(fxpass.UnsupportedPatchError, match=r"^0 \(Linear\): class Linear from tests\.test_mechanisms overrides 'weight'.*pickle cannot find it by name"):
        fxpass.compile(model)
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(fxpass.UnsupportedPatchError, match="overrides 'weight'"):
        fxpass.compile(model, scope="module")


class ComputesFromBuffer(nn.Module):
    """An importable class (not a patch) whose property computes its weight from a buffer read
    through ``_buffers``: no gradient, so only its origin tells it is module state."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("raw", torch.randn(3, 3))

    @property
    def weight(self) -> torch.Tensor:
        return self._buffers["raw"] * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_row_a_tensor_computed_from_module_state_while_tracing_is_never_a_constant() -> None:
    model = nn.Sequential(ComputesFromBuffer())
    with pytest.raises(fxpass.UnsupportedPatchError, match=r"^0 \(ComputesFromBuffer\): a tensor computed from parameters or buffers.*computed while tracing"):
        fxpass.compile(model)
    # a constant the forward makes (not from module state) stays a constant, as in torch.fx
    mask = torch.tensor([1.0, 0.0, 1.0])
    ok = nn.Sequential(imitate(nn.Linear(3, 3), "mask", lambda w: w * mask))
    assert torch.equal(fxpass.compile(ok)(torch.ones(1, 3)), ok(torch.ones(1, 3)))


# -- forward pre-hooks that assign attributes --------------------------------------------------------


def _proxies(model: nn.Module) -> list[str]:
    """Every torch.fx Proxy held by a module of ``model``, in its attributes or one level into
    their containers."""
    found = []
    for name, module in model.named_modules():
        for key, value in module.__dict__.items():
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
            if any(isinstance(v, torch.fx.Proxy) for v in values):
                found.append(f"{name}.{key}")
    return found


class PrunedDense(nn.Module):
    def __init__(self, legacy_weight_norm: bool) -> None:
        super().__init__()
        dense = zoo.Dense(4)
        self.dense = torch.nn.utils.weight_norm(dense) if legacy_weight_norm else prune.l1_unstructured(dense, "weight", 0.5)
        self.head = imitate(nn.Linear(4, 2), "halve", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dense(x)))


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize("legacy_weight_norm", [False, True], ids=["prune", "legacy-weight_norm"])
@pytest.mark.parametrize("forward_first", [False, True], ids=["before-a-forward", "after-a-forward"])
def test_row_pre_hooks_that_assign_attributes_leave_no_proxy(legacy_weight_norm: bool, forward_first: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    model = PrunedDense(legacy_weight_norm)
    if forward_first:
        with torch.no_grad():
            model(x)
    compiled = fxpass.compile(model)  # (torch cannot deep-copy these modules: compiled shares them)
    assert not _proxies(compiled)
    loaded = pickle.loads(pickle.dumps(compiled))
    assert not _proxies(loaded)
    with torch.no_grad():
        for candidate in (compiled, loaded):
            for mode in (True, False, True):
                model.train(mode)
                candidate.train(mode)
                assert torch.equal(candidate(x), model(x))
    model.zero_grad()
    model(x).square().mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled(x).square().mean().backward()
    for name, parameter in compiled.named_parameters():
        assert torch.equal(parameter.grad, expected[name]), name


def test_row_a_lazy_module_before_its_first_forward_is_refused_clearly() -> None:
    model = nn.Sequential(nn.LazyLinear(4), imitate(nn.Linear(4, 2), "halve", halve))
    with pytest.raises(fxpass.InvalidModelError, match=r"^0 \(LazyLinear\) has uninitialized parameters.*run the model once"):
        fxpass.compile(model)
    # untouched: its hook did not run (it would have materialized the weight and made it a Linear)
    assert type(model[0]).__name__ == "LazyLinear" and model[0].has_uninitialized_params()
    x = torch.randn(2, 3)
    model(x)  # after a forward it is a Linear, and compiles
    assert torch.equal(pickle.loads(pickle.dumps(fxpass.compile(model)))(x), model(x))


# -- transform modules holding local functions -------------------------------------------------------


def test_row_local_functions_in_transform_modules_and_hooks_pickle_by_value() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    parametrize.register_parametrization(layer, "weight", zoo.LoRA(4))  # holds a lambda
    relu = nn.ReLU()
    relu.register_forward_hook(lambda module, args, out: out * 2)  # a shared leaf with a local hook
    head = imitate(nn.Linear(4, 4), "scale", zoo.LoRA(4))  # a transform module holding a lambda
    model = nn.Sequential(layer, relu, head)
    compiled = fxpass.compile(copy.deepcopy(model))
    loaded = pickle.loads(pickle.dumps(compiled))
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))
    assert_state_equal(model, loaded)
    # the input's modules are untouched: their lambda is still a plain function
    assert type(model[0].parametrizations.weight[0].dropout_fn).__name__ == "function"


class Locked(nn.Module):
    """A transform module holding something no pickle can save."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * 2


def test_a_transform_module_that_cannot_be_pickled_is_named() -> None:
    model = nn.Sequential(imitate(nn.Linear(2, 2), "locked", Locked()))
    compiled = fxpass.compile(model)
    with pytest.raises(pickle.PicklingError, match=r"^0\.locked \(Locked\): this transform module cannot be pickled"):
        pickle.dumps(compiled)


# -- the parity harness compares input gradients -----------------------------------------------------


class LeaksInput(nn.Module):
    """A candidate whose outputs match but whose input gradient does not."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + (x - x.detach()) * 0.5


def test_parity_compares_the_gradients_of_inputs_that_require_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(3, 3), "halve", halve))
    x = torch.randn(2, 3, requires_grad=True)
    report = fxpass.parity.check(model, (x,), steps=1, modes=("train",))
    assert report.ok
    grads = [row for row in report.rows if row.name == "train/step1/grad"]
    assert grads and grads[0].bitwise
    bad = fxpass.parity.check(model, (x,), steps=1, modes=("train",), candidate=lambda m: LeaksInput(fxpass.compile(m)))
    failed = {row.name: row.detail for row in bad.failures()}
    assert "inputs[0]" in failed["train/step1/grad"]
    assert "train/step1/output" not in failed


def test_the_zoo_holds_a_model_per_mechanism() -> None:
    names = {entry.name for entry in zoo.entries()}
    assert {"spectral_norm", "cached", "sparsifier", "pruned", "lora", "mode_reading"} <= names
    model, (x,) = zoo.get("mode_reading").build()
    compiled = fxpass.compile(copy.deepcopy(model))
    assert [k.module for k in fxpass.record_of(compiled).kept_calls] == ["block"]  # the mode read was seen

