"""Tests of imitation_runtime: the runtime class patch `imitate` and its inverse."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils import parametrize

import imitation_runtime
from imitation_runtime import (
    Imitation,
    ImitationError,
    ImitationPicklingError,
    ImitationRuntimeError,
    ImitationTypeError,
    ImitationValueError,
    NotImitatedError,
    identity,
    imitate,
    imitations,
    is_imitated,
    type_before_imitations,
    unimitate,
)
from imitation_runtime import patch as patch_module


def add1(x: Tensor) -> Tensor:
    return x + 1


def times2(x: Tensor) -> Tensor:
    return x * 2


def forbidden(x: Any) -> Tensor:
    raise AssertionError(f"transform must not be called, got {x!r}")


class Scale(nn.Module):
    """A stateful transform: multiplies by a buffer."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(value))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Counting:
    """A transform that counts its calls, to catch unwanted property reads."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.calls += 1
        return x * 3


class Double(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2


def snapshot(module: nn.Module) -> dict[str, Any]:
    """Everything that 'left exactly as it was' compares."""
    return {
        "class": type(module),
        "dict": list(module.__dict__),
        "modules": list(module._modules),
        "parameters": {k: id(v) for k, v in module._parameters.items()},
        "buffers": {k: id(v) for k, v in module._buffers.items()},
        "state": {k: v.clone() for k, v in module.state_dict().items()},
    }


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["class"] is before["class"]
    for key in ("dict", "modules", "parameters", "buffers"):
        assert after[key] == before[key], key
    assert list(after["state"]) == list(before["state"])
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


def linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3, bias=bias)


# --- the seed's contract ---------------------------------------------------------------------


def test_linear_weight_bias_and_forward_bitwise() -> None:
    m = linear()
    raw_w, raw_b = m.weight, m.bias
    assert imitate(m, "q", add1, times2) is m
    assert torch.equal(m.weight, raw_w + 1)
    assert torch.equal(m.bias, raw_b * 2)
    x = torch.randn(5, 4)
    assert torch.equal(m(x), F.linear(x, raw_w + 1, raw_b * 2))


def test_conv2d_weight_bias_and_forward_bitwise() -> None:
    torch.manual_seed(0)
    m = nn.Conv2d(2, 3, 3, padding=1)
    raw_w, raw_b = m.weight, m.bias
    imitate(m, "q", times2, add1)
    assert torch.equal(m.weight, raw_w * 2)
    assert torch.equal(m.bias, raw_b + 1)
    x = torch.randn(1, 2, 5, 5)
    assert torch.equal(m(x), F.conv2d(x, raw_w * 2, raw_b + 1, padding=1))


def test_class_keeps_name_and_isinstance_and_raw_state() -> None:
    m = linear()
    raw = {k: v.clone() for k, v in m.state_dict().items()}
    params = dict(m.named_parameters())
    imitate(m, "q", add1, times2)
    assert type(m) is not nn.Linear
    assert isinstance(m, nn.Linear)
    assert type(m).__name__ == "Linear" and type(m).__qualname__ == "Linear"
    assert issubclass(type(m), nn.Linear)
    assert list(m.state_dict()) == ["weight", "bias"]
    assert all(torch.equal(m.state_dict()[k], v) for k, v in raw.items())
    assert dict(m.named_parameters()) == params
    assert m._parameters["weight"] is params["weight"]


def test_nested_class_keeps_qualname() -> None:
    class Local(nn.Linear):
        pass

    m = imitate(Local(2, 2), "q", add1)
    assert type(m).__qualname__ == Local.__qualname__
    assert type(m).__qualname__.endswith("<locals>.Local")
    assert isinstance(m, Local) and type(m).__name__ == "Local"


def test_markers_in_class_dict() -> None:
    m = imitate(linear(), "q", add1)
    assert type(m).__dict__["__imitation_name__"] == "q"
    assert type(m).__dict__["__imitation_base__"] is nn.Linear
    imitate(m, "r", add1)
    assert type(m).__dict__["__imitation_name__"] == "r"
    assert type(m).__dict__["__imitation_base__"].__dict__["__imitation_name__"] == "q"


def test_transforms_stored_as_attributes_default_identity() -> None:
    m = imitate(linear(), "q", add1)
    assert m.__dict__["q"] is add1
    assert m.__dict__["q_bias"] is identity
    assert patch_module.identity is identity  # importable, not a lambda
    assert identity.__name__ == "identity"
    assert torch.equal(m.bias, m._parameters["bias"])
    m2 = imitate(linear(), "q", add1, times2)
    assert m2.__dict__["q_bias"] is times2


def test_replaced_transform_is_used() -> None:
    m = imitate(linear(), "q", add1, add1)
    m.q = times2
    m.q_bias = lambda b: b * 10
    assert torch.equal(m.weight, m._parameters["weight"] * 2)
    assert torch.equal(m.bias, m._parameters["bias"] * 10)
    assert imitations(m)[0].thing is times2


def test_stacking_composes_in_order() -> None:
    m = linear()
    raw = m._parameters["weight"]
    imitate(m, "a", add1, add1)
    imitate(m, "b", times2, times2)
    assert torch.equal(m.weight, (raw + 1) * 2)
    assert not torch.equal(m.weight, raw * 2 + 1)
    assert torch.equal(m.bias, (m._parameters["bias"] + 1) * 2)
    layers = imitations(m)
    assert [layer.name for layer in layers] == ["a", "b"]
    assert layers[0].base is nn.Linear
    assert layers[1].base.__dict__["__imitation_name__"] == "a"


def test_linear_without_bias_never_calls_bias_thing() -> None:
    m = linear(bias=False)
    imitate(m, "q", add1, forbidden)
    assert m.bias is None
    imitate(m, "r", add1)
    assert m.bias is None
    x = torch.randn(2, 4)
    assert torch.equal(m(x), F.linear(x, m._parameters["weight"] + 2))


def test_weight_none_stays_none() -> None:
    m = nn.LayerNorm(4, elementwise_affine=False)
    imitate(m, "q", forbidden)
    assert m.weight is None and m.bias is None
    x = torch.randn(2, 4)
    assert torch.equal(m(x), F.layer_norm(x, (4,)))


def test_embedding_has_no_bias_before_and_after() -> None:
    torch.manual_seed(0)
    m = nn.Embedding(5, 3)
    with pytest.raises(AttributeError, match="'Embedding' object has no attribute 'bias'"):
        _ = m.bias
    imitate(m, "q", times2)
    with pytest.raises(AttributeError, match="'Embedding' object has no attribute 'bias'"):
        _ = m.bias
    assert not hasattr(m, "bias")
    idx = torch.tensor([0, 3])
    assert torch.equal(m(idx), m._parameters["weight"][idx] * 2)


def test_embedding_bias_thing_rejected_nothing_mutated() -> None:
    m = imitate(nn.Embedding(5, 3), "q", times2)
    before = snapshot(m)
    with pytest.raises(ImitationValueError, match=r"Embedding has no 'bias'.*bias_thing=None"):
        imitate(m, "r", add1, add1)
    assert_same_snapshot(before, snapshot(m))


def test_module_transform_is_submodule_in_state_dict() -> None:
    m = linear()
    imitate(m, "q", Scale(3.0), Scale(0.5))
    assert list(m.state_dict()) == ["weight", "bias", "q.scale", "q_bias.scale"]
    assert torch.equal(m.state_dict()["q.scale"], torch.tensor(3.0))
    assert dict(m.named_modules())["q"] is m.q
    assert torch.equal(m.weight, m._parameters["weight"] * 3)
    m.q.scale.fill_(5.0)  # transforms are looked up at every read
    assert torch.equal(m.weight, m._parameters["weight"] * 5)
    assert [name for name, _ in m.named_parameters()] == ["weight", "bias"]


def test_on_top_of_parametrize() -> None:
    m = linear()
    parametrize.register_parametrization(m, "weight", Double())
    original = m.parametrizations.weight.original
    parametrized_cls = type(m)
    imitate(m, "q", add1)
    assert torch.equal(m.weight, original * 2 + 1)
    assert torch.equal(m.bias, m._parameters["bias"])
    assert type_before_imitations(m) is parametrized_cls
    assert imitations(m)[0].base is parametrized_cls
    unimitate(m)
    assert type(m) is parametrized_cls
    assert torch.equal(m.weight, original * 2)
    parametrize.remove_parametrizations(m, "weight")
    assert type(m) is nn.Linear


def test_gradients_flow_to_raw_weight() -> None:
    m = imitate(linear(), "q", lambda w: w * w, lambda b: b * 3)
    raw_w, raw_b = m._parameters["weight"], m._parameters["bias"]
    (m.weight.sum() + m.bias.sum()).backward()
    assert torch.equal(raw_w.grad, 2 * raw_w.detach())
    assert torch.equal(raw_b.grad, torch.full_like(raw_b, 3.0))


def test_gradients_through_forward_bitwise() -> None:
    m = imitate(linear(), "q", times2)
    raw_w = m._parameters["weight"]
    x = torch.randn(5, 4)
    m(x).sum().backward()
    assert torch.equal(raw_w.grad, 2 * torch.ones(3, 5) @ x)


# --- copy and pickle ------------------------------------------------------------------------


def test_deepcopy_is_independent() -> None:
    m = imitate(linear(), "q", Scale(3.0), add1)
    c = copy.deepcopy(m)
    assert type(c) is type(m)
    assert torch.equal(c.weight, m.weight) and torch.equal(c.bias, m.bias)
    assert c._parameters["weight"] is not m._parameters["weight"]
    assert c.q is not m.q and c.q_bias is add1
    with torch.no_grad():
        c._parameters["weight"].zero_()
    c.q.scale.fill_(7.0)
    assert not torch.equal(m._parameters["weight"], torch.zeros(3, 4))
    assert torch.equal(m.q.scale, torch.tensor(3.0))
    assert torch.equal(c.weight, torch.zeros(3, 4))
    assert imitations(c)[0].name == "q"
    unimitate(c)
    assert type(c) is nn.Linear and is_imitated(m)


def test_deepcopy_of_parent_model() -> None:
    model = nn.Sequential(imitate(linear(), "q", times2), nn.ReLU())
    replica = copy.deepcopy(model)
    assert type(replica[0]) is type(model[0])
    x = torch.randn(2, 4)
    assert torch.equal(replica(x), model(x))


def test_shallow_copy_shares_state() -> None:
    m = imitate(linear(), "q", times2)
    c = copy.copy(m)
    assert type(c) is type(m) and c._parameters["weight"] is m._parameters["weight"]
    assert torch.equal(c.weight, m.weight)


@pytest.mark.parametrize(
    "dump",
    [
        pytest.param(lambda obj: pickle.dumps(obj), id="pickle"),
        pytest.param(lambda obj: torch.save(obj, io.BytesIO()), id="torch.save"),
    ],
)
@pytest.mark.parametrize("wrap", [False, True], ids=["module", "parent"])
def test_pickling_raises_with_advice(dump: Callable[[Any], Any], wrap: bool) -> None:
    m = imitate(imitate(linear(), "quant", add1), "prune", times2)
    obj = nn.Sequential(nn.ReLU(), m) if wrap else m
    with pytest.raises(ImitationPicklingError) as info:
        dump(obj)
    assert isinstance(info.value, pickle.PicklingError)
    message = str(info.value)
    for words in ("Linear", "'quant'", "'prune'", "fxpass.compile(model)", "state_dict()"):
        assert words in message
    torch.save(obj.state_dict(), io.BytesIO())  # the way out works


# --- introspection and undo -----------------------------------------------------------------


def test_introspection_plain_and_imitated() -> None:
    m = linear()
    assert imitations(m) == () and not is_imitated(m)
    assert type_before_imitations(m) is nn.Linear
    s = Scale(2.0)
    imitate(m, "a", s)
    imitate(m, "b", add1, times2)
    assert is_imitated(m)
    assert type_before_imitations(m) is nn.Linear
    a, b = imitations(m)
    assert a == Imitation("a", s, None, nn.Linear)
    assert (b.name, b.thing, b.bias_thing) == ("b", add1, times2)
    assert b.base is type(m).__mro__[1]


@pytest.mark.parametrize("fn", [imitations, is_imitated, type_before_imitations, unimitate])
def test_introspection_rejects_non_modules(fn: Callable[[Any], Any]) -> None:
    with pytest.raises(ImitationTypeError, match="expects an nn.Module, got Tensor"):
        fn(torch.ones(2))


def test_unimitate_restores_exactly() -> None:
    m = nn.BatchNorm1d(3)
    m.extra = "kept"
    before = snapshot(m)
    counter = Counting()
    imitate(m, "a", Scale(2.0), Scale(4.0))
    imitate(m, "b", counter)
    _ = m.weight, m.bias
    assert unimitate(m) is m
    assert_same_snapshot(before, snapshot(m))
    assert not hasattr(m, "a") and not hasattr(m, "b_bias")
    assert counter.calls == 1
    imitate(m, "a", add1)  # the names are free again
    assert torch.equal(m.weight, m._parameters["weight"] + 1)


def test_unimitate_after_transform_replaced_by_module() -> None:
    m = linear()
    before = snapshot(m)
    imitate(m, "q", add1)
    del m.q
    m.q = Scale(2.0)
    unimitate(m)
    assert_same_snapshot(before, snapshot(m))


def test_unimitate_not_imitated() -> None:
    m = linear()
    with pytest.raises(NotImitatedError, match="Linear.*not imitated") as info:
        unimitate(m)
    assert isinstance(info.value, ValueError)


def test_unimitate_refuses_foreign_patch_on_top() -> None:
    m = imitate(linear(), "q", add1)
    parametrize.register_parametrization(m, "bias", Double())
    before = snapshot(m)
    with pytest.raises(ImitationValueError, match=r"ParametrizedLinear.*remove_parametrizations"):
        unimitate(m)
    assert_same_snapshot(before, snapshot(m))
    imitate(m, "r", times2)  # a sandwich: imitation, parametrization, imitation
    before = snapshot(m)
    with pytest.raises(ImitationValueError, match="ParametrizedLinear"):
        unimitate(m)
    assert_same_snapshot(before, snapshot(m))


# --- bad input ------------------------------------------------------------------------------


class WithExtras(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2))
        self.register_buffer("stat", torch.zeros(1))
        self.child = nn.ReLU()
        self.plain = 1
        self.foo_bias = 2

    def helper(self) -> None:
        pass


@pytest.mark.parametrize(
    ("name", "error", "words"),
    [
        (3, ImitationTypeError, "must be a str, got int"),
        (None, ImitationTypeError, "must be a str, got NoneType"),
        ("", ImitationValueError, "non-empty"),
        ("a.b", ImitationValueError, "dotted.*'a_b'"),
        ("1x", ImitationValueError, "identifier"),
        ("has space", ImitationValueError, "identifier"),
        ("class", ImitationValueError, "identifier"),
        ("weight", ImitationValueError, "'weight'.*transformed tensor"),
        ("bias", ImitationValueError, "'bias'.*transformed tensor"),
        ("stat", ImitationValueError, "'stat'.*a buffer"),
        ("child", ImitationValueError, "'child'.*a submodule"),
        ("plain", ImitationValueError, "'plain'.*an attribute"),
        ("foo", ImitationValueError, "'foo_bias'.*an attribute"),
        ("training", ImitationValueError, "'training'.*an attribute"),
        ("_parameters", ImitationValueError, "'_parameters'.*an attribute"),
        ("forward", ImitationValueError, r"class attribute \(Module.forward\)"),
        ("helper", ImitationValueError, r"class attribute \(WithExtras.helper\)"),
        ("cuda", ImitationValueError, "class attribute"),
        ("__class__", ImitationValueError, "class attribute"),
    ],
)
def test_bad_names_rejected_nothing_mutated(name: Any, error: type, words: str) -> None:
    m = WithExtras()
    before = snapshot(m)
    with pytest.raises(error, match=words) as info:
        imitate(m, name, add1)
    assert "WithExtras" in str(info.value)
    assert isinstance(info.value, ImitationError)
    assert_same_snapshot(before, snapshot(m))


def test_earlier_transform_names_rejected_without_reading_properties() -> None:
    counter, bias_counter = Counting(), Counting()
    m = imitate(linear(), "q", counter, bias_counter)
    before = snapshot(m)
    for name, words in [("q", "earlier imitation 'q'"), ("q_bias", "earlier imitation 'q'")]:
        with pytest.raises(ImitationValueError, match=words):
            imitate(m, name, add1)
    assert_same_snapshot(before, snapshot(m))
    imitate(m, "r", add1)
    imitations(m), is_imitated(m), type_before_imitations(m), copy.deepcopy(m)
    unimitate(m)
    assert counter.calls == 0 and bias_counter.calls == 0


@pytest.mark.parametrize(
    ("thing", "bias_thing", "words"),
    [
        (3, None, "thing must be callable.*got int"),
        (torch.ones(1), None, "thing must be callable.*got Tensor"),
        (add1, "x", "bias_thing must be callable.*or None, got str"),
    ],
)
def test_non_callable_transforms_rejected(thing: Any, bias_thing: Any, words: str) -> None:
    m = linear()
    before = snapshot(m)
    with pytest.raises(ImitationTypeError, match=words):
        imitate(m, "q", thing, bias_thing)
    assert_same_snapshot(before, snapshot(m))


def test_non_module_rejected() -> None:
    with pytest.raises(ImitationTypeError, match="expects an nn.Module, got Tensor"):
        imitate(torch.ones(2), "q", add1)


class PlainWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.ones(2)  # a plain tensor attribute, not a parameter or buffer


@pytest.mark.parametrize("make", [nn.ReLU, PlainWeight], ids=["relu", "plain-attribute"])
def test_module_without_weight_rejected(make: Callable[[], nn.Module]) -> None:
    m = make()
    before = snapshot(m)
    with pytest.raises(ImitationValueError, match=f"{type(m).__name__} has no 'weight'"):
        imitate(m, "q", add1)
    assert_same_snapshot(before, snapshot(m))


def test_buffer_weight_is_transformed() -> None:
    m = nn.Module()
    m.register_buffer("weight", torch.ones(2))
    imitate(m, "q", times2)
    assert torch.equal(m.weight, torch.full((2,), 2.0))
    assert not hasattr(m, "bias")


def test_attribute_error_in_transform_is_not_masked() -> None:
    def broken(x: Tensor) -> Tensor:
        return x.no_such_method()

    m = imitate(linear(), "q", broken)
    with pytest.raises(ImitationRuntimeError, match="'q'.*no_such_method"):
        _ = m.weight
    m2 = imitate(linear(), "q", add1)
    del m2.q
    with pytest.raises(ImitationRuntimeError, match="Linear.weight: transform 'q'"):
        _ = m2.weight
    unimitate(m2)  # still possible, and leaves a plain Linear
    assert type(m2) is nn.Linear and list(m2.__dict__) == list(linear().__dict__)


def test_errors_hierarchy() -> None:
    assert issubclass(ImitationTypeError, TypeError)
    assert issubclass(ImitationValueError, ValueError)
    assert issubclass(NotImitatedError, ValueError)
    assert issubclass(ImitationRuntimeError, RuntimeError)
    assert issubclass(ImitationPicklingError, pickle.PicklingError)
    for error in (
        ImitationTypeError,
        ImitationValueError,
        NotImitatedError,
        ImitationPicklingError,
        ImitationRuntimeError,
    ):
        assert issubclass(error, ImitationError)
    assert set(imitation_runtime.__all__) >= {"imitate", "unimitate", "imitations", "Imitation"}


# --- properties over architectures x transforms ----------------------------------------------

AFFINE = st.tuples(st.sampled_from([-2.0, 0.5, 1.0, 3.0]), st.sampled_from([-1.0, 0.0, 0.25]))


def make_layer(kind: str, bias: bool) -> nn.Module:
    return {
        "linear": lambda: nn.Linear(3, 2, bias=bias),
        "conv1d": lambda: nn.Conv1d(2, 3, 3, bias=bias),
        "conv2d": lambda: nn.Conv2d(2, 2, 2, bias=bias),
        "convT": lambda: nn.ConvTranspose2d(2, 2, 2, bias=bias),
    }[kind]()


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(["linear", "conv1d", "conv2d", "convT"]),
    bias=st.booleans(),
    stack=st.lists(st.tuples(AFFINE, st.one_of(st.none(), AFFINE)), min_size=1, max_size=4),
)
def test_stack_of_affine_transforms_then_undo(
    kind: str, bias: bool, stack: list[tuple[tuple[float, float], Any]]
) -> None:
    m = make_layer(kind, bias)
    before = snapshot(m)
    expected_w, expected_b = m._parameters["weight"], m._parameters["bias"]
    for i, ((a, c), bias_affine) in enumerate(stack):
        thing = lambda x, a=a, c=c: x * a + c
        bias_thing = None
        expected_w = thing(expected_w)
        if bias_affine is not None:
            bias_thing = lambda x, a=bias_affine[0], c=bias_affine[1]: x * a + c
            if expected_b is not None:
                expected_b = bias_thing(expected_b)
        imitate(m, f"t{i}", thing, bias_thing)
    assert torch.equal(m.weight, expected_w)
    assert m.bias is None if expected_b is None else torch.equal(m.bias, expected_b)
    assert [layer.name for layer in imitations(m)] == [f"t{i}" for i in range(len(stack))]
    unimitate(m)
    assert_same_snapshot(before, snapshot(m))


# --- against the seed -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_matches_qsparse_imitate_bitwise(kind: str) -> None:
    qsparse_imitation = pytest.importorskip("qsparse.imitation")
    torch.manual_seed(0)
    ours = make_layer(kind, bias=True)
    seed = copy.deepcopy(ours)
    x = torch.randn(2, 3) if kind == "linear" else torch.randn(1, 2, 4, 4)
    for name, thing, bias_thing in [("a", add1, times2), ("b", torch.tanh, None)]:
        imitate(ours, name, thing, bias_thing)
        qsparse_imitation.imitate(seed, name, thing, bias_thing)
        assert torch.equal(ours.weight, seed.weight)
        assert torch.equal(ours.bias, seed.bias)
        assert torch.equal(ours(x), seed(x))
        assert type(ours).__name__ == type(seed).__name__
