"""Copy a model's module tree into unpatched "shells" that share its tensors.

The compiled GraphModule cannot hold a class-patched module (its class is a local class, which is
what makes it unpicklable), so each patched module is replaced by an instance of the class below
its patches: same ``__dict__`` (containers copied, tensors and child modules shared), minus the
transform functions, which become graph nodes. Modules that are traced through, or that hold a
patched module, are copied the same way so the tracer can watch them, and so are the leaves of
torch.nn (the graph calls them; the tracer watches their mode); transform modules are shared as
they are.
"""

from __future__ import annotations

import dataclasses
import types
from collections import OrderedDict
from typing import Any, Callable, Iterable

import torch.nn as nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.module import _WrappedHook

from fxpass._common import join_path, where
from fxpass._patches import PatchStack, find_patch_stack
from fxpass.errors import InvalidModelError, UnsupportedPatchError
from fxpass.ops import ByValue, picklable_by_reference
from fxpass.reading import PLAN, ReadLayer, ReadPlan, class_defined, reading_class

__all__ = [
    "Patched",
    "ShellTree",
    "build_shells",
    "copy_module",
    "has_patch",
    "is_default_leaf",
    "keep_reads",
    "read_plan",
    "remap_references",
    "shell_of",
]


@dataclasses.dataclass
class Patched:
    """A patched module of the model, as the compile sees it.

    Attributes:
        path: its path in the model (first path if it is reachable twice).
        shell: the unpatched copy that the compiled model holds.
        stack: its class patches.
        transforms: transform attribute name -> the transform (function or module).
    """

    path: str
    shell: nn.Module
    stack: PatchStack
    transforms: dict[str, Callable[..., Any]]

    def has_attribute(self, attribute: str) -> bool:
        """Whether the unpatched module has ``attribute`` at all (an Embedding has no bias)."""
        shell = self.shell
        return (
            attribute in shell._parameters
            or attribute in shell._buffers
            or any(attribute in cls.__dict__ for cls in self.stack.base.__mro__)
            or any(attribute in layer.attributes for layer in self.stack.layers if layer.kind == "parametrize")
        )


@dataclasses.dataclass
class ShellTree:
    """The copied tree.

    Attributes:
        root: the copy of the model.
        shells: id -> shell, for every copied module.
        patched: id(shell) -> description, for every patched module, in model order.
        paths: id(shell) -> first path, for every copied module.
        copies: id(module of the model) -> its copy (or the module itself where it is shared).
        leaves: id(shell) of the copied leaves of torch.nn: the graph calls them (it does not
            trace into them), and the tracer watches their mode.
    """

    root: nn.Module
    shells: dict[int, nn.Module]
    patched: dict[int, Patched]
    paths: dict[int, str]
    copies: dict[int, nn.Module] = dataclasses.field(default_factory=dict)
    leaves: set[int] = dataclasses.field(default_factory=set)


def is_default_leaf(cls: type) -> bool:
    """torch.fx's default leaf rule, applied to a class: torch.nn modules except Sequential."""
    return cls.__module__.startswith(("torch.nn", "torch.ao.nn")) and not issubclass(
        cls, nn.Sequential
    )


# Containers are copied so that nothing done to a shell reaches the input model (.copy() keeps
# the type; copy.copy would go through __reduce_ex__, ten times slower).
_CONTAINER_TYPES = frozenset((dict, OrderedDict, set, list))


def _by_value(fn: Any) -> bool:
    """Whether ``fn`` is a function plain pickle cannot save by name (one defined in a function,
    a lambda): the copy holds it wrapped in :class:`~fxpass.ops.ByValue`."""
    return isinstance(fn, types.FunctionType) and ("<locals>" in fn.__qualname__ or not picklable_by_reference(fn))


def _hook_containers(namespace: dict[str, Any]) -> Iterable[dict[Any, Any]]:
    # (most modules hold no hook: an empty container is skipped before its name is looked at)
    return (v for k, v in namespace.items() if isinstance(v, dict) and v and k.endswith("_hooks"))


def _rebind_hooks(shell: nn.Module, namespace: dict[str, Any], module: nn.Module) -> None:
    """Point hooks that receive their module, or are bound methods of it, at the shell, and make
    hook functions pickle cannot save by name (local ones, lambdas) pickleable, so the compiled
    model pickles wherever the runtime one needed only state_dict."""
    for hooks in _hook_containers(namespace):
        for key, hook in hooks.items():
            if isinstance(hook, _WrappedHook):
                fn = _remap_function(hook.hook, {id(module): shell})
                fn = ByValue(fn) if _by_value(fn) else fn
                hooks[key] = _WrappedHook(fn, shell if hook.with_module else None)
            elif _by_value(hook):
                hooks[key] = ByValue(hook)
            else:
                hooks[key] = _remap_function(hook, {id(module): shell})


def _remap_function(fn: Any, copies: dict[int, nn.Module]) -> Any:
    """``fn``, or the same method bound to the copy of the module it is bound to."""
    owner = getattr(fn, "__self__", None)
    if isinstance(fn, types.MethodType) and isinstance(owner, nn.Module):
        copied = copies.get(id(owner))
        if copied is not None and copied is not owner:
            return types.MethodType(fn.__func__, copied)
    return fn


def remap_references(modules: Iterable[nn.Module], copies: dict[int, nn.Module]) -> None:
    """Point what ``modules`` hold of the input model at its copies: hooks bound to a module of
    the input (a bound method, or a hook called with its module) and modules kept as plain
    attributes. Without it the compiled model would reach into the patched input (its pickle
    would drag it along, and its hooks would run on the input)."""
    for module in modules:
        namespace = module.__dict__
        for hooks in _hook_containers(namespace):
            for key, hook in hooks.items():
                if isinstance(hook, _WrappedHook):
                    fn = _remap_function(hook.hook, copies)
                    target = hook.module() if hook.with_module else None
                    target = copies.get(id(target), target) if target is not None else None
                    if fn is not hook.hook or (target is not None and target is not hook.module()):
                        hooks[key] = _WrappedHook(fn, target)
                else:
                    hooks[key] = _remap_function(hook, copies)
        for name, value in namespace.items():
            if isinstance(value, nn.Module):
                copied = copies.get(id(value))
                if copied is not None and copied is not value:
                    namespace[name] = copied
            elif isinstance(value, types.MethodType):  # say, a forward set on the instance
                namespace[name] = _remap_function(value, copies)


def copy_module(module: nn.Module, cls: type | None = None) -> nn.Module:
    """A copy of ``module`` (as an instance of ``cls``, by default its own class) that shares its
    tensors and child modules; its containers are new, so changing them leaves ``module`` alone."""
    cls = cls or type(module)
    copied = cls.__new__(cls)
    namespace = {k: v.copy() if type(v) in _CONTAINER_TYPES else v for k, v in module.__dict__.items()}
    _rebind_hooks(copied, namespace, module)
    copied.__dict__.update(namespace)
    return copied


def read_plan(stack: PatchStack) -> ReadPlan:
    """The :class:`~fxpass.reading.ReadPlan` of a module with these patches."""
    layers = tuple(
        ReadLayer(layer.kind, layer.attributes, tuple(layer.transform_attribute(a) for a in layer.attributes))
        for layer in stack.layers
    )
    return ReadPlan(layers, stack.attributes, frozenset(class_defined(stack.base, stack.attributes)))


def shell_of(
    module: nn.Module, stack: PatchStack | None, path: str, *, keep_transforms: bool = False
) -> tuple[nn.Module, dict[str, Callable[..., Any]]]:
    """The unpatched copy of ``module`` and its transforms (attribute name -> function or module).

    The transform functions leave the copy, since the graph computes them; with
    ``keep_transforms`` they stay (wrapped to pickle by value where plain pickle cannot save
    them) with the patches' :class:`~fxpass.reading.ReadPlan`, and the copy's class is the
    reading class of the class below the patches, so that eager code can read the transformed
    tensors (see :mod:`fxpass.reading`).
    """
    shell = copy_module(module, type(module) if stack is None else stack.base)
    namespace = shell.__dict__
    transforms: dict[str, Callable[..., Any]] = {}
    for name in stack.transform_attributes() if stack is not None else ():
        if name in namespace["_modules"]:
            transforms[name] = namespace["_modules"][name]
        elif name in namespace:
            transforms[name] = namespace.pop(name)
        else:
            raise UnsupportedPatchError(
                f"{where(path, shell)}: its patch reads the "
                f"transform attribute {name!r}, which the module does not have"
            )
    if keep_transforms and stack is not None:
        keep_reads(shell, stack, transforms)
    return shell, transforms


def keep_reads(shell: nn.Module, stack: PatchStack, transforms: dict[str, Callable[..., Any]]) -> None:
    """Let eager code read ``shell``'s patched tensors as the runtime does (:mod:`fxpass.reading`):
    its class becomes the reading class of the class below its patches, and it holds its read plan
    and its transform functions (wrapped to pickle by value where plain pickle cannot save them;
    transform modules are in the tree already). Applying it twice changes nothing."""
    namespace = shell.__dict__
    if PLAN in namespace:
        return
    object.__setattr__(shell, "__class__", reading_class(stack.base, class_defined(stack.base, stack.attributes)))
    for name, fn in transforms.items():
        if name not in namespace["_modules"]:  # (an opaque transform is a module of the tree now)
            namespace[name] = fn if picklable_by_reference(fn) else ByValue(fn)
    namespace[PLAN] = read_plan(stack)


def has_patch(module: nn.Module) -> bool:
    """Whether ``module`` or any module below it carries a class patch."""
    return any(find_patch_stack(m, name) is not None for name, m in module.named_modules())


def _refuse_lazy(module: nn.Module, path: str) -> None:
    """A lazy module before its first forward materializes its parameters, and changes its class,
    in a forward pre-hook: traced, that would happen on proxies (and to the input model)."""
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise InvalidModelError(
            f"{where(path, module)} has uninitialized parameters (a lazy module before its "
            "first forward); run the model once on an example input before compiling it"
        )


def _picklable_copy(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """``module``, or where some module of its tree holds a function plain pickle cannot save (a
    lambda a LoRA parametrization keeps, say) a copy of that tree down to it, sharing tensors and
    every other module, with those functions wrapped to pickle by value. The copy's Python
    attributes are its own from then on; its tensors are shared."""
    key = id(module)
    if key in memo:
        return memo[key]
    memo[key] = module  # (guards against cycles)
    children = {name: _picklable_copy(child, memo) for name, child in module._modules.items() if child is not None}
    namespace = module.__dict__
    local = [name for name, value in namespace.items() if _by_value(value)]
    local_hooks = any(
        _by_value(getattr(hook, "hook", hook)) for hooks in _hook_containers(namespace) for hook in hooks.values()
    )
    if not local and not local_hooks and all(children[name] is module._modules[name] for name in children):
        return module
    copied = copy_module(module)
    for name in local:
        copied.__dict__[name] = ByValue(copied.__dict__[name])
    copied._modules.update(children)
    memo[key] = copied
    return copied


def build_shells(
    model: nn.Module, *, keep_transforms: bool = False, substitutes: dict[int, nn.Module] | None = None
) -> ShellTree:
    """Copy ``model``'s tree as described in the module docstring; ``model`` is not modified.

    With ``keep_transforms``, patched shells keep what eager code needs to read them as the
    runtime does (see :func:`shell_of`). ``substitutes`` maps modules of the model (by id) to
    what the copy holds in their place (compiled boundaries): leaves for the tracer, and the
    modules around them are copied.
    """
    substitutes = substitutes or {}
    stacks: dict[int, PatchStack | None] = {}
    patched_below: dict[int, bool] = {}
    first_path: dict[int, str] = {}

    def scan(module: nn.Module, path: str) -> bool:
        key = id(module)
        if key in patched_below:
            return patched_below[key]
        first_path[key] = path
        if key in substitutes:
            stacks[key], patched_below[key] = None, True
            return True
        _refuse_lazy(module, path)
        stack = find_patch_stack(module, path)
        stacks[key] = stack
        patched_below[key] = False  # guards against cycles
        found = stack is not None
        for name, child in module._modules.items():
            if child is not None:
                found = scan(child, join_path(path, name)) or found
        patched_below[key] = found
        return found

    scan(model, "")

    shells: dict[int, nn.Module] = {}
    patched: dict[int, Patched] = {}
    paths: dict[int, str] = {}
    memo: dict[int, nn.Module] = {}
    picklable: dict[int, nn.Module] = {}  # the memo of _picklable_copy
    leaves: set[int] = set()

    def build(module: nn.Module, *, as_transform: bool = False) -> nn.Module:
        key = id(module)
        if key in memo:
            return memo[key]
        if key in substitutes:
            memo[key] = substitutes[key]
            return memo[key]
        stack = stacks[key]
        path = first_path[key]
        if as_transform:
            if patched_below[key]:
                raise UnsupportedPatchError(
                    f"{path}: a transform module that is itself patched, or holds a patched "
                    "module, is not supported; patch the tensors it transforms instead"
                )
            memo[key] = _picklable_copy(module, picklable)
            return memo[key]
        if stack is None and not patched_below[key] and is_default_leaf(type(module)):
            # A leaf of torch.nn: the graph calls it. Copied all the same (its tensors and its
            # children shared), so that the tracer can watch its mode: a forward that reads
            # `self.dropout.training` must not have the mode baked in.
            leaf = _picklable_copy(module, picklable)
            shell = copy_module(leaf) if leaf is module else leaf
            memo[key] = shell
            shells[id(shell)] = shell
            paths[id(shell)] = path
            leaves.add(id(shell))
            return shell
        shell, transforms = shell_of(module, stack, path, keep_transforms=keep_transforms)
        transform_names = transforms.keys()
        memo[key] = shell
        shells[id(shell)] = shell
        paths[id(shell)] = path
        if stack is not None:
            patched[id(shell)] = Patched(path, shell, stack, transforms)
        children = shell._modules
        for name, child in children.items():
            if child is not None:
                children[name] = build(child, as_transform=name in transform_names)
        return shell

    # build() walks the tree depth first, parents before children, each module once at its first
    # path: the order of named_modules().
    root = build(model)
    remap_references(shells.values(), memo)
    return ShellTree(root=root, shells=shells, patched=patched, paths=paths, copies=memo, leaves=leaves)
