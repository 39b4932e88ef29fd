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
from typing import Any, Callable, Iterator, Protocol

import torch
import torch.fx
import torch.nn as nn

from fxpass._common import first_proxy, join_path
from fxpass.errors import FxpassError, Untraceable
from fxpass.record import How
from imitation_runtime.patch import identity

__all__ = ["Emitting", "TransformEmitter", "TransformTrace", "Untraceable", "describe", "refuse_autograd_functions"]


@contextlib.contextmanager
def refuse_autograd_functions() -> Iterator[None]:
    """While tracing, make ``autograd.Function.apply`` on a Proxy fail instead of tracing its
    forward: torch.fx would otherwise record the forward and silently drop the custom backward."""
    function_cls = torch.autograd.function.Function
    original = function_cls.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        if first_proxy((args, kwargs)) is not None:
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


class Emitting(Protocol):
    """What a :class:`TransformEmitter` asks of the tracer it emits into.

    ``graph``, ``create_proxy`` and ``proxy`` are torch.fx's own; a mark is an opaque point of the
    graph and of the tracer's record, to erase what came after it or list the nodes it added.
    """

    graph: torch.fx.Graph

    def create_proxy(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any: ...

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy: ...

    def mark(self) -> Any: ...

    def rollback(self, mark: Any) -> None: ...

    def nodes_since(self, mark: Any) -> list[torch.fx.Node]: ...

    def recorded_since(self, mark: Any) -> bool: ...


class TransformEmitter:
    """Emits transforms into one tracer's graph, and keeps what tracing each function produced.

    A function whose trace failed once is opaque at its other reads; one whose trace depends on
    nothing but its input is replayed (:class:`TransformTrace`). An opaque transform is only a
    ``call_module`` node here: the tracer installs the :class:`~fxpass.ops.Opaque` modules after
    tracing, from its record, so a rolled-back read leaves nothing behind.
    """

    def __init__(self, tracer: Emitting) -> None:
        self._tracer = tracer
        #: transform function id -> its recorded trace
        self._traces: dict[int, TransformTrace] = {}

    def emit(self, path: str, transform: str, thing: Callable[..., Any], value: Any) -> tuple[Any, How]:
        """Emit ``thing(value)``, the transform held at ``<path>.<transform>``.

        Args:
            path: the patched module's path.
            transform: the attribute holding the transform (``"quantize"``, ``"quantize_bias"``).
            thing: the transform (a module or a function).
            value: the proxy (or constant) of the tensor being transformed.

        Returns:
            The transformed value and how it was emitted.
        """
        tracer = self._tracer
        if isinstance(thing, nn.Module):
            return self._call(path, transform, value), "module"
        if thing is identity:
            return value, "inlined"
        known = self._traces.get(id(thing))
        if known is not None and known.fn is thing and isinstance(value, torch.fx.Proxy):
            if known.template is None:
                return self._call(path, transform, value), "opaque"
            return known.replay(tracer, value), "inlined"
        mark = tracer.mark()
        try:
            out = thing(value)
        except FxpassError:
            raise
        except Exception:  # noqa: BLE001 - any failure to trace makes the transform opaque
            tracer.rollback(mark)
            if isinstance(value, torch.fx.Proxy):
                self._traces[id(thing)] = TransformTrace(thing, None)
            return self._call(path, transform, value), "opaque"
        template = TransformTrace.record(tracer, mark, value, out)
        if template is not None:
            self._traces[id(thing)] = TransformTrace(thing, template)
        return out, "inlined"

    def _call(self, path: str, transform: str, value: Any) -> Any:
        """One ``call_module`` of the module at ``<path>.<transform>`` (a transform module, or the
        :class:`~fxpass.ops.Opaque` the tracer installs there after tracing)."""
        return self._tracer.create_proxy("call_module", join_path(path, transform), (value,), {})


@dataclasses.dataclass(frozen=True)
class TransformTrace:
    """What tracing a transform function produced, to replay for its later reads.

    Tracing a function on a proxy records the same nodes whatever tensor the proxy stands for, so a
    transform applied to a hundred weights is traced once and its nodes copied 99 times. Only a
    trace that depends on nothing but its input is kept: one that added to the tracer's record
    (read other patched tensors, kept a call, inlined an activation), or returned anything but a
    proxy, is traced anew each time, so the record lists every read. ``template`` is None for a
    function that could not be traced (it is opaque at every read).
    """

    fn: Callable[..., Any]
    template: torch.fx.Graph | None

    @staticmethod
    def record(tracer: Emitting, mark: Any, value: Any, out: Any) -> torch.fx.Graph | None:
        """A graph of the nodes added since ``mark``: one placeholder (``value``), one output."""
        if not (isinstance(value, torch.fx.Proxy) and isinstance(out, torch.fx.Proxy)):
            return None
        if tracer.recorded_since(mark):
            return None  # it read patched tensors, or kept a call
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

    def replay(self, tracer: Emitting, value: torch.fx.Proxy) -> torch.fx.Proxy:
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
