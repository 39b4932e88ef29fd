"""Which real tensors were computed from a tree's parameters and buffers while tracing.

torch.fx records operations on proxies; an operation on a real parameter (reached through
``module._parameters``, say) runs eagerly, and its result would become a constant of the graph:
frozen, and silently so when it needs no gradient. :class:`Provenance` notes such results, so
the tracer (:mod:`fxpass._tracer`) can refuse them.
"""

from __future__ import annotations

import weakref
from typing import Any, Iterator

import torch

__all__ = ["Provenance", "leaves"]


class Provenance(torch.overrides.TorchFunctionMode):
    """While tracing, the real tensors computed from the tree's parameters and buffers.

    torch.fx records operations on proxies; an operation on a real parameter (reached through
    ``module._parameters``, say) runs eagerly, and its result would become a constant of the
    graph: frozen, and silently so when it needs no gradient. Such results are noted here, so
    the tracer can refuse them.
    """

    def __init__(self, sources: list[torch.Tensor]) -> None:
        super().__init__()
        self._derived: dict[int, weakref.ref] = {id(t): weakref.ref(t) for t in sources}

    def derived(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` was computed (while tracing) from a parameter or buffer."""
        ref = self._derived.get(id(tensor))
        return ref is not None and ref() is tensor

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if any(isinstance(a, torch.Tensor) and self.derived(a) for a in leaves((args, kwargs))):
            for value in leaves(out):
                if isinstance(value, torch.Tensor):
                    self._derived[id(value)] = weakref.ref(value)
        return out


def leaves(value: Any) -> Iterator[Any]:
    """The leaves of a value nested in tuples, lists and dicts."""
    if isinstance(value, (tuple, list)):
        for item in value:
            yield from leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    else:
        yield value
