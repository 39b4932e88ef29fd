"""Unit tests of two internal units: fxpass._patches (recognising class patches as data) and
fxpass._shells (copying the model's module tree into unpatched shells that share its tensors)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import fxpass
from fxpass._common import join_path
from fxpass._patches import Layer, find_patch_stack
from fxpass._shells import Patched, build_shells, has_patch, is_default_leaf, keep_reads, shell_of
from fxpass.errors import InvalidModelError, UnsupportedPatchError
from fxpass.reading import PLAN, is_reading_class
from imitation_runtime import identity, imitate
from tests.support import Counting, assert_same_snapshot, halve, snapshot

IMITATED = ("weight", "bias")


class Negate(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return -w


class PropertyWeight(nn.Linear):
    """An importable class with a ``weight`` property: ordinary code, not a class patch."""

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self._parameters["weight"] * 1


class Holder(nn.Module):
    """Holds a patched module as a submodule and as a plain attribute, and hooks bound to itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(2, 2), "h", halve)
        self.__dict__["alias"] = self.fc  # a plain attribute, not a submodule
        self.register_forward_hook(self.on_forward)
        self.fc.register_forward_hook(self.on_forward)

    def on_forward(self, module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        return output


def model_with_shared() -> tuple[nn.Sequential, nn.Linear]:
    """0: patched, 1: leaf, 2 and 3.0: one shared Linear, 3.1: a module with buffers."""
    shared = nn.Linear(3, 3)
    model = nn.Sequential(
        imitate(nn.Linear(3, 3), "h", halve), nn.ReLU(), shared, nn.Sequential(shared, nn.BatchNorm1d(3))
    )
    return model, shared


# -- fxpass._patches --------------------------------------------------------------------------------


def test_plain_modules_have_no_stack() -> None:
    for module in (nn.Linear(2, 2), nn.Sequential(nn.ReLU()), nn.BatchNorm1d(2)):
        assert find_patch_stack(module) is None


def test_importable_class_with_weight_property_is_not_a_patch() -> None:
    module = nn.Linear(2, 2)
    module.__class__ = PropertyWeight
    assert find_patch_stack(module, "fc") is None


def test_one_imitate_is_one_layer_and_nothing_is_read() -> None:
    counting = Counting()
    module = imitate(nn.Linear(2, 2), "quant", counting)
    stack = find_patch_stack(module)
    assert stack is not None
    assert stack.base is nn.Linear
    assert stack.layers == (Layer("imitate", "quant", IMITATED),)
    assert stack.attributes == IMITATED
    assert stack.transform_attributes() == ("quant", "quant_bias")
    assert [stack.layers[0].transform_attribute(a) for a in IMITATED] == ["quant", "quant_bias"]
    assert int(counting.calls) == 0  # the stateful transform was never called


def test_two_imitates_are_two_layers_bottom_first() -> None:
    module = imitate(imitate(nn.Linear(2, 2), "first", halve), "second", abs)
    stack = find_patch_stack(module)
    assert stack is not None and stack.base is nn.Linear
    assert [(layer.kind, layer.name) for layer in stack.layers] == [("imitate", "first"), ("imitate", "second")]
    assert stack.transform_attributes() == ("first", "first_bias", "second", "second_bias")


def test_parametrization_is_recognised() -> None:
    module = nn.Linear(2, 2)
    parametrize.register_parametrization(module, "weight", Negate())
    parametrize.register_parametrization(module, "bias", Negate())
    stack = find_patch_stack(module)
    assert stack is not None and stack.base is nn.Linear
    assert stack.layers == (Layer("parametrize", "parametrizations", ("weight", "bias")),)
    assert stack.layers[0].transform_attribute("bias") == "parametrizations.bias"


def test_imitate_on_top_of_parametrize() -> None:
    module = nn.Linear(2, 2)
    parametrize.register_parametrization(module, "weight", Negate())
    imitate(module, "h", halve)
    stack = find_patch_stack(module)
    assert stack is not None and stack.base is nn.Linear
    assert [layer.kind for layer in stack.layers] == ["parametrize", "imitate"]
    assert stack.attributes == ("weight", "bias")  # each once, first-patched order
    # parametrize's transforms live in module.parametrizations, not in attributes of the module
    assert stack.transform_attributes() == ("h", "h_bias")


def test_unknown_class_patch_is_refused_naming_the_module() -> None:
    class HandPatched(nn.Linear):
        @property
        def weight(self) -> torch.Tensor:  # type: ignore[override]
            raise AssertionError("find_patch_stack must not read a patched attribute")

    module = nn.Linear(2, 2)
    module.__class__ = HandPatched
    with pytest.raises(UnsupportedPatchError, match=r"enc\.fc \(HandPatched\).*'weight'"):
        find_patch_stack(module, "enc.fc")
    with pytest.raises(ValueError, match="the model"):  # (UnsupportedPatchError is a ValueError)
        find_patch_stack(module)


def test_patch_below_an_unpatched_class_is_refused() -> None:
    imitated = type(imitate(nn.Linear(2, 2), "h", halve))
    module = imitate(nn.Linear(2, 2), "h", halve)
    module.__class__ = type("Sub", (imitated,), {})
    with pytest.raises(UnsupportedPatchError, match="sits below"):
        find_patch_stack(module, "sub")


def test_qsparse_imitate_is_recognised() -> None:
    qsparse_imitation = pytest.importorskip("qsparse.imitation")
    module = qsparse_imitation.imitate(nn.Linear(2, 2), "q", halve)
    stack = find_patch_stack(module)
    assert stack is not None and stack.base is nn.Linear
    assert stack.layers == (Layer("qsparse", "q", IMITATED),)


@pytest.mark.parametrize(
    ("prefix", "name", "joined"),
    [("", "", ""), ("a", "", "a"), ("", "b", "b"), ("a", "b", "a.b"), ("a.b", "c.d", "a.b.c.d")],
)
def test_join_path(prefix: str, name: str, joined: str) -> None:
    assert join_path(prefix, name) == joined


# -- fxpass._shells ---------------------------------------------------------------------------------


def test_one_shell_per_module_at_its_first_path() -> None:
    model, shared = model_with_shared()
    tree = build_shells(model)
    named = list(model.named_modules())  # (deduplicated: the shared Linear once, at "2")
    assert list(tree.paths.values()) == [name for name, _ in named]
    assert len(tree.shells) == len(named)
    for name, module in named:
        shell = tree.copies[id(module)]
        assert shell is not module
        assert tree.shells[id(shell)] is shell and tree.paths[id(shell)] == name
    assert tree.root is tree.copies[id(model)] and tree.paths[id(tree.root)] == ""
    assert tree.root[2] is tree.root[3][0] is tree.copies[id(shared)]


def test_shells_share_the_models_tensors() -> None:
    model, _ = model_with_shared()
    tree = build_shells(model)
    for ours, theirs in ((tree.root.named_parameters(), model.named_parameters()),
                         (tree.root.named_buffers(), model.named_buffers())):
        ours, theirs = list(ours), list(theirs)
        assert [n for n, _ in ours] == [n for n, _ in theirs] and ours
        assert all(a is b for (_, a), (_, b) in zip(ours, theirs))


def test_building_mutates_nothing_in_the_model() -> None:
    model, _ = model_with_shared()
    parametrize.register_parametrization(model[2], "weight", Negate())

    def local_hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        return output

    model[0].register_forward_hook(local_hook)
    model.add_module("holder", Holder())

    def state() -> list[object]:  # (containers copied, and their identity kept: a change shows)
        return [(type(m), {k: (id(v), v.copy()) if isinstance(v, (dict, set)) else v for k, v in vars(m).items()})
                for m in model.modules()]

    before, before_state = snapshot(model), state()
    for keep in (False, True):
        tree = build_shells(model, keep_transforms=keep)
        tree.root[0]._parameters.clear()  # the shells' containers are their own
        tree.root[0]._forward_hooks.clear()
    assert_same_snapshot(before, snapshot(model))
    assert state() == before_state
    assert find_patch_stack(model[0]) is not None and "h" in vars(model[0])


def test_patched_entries_point_at_their_shells() -> None:
    model, _ = model_with_shared()
    imitate(model[3][1], "g", halve)
    tree = build_shells(model)
    patched_modules = [model[0], model[3][1]]  # model order
    assert list(tree.patched) == [id(tree.copies[id(m)]) for m in patched_modules]
    for (key, entry), module in zip(tree.patched.items(), patched_modules):
        assert isinstance(entry, Patched)
        stack = find_patch_stack(module)
        assert entry.shell is tree.shells[key] and entry.path == tree.paths[key]
        assert entry.stack == stack and type(entry.shell) is stack.base
        name = stack.layers[0].name
        assert entry.transforms == {name: halve, f"{name}_bias": identity}
        assert not set(entry.transforms) & set(vars(entry.shell))  # the graph computes them
    assert [e.path for e in tree.patched.values()] == ["0", "3.1"]


def test_transform_modules_are_shared_not_shelled() -> None:
    counting = Counting()
    model = nn.Sequential(imitate(nn.Linear(2, 2), "c", counting))
    tree = build_shells(model)
    (entry,) = tree.patched.values()
    assert entry.transforms["c"] is counting and entry.shell.c is counting
    assert tree.copies[id(counting)] is counting and id(counting) not in tree.shells
    assert int(counting.calls) == 0


def test_leaves_are_the_unpatched_torch_nn_modules() -> None:
    model, _ = model_with_shared()
    tree = build_shells(model)
    assert tree.leaves == {id(tree.copies[id(m)]) for m in (model[1], model[2], model[3][1])}
    assert is_default_leaf(nn.Linear) and is_default_leaf(nn.BatchNorm1d)
    assert not is_default_leaf(nn.Sequential) and not is_default_leaf(Counting)


def test_keep_transforms_and_keep_reads() -> None:
    model = nn.Sequential(imitate(nn.Linear(2, 2), "h", lambda w: w / 2, halve))
    tree = build_shells(model, keep_transforms=True)
    (entry,) = tree.patched.values()
    shell = entry.shell
    assert is_reading_class(type(shell)) and issubclass(type(shell), nn.Linear) and PLAN in vars(shell)
    assert vars(shell)["h_bias"] is halve  # importable: kept as it is
    weight = torch.ones(2)
    assert vars(shell)["h"] is not model[0].h and torch.equal(vars(shell)["h"](weight), model[0].h(weight))
    pickle.loads(pickle.dumps(tree.root))  # the lambda is wrapped to pickle by value
    before = (type(shell), [(k, id(v)) for k, v in vars(shell).items()])
    keep_reads(shell, entry.stack, entry.transforms)  # a second time changes nothing
    assert (type(shell), [(k, id(v)) for k, v in vars(shell).items()]) == before


def test_has_patch_looks_at_the_whole_tree() -> None:
    assert not has_patch(nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU())))
    assert has_patch(nn.Sequential(nn.ReLU(), nn.Sequential(imitate(nn.Linear(2, 2), "h", halve))))


def test_lazy_module_is_refused_with_its_path() -> None:
    with pytest.raises(InvalidModelError, match=r"^1 \(LazyLinear\)"):
        build_shells(nn.Sequential(nn.ReLU(), nn.LazyLinear(2)))


def test_patched_transform_module_is_refused() -> None:
    inner = imitate(nn.Linear(2, 2), "u", halve)
    model = nn.Sequential(imitate(nn.Linear(2, 2), "t", inner))
    with pytest.raises(UnsupportedPatchError, match=r"^0\.t: a transform module"):
        build_shells(model)


def test_shell_of_refuses_a_missing_transform_attribute() -> None:
    module = imitate(nn.Linear(2, 2), "h", halve)
    del module.__dict__["h_bias"]
    with pytest.raises(UnsupportedPatchError, match=r"enc \(Linear\).*'h_bias'"):
        shell_of(module, find_patch_stack(module), "enc")


def test_has_attribute() -> None:
    model = nn.Sequential(imitate(nn.Embedding(3, 2), "h", halve), imitate(nn.Linear(2, 2), "g", halve))
    parametrize.register_parametrization(model[1], "weight", Negate())
    embedding, linear = build_shells(model).patched.values()
    assert embedding.has_attribute("weight") and not embedding.has_attribute("bias")
    assert linear.has_attribute("weight") and linear.has_attribute("bias")


def test_references_to_the_model_point_at_shells() -> None:
    model = Holder()
    tree = build_shells(model)
    assert vars(tree.root)["alias"] is tree.copies[id(model.fc)]
    for module in (tree.root, tree.root.fc):
        (hook,) = module._forward_hooks.values()
        assert hook.__self__ is tree.root
    assert vars(model)["alias"] is model.fc


def test_local_hooks_become_picklable() -> None:
    def local_hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        return output

    model = nn.Sequential(nn.Linear(2, 2))
    model[0].register_forward_hook(local_hook)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(model)
    loaded = pickle.loads(pickle.dumps(build_shells(model).root))
    (hook,) = loaded[0]._forward_hooks.values()
    assert hook(None, (), "out") == "out"


_DOUBLE = lambda module, inputs, output: output * 2  # noqa: E731 - a module-level lambda: pickle cannot find it


@pytest.mark.parametrize("scope", ["model", "module"])
def test_module_level_lambda_hooks_become_picklable(scope: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(3, 3), "halve", halve), nn.Linear(3, 2))
    model[0].register_forward_hook(_DOUBLE)
    model[1].register_forward_pre_hook(lambda module, args: (args[0] + 1,))
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(model)
    loaded = pickle.loads(pickle.dumps(fxpass.compile(model, scope=scope)))
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x), model(x))
