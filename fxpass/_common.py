"""Small facts every stage of fxpass shares, each kept in one place.

How a module is named in a message, how dotted paths join and split, which tensors of a tree have
which names, and where the first proxy of a nested value is.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
import torch.fx
import torch.nn as nn

__all__ = ["first_proxy", "join_path", "moved_names", "owner_of", "tensor_names", "where"]


def where(path: str, module: object) -> str:
    """How an error message names a module: its path (or "the model") and its class; pass the
    class itself where the module's own would name a patch class.

    Example:
        >>> where("blocks.0", nn.Linear(2, 2)), where("", nn.Linear(2, 2)), where("fc", nn.Linear)
        ('blocks.0 (Linear)', 'the model (Linear)', 'fc (Linear)')
    """
    cls = module if isinstance(module, type) else type(module)
    return f"{path or 'the model'} ({cls.__name__})"


def join_path(prefix: str, name: str) -> str:
    """Join two dotted module paths, either of which may be empty.

    Example:
        >>> join_path("blocks.0", "weight"), join_path("", "weight"), join_path("fc", "")
        ('blocks.0.weight', 'weight', 'fc')
    """
    return f"{prefix}.{name}" if prefix and name else prefix or name


def owner_of(root: nn.Module, target: str) -> tuple[nn.Module, str]:
    """The module holding the attribute a dotted ``target`` names, and the attribute's name.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> owner, name = owner_of(model, "0.weight")
        >>> type(owner).__name__, name
        ('Linear', 'weight')
    """
    owner_path, _, name = target.rpartition(".")
    return (root.get_submodule(owner_path) if owner_path else root), name


def tensor_names(root: nn.Module) -> dict[int, str]:
    """Each parameter and buffer of ``root``, by id, to its first name (``named_parameters()``
    order, then buffers): the name a ``get_attr`` of that tensor reads."""
    names: dict[int, str] = {}
    for name, tensor in [*root.named_parameters(), *root.named_buffers()]:
        names.setdefault(id(tensor), name)
    return names


def first_proxy(values: Any) -> torch.fx.Proxy | None:
    """The first ``torch.fx.Proxy`` in a nested value (tuples, lists, dicts, slices), or None."""
    found: list[torch.fx.Proxy] = []

    def visit(value: Any) -> Any:
        if not found and isinstance(value, torch.fx.Proxy):
            found.append(value)
        return value

    torch.fx.node.map_aggregate(values, visit)
    return found[0] if found else None


def moved_names(
    module: str, home: str, *, names: Collection[str] | None = None, renamed: Mapping[str, str] | None = None
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for names that moved from ``module`` to ``home``, which models
    saved before the move name by their old path (pickle looks them up as attributes).

    Args:
        module: the old module's name (its ``__name__``).
        home: the module the names live in now, imported at the first lookup (so the two may
            import each other).
        names: the old names that moved (None: any name ``home`` has).
        renamed: old name -> its name in ``home``, where it changed.

    Example:
        >>> lookup = moved_names("old", "os.path", names=("joined",), renamed={"joined": "join"})
        >>> lookup("joined")("a", "b") == __import__("os").path.join("a", "b")
        True
    """
    renamed = dict(renamed or {})

    def __getattr__(name: str) -> Any:
        if names is None or name in names:
            try:
                return getattr(importlib.import_module(home), renamed.get(name, name))
            except AttributeError:
                pass
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
