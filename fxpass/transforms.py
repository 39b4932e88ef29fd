"""Emit one transform of a patched tensor as graph nodes.

A transform becomes:

* ``module``: a ``call_module`` of the transform module at its own path, so its state (step
  counters, masks, lazily created parameters) lives on in the compiled model;
* ``inlined``: the nodes torch.fx records when the function is called on the tensor's proxy;
* ``opaque``: one ``call_module`` of an :class:`fxpass.ops.Opaque` holding the function, when
  tracing it fails (data-dependent control flow, an ``autograd.Function`` whose backward tracing
  would lose, ...).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.fx
import torch.nn as nn

from fxpass.errors import FxpassError
from fxpass.ops import Opaque
from fxpass.patches import join_path
from fxpass.record import How

if TYPE_CHECKING:
    from fxpass.shells import Patched
    from fxpass.tracer import PatchTracer

__all__ = ["Untraceable", "emit_transform", "refuse_autograd_functions"]


class Untraceable(Exception):
    """Internal signal: the code being traced cannot be traced faithfully."""


@contextlib.contextmanager
def refuse_autograd_functions() -> Iterator[None]:
    """While tracing, make ``autograd.Function.apply`` on a Proxy fail instead of tracing its
    forward: torch.fx would otherwise record the forward and silently drop the custom backward."""
    function_cls = torch.autograd.function.Function
    original = function_cls.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        found: list[bool] = []
        torch.fx.node.map_aggregate(
            (args, kwargs), lambda a: found.append(True) if isinstance(a, torch.fx.Proxy) else None
        )
        if found:
            raise Untraceable(f"{cls.__qualname__}.apply is an autograd.Function")
        return original.__func__(cls, *args, **kwargs)

    function_cls.apply = classmethod(apply)  # type: ignore[assignment]
    try:
        yield
    finally:
        function_cls.apply = original  # type: ignore[assignment]


def describe(thing: Callable[..., Any]) -> str:
    """A short, stable name for a transform."""
    if isinstance(thing, nn.Module):
        return type(thing).__qualname__
    module = getattr(thing, "__module__", None) or ""
    name = getattr(thing, "__qualname__", None) or type(thing).__qualname__
    return f"{module}.{name}" if module else name


def _is_identity(thing: Callable[..., Any]) -> bool:
    from imitation_runtime.patch import identity

    return thing is identity


def emit_transform(
    tracer: PatchTracer, patched: Patched, transform: str, value: Any
) -> tuple[Any, How]:
    """Emit ``patched.transforms[transform](value)`` into ``tracer``'s graph.

    Args:
        tracer: the active tracer.
        patched: the patched module the transform belongs to.
        transform: the attribute holding the transform (``"quantize"``, ``"quantize_bias"``).
        value: the proxy (or constant) of the tensor being transformed.

    Returns:
        The transformed value and how it was emitted.
    """
    thing = patched.transforms[transform]
    target = join_path(patched.path, transform)
    if isinstance(thing, nn.Module):
        return tracer.create_proxy("call_module", target, (value,), {}), "module"
    if _is_identity(thing):
        return value, "inlined"
    mark = tracer.mark()
    try:
        return thing(value), "inlined"
    except FxpassError:
        raise
    except Exception:  # noqa: BLE001 - any failure to trace makes the transform opaque
        tracer.rollback(mark)
    patched.shell._modules[transform] = Opaque(thing)
    return tracer.create_proxy("call_module", target, (value,), {}), "opaque"
