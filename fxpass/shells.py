"""Copy a model's module tree into unpatched "shells" that share its tensors.

The compiled GraphModule cannot hold a class-patched module (its class is a local class, which is
what makes it unpicklable), so each patched module is replaced by an instance of the class below
its patches: same ``__dict__`` (containers copied, tensors and child modules shared), minus the
transform functions, which become graph nodes. Modules that are traced through, or that hold a
patched module, are copied the same way so the tracer can watch them; any other module is shared
as it is, as torch.fx shares leaf modules.
"""

from __future__ import annotations

import dataclasses
import types
from collections import OrderedDict
from typing import Any, Callable

import torch.nn as nn
from torch.nn.modules.module import _WrappedHook

from fxpass.ops import ByValue

from fxpass.errors import UnsupportedPatchError
from fxpass.patches import PatchStack, find_patch_stack, join_path

__all__ = ["Patched", "ShellTree", "build_shells", "copy_module", "has_patch", "is_default_leaf"]


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
        root: the copy of the model (or the model itself when nothing needed copying).
        shells: id -> shell, for every copied module.
        patched: id(shell) -> description, for every patched module, in model order.
        paths: id(shell) -> first path, for every copied module.
    """

    root: nn.Module
    shells: dict[int, nn.Module]
    patched: dict[int, Patched]
    paths: dict[int, str]


def is_default_leaf(cls: type) -> bool:
    """torch.fx's default leaf rule, applied to a class: torch.nn modules except Sequential."""
    return cls.__module__.startswith(("torch.nn", "torch.ao.nn")) and not issubclass(
        cls, nn.Sequential
    )


# Containers are copied so that nothing done to a shell reaches the input model (.copy() keeps
# the type; copy.copy would go through __reduce_ex__, ten times slower).
_CONTAINER_TYPES = frozenset((dict, OrderedDict, set, list))


def _local(fn: Any) -> bool:
    return isinstance(fn, types.FunctionType) and "<locals>" in fn.__qualname__


def _rebind_hooks(shell: nn.Module, namespace: dict[str, Any]) -> None:
    """Point hooks that receive their module at the shell, and make local hook functions
    pickleable, so the compiled model pickles wherever the runtime one needed only state_dict."""
    for name, hooks in namespace.items():
        # (most modules hold no hook: an empty container is skipped before its name is looked at)
        if not (isinstance(hooks, dict) and hooks and name.endswith("_hooks")):
            continue
        for key, hook in hooks.items():
            if isinstance(hook, _WrappedHook):
                fn = ByValue(hook.hook) if _local(hook.hook) else hook.hook
                hooks[key] = _WrappedHook(fn, shell if hook.with_module else None)
            elif _local(hook):
                hooks[key] = ByValue(hook)


def copy_module(module: nn.Module, cls: type | None = None) -> nn.Module:
    """A copy of ``module`` (as an instance of ``cls``, by default its own class) that shares its
    tensors and child modules; its containers are new, so changing them leaves ``module`` alone."""
    cls = cls or type(module)
    copied = cls.__new__(cls)
    namespace = {k: v.copy() if type(v) in _CONTAINER_TYPES else v for k, v in module.__dict__.items()}
    _rebind_hooks(copied, namespace)
    copied.__dict__.update(namespace)
    return copied


def has_patch(module: nn.Module) -> bool:
    """Whether ``module`` or any module below it carries a class patch."""
    return any(find_patch_stack(m, name) is not None for name, m in module.named_modules())


def build_shells(model: nn.Module) -> ShellTree:
    """Copy ``model``'s tree as described in the module docstring; ``model`` is not modified."""
    stacks: dict[int, PatchStack | None] = {}
    patched_below: dict[int, bool] = {}
    first_path: dict[int, str] = {}

    def scan(module: nn.Module, path: str) -> bool:
        key = id(module)
        if key in patched_below:
            return patched_below[key]
        first_path[key] = path
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

    def build(module: nn.Module, *, as_transform: bool = False) -> nn.Module:
        key = id(module)
        if key in memo:
            return memo[key]
        stack = stacks[key]
        path = first_path[key]
        if as_transform:
            if patched_below[key]:
                raise UnsupportedPatchError(
                    f"{path}: a transform module that is itself patched, or holds a patched "
                    "module, is not supported; patch the tensors it transforms instead"
                )
            memo[key] = module
            return module
        if stack is None and not patched_below[key] and is_default_leaf(type(module)):
            memo[key] = module
            return module
        shell = copy_module(module, stack.base if stack is not None else type(module))
        namespace = shell.__dict__
        transforms: dict[str, Callable[..., Any]] = {}
        transform_names = stack.transform_attributes() if stack is not None else ()
        for name in transform_names:
            if name in namespace["_modules"]:
                transforms[name] = namespace["_modules"][name]
            elif name in namespace:
                transforms[name] = namespace.pop(name)
            else:
                raise UnsupportedPatchError(
                    f"{path or 'the model'} ({type(shell).__name__}): its patch reads the "
                    f"transform attribute {name!r}, which the module does not have"
                )
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
    return ShellTree(root=root, shells=shells, patched=patched, paths=paths)
