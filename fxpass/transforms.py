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
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torch.fx
import torch.nn as nn

from fxpass.errors import FxpassError, Untraceable
from fxpass.ops import Opaque
from fxpass.patches import join_path
from fxpass.record import How
from imitation_runtime.patch import identity

if TYPE_CHECKING:
    from fxpass.shells import Patched
    from fxpass.tracer import PatchTracer

__all__ = ["TransformTrace", "Untraceable", "emit_transform", "refuse_autograd_functions"]




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
    if thing is identity:
        return value, "inlined"
    known = tracer.transform_traces.get(id(thing))
    if known is not None and known.fn is thing and isinstance(value, torch.fx.Proxy):
        if known.template is None:
            return _opaque(tracer, patched, transform, thing, value)
        return known.replay(tracer, value), "inlined"
    mark = tracer.mark()
    try:
        out = thing(value)
    except FxpassError:
        raise
    except Exception:  # noqa: BLE001 - any failure to trace makes the transform opaque
        tracer.rollback(mark)
        if isinstance(value, torch.fx.Proxy):
            tracer.transform_traces[id(thing)] = TransformTrace(thing, None)
        return _opaque(tracer, patched, transform, thing, value)
    template = TransformTrace.record(tracer, mark, value, out)
    if template is not None:
        tracer.transform_traces[id(thing)] = TransformTrace(thing, template)
    return out, "inlined"


def _opaque(
    tracer: PatchTracer, patched: Patched, transform: str, thing: Callable[..., Any], value: Any
) -> tuple[Any, How]:
    patched.shell._modules[transform] = Opaque(thing)
    target = join_path(patched.path, transform)
    return tracer.create_proxy("call_module", target, (value,), {}), "opaque"


@dataclasses.dataclass(frozen=True)
class TransformTrace:
    """What tracing a transform function produced, to replay for its later reads.

    Tracing a function on a proxy records the same nodes whatever tensor the proxy stands for, so a
    transform applied to a hundred weights is traced once and its nodes copied 99 times. Only a
    trace that depends on nothing but its input is kept: one that read other patched tensors, or
    returned anything but a proxy, is traced anew each time. ``template`` is None for a function
    that could not be traced (it is opaque at every read).
    """

    fn: Callable[..., Any]
    template: torch.fx.Graph | None

    @staticmethod
    def record(tracer: PatchTracer, mark: Any, value: Any, out: Any) -> torch.fx.Graph | None:
        """A graph of the nodes added since ``mark``: one placeholder (``value``), one output."""
        if not (isinstance(value, torch.fx.Proxy) and isinstance(out, torch.fx.Proxy)):
            return None
        if len(tracer.rewrites) != mark.rewrites or len(tracer.kept) != mark.kept:
            return None
        added = tracer.nodes_since(mark)
        if not added:
            return None  # nothing to save by replaying
        template = torch.fx.Graph()
        copies = {value.node: template.placeholder("value")}
        for node in added:
            if any(arg not in copies for arg in node.all_input_nodes):
                return None  # reads a node from outside the transform
            copies[node] = template.node_copy(node, copies.__getitem__)
        if out.node not in copies:
            return None
        template.output(copies[out.node])
        return template

    def replay(self, tracer: PatchTracer, value: torch.fx.Proxy) -> torch.fx.Proxy:
        """Copy the recorded nodes after the graph's end, reading ``value``; the output's proxy."""
        assert self.template is not None
        copies: dict[torch.fx.Node, torch.fx.Node] = {}
        result: torch.fx.Node = value.node
        for node in self.template.nodes:
            if node.op == "placeholder":
                copies[node] = value.node
            elif node.op == "output":
                result = copies[node.args[0]]  # type: ignore[index]
            else:
                copies[node] = tracer.graph.node_copy(node, copies.__getitem__)
        return tracer.proxy(result)
