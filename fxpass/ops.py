"""What the generated code of a compiled model calls.

These names are part of every saved GraphModule (pickles refer to them by import path): keep them
where they are.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from typing import Any, Callable, Iterator

import cloudpickle
import torch
import torch.fx
import torch.nn as nn

from fxpass.codegen import DictWalkCodeGen

__all__ = ["ByValue", "CompiledGraphModule", "LoadTracer", "Opaque", "call_with_overrides"]

_MISSING = object()


def _first_proxy(values: Any) -> torch.fx.Proxy | None:
    found: list[torch.fx.Proxy] = []

    def visit(value: Any) -> Any:
        if not found and isinstance(value, torch.fx.Proxy):
            found.append(value)
        return value

    torch.fx.node.map_aggregate(values, visit)
    return found[0] if found else None


def call_with_overrides(
    module: nn.Module, overrides: dict[str, Any], args: tuple, kwargs: dict[str, Any]
) -> Any:
    """Call ``module(*args, **kwargs)`` with some of its tensors replaced for this call only.

    fxpass emits this for a patched module (or the smallest module around it that reads its
    tensors) whose forward must stay a call at run time: its forward depends on the training mode
    (BatchNorm, dropout) or cannot be traced. The transforms are nodes of the graph; their results
    come in through ``overrides``.

    Args:
        module: the module to call.
        overrides: dotted attribute path (relative to ``module``) -> value seen during the call.
        args: positional arguments of the call.
        kwargs: keyword arguments of the call.

    Returns:
        Whatever the module returns.

    Example:
        >>> import torch, torch.nn as nn
        >>> lin = nn.Linear(2, 1)
        >>> x = torch.ones(1, 2)
        >>> out = call_with_overrides(lin, {"weight": torch.zeros(1, 2), "bias": torch.ones(1)}, (x,), {})
        >>> out.tolist(), torch.equal(lin(x), out)
        ([[1.0]], False)
    """
    # torch.fx re-tracing the generated code (when unpickling) passes proxies for the
    # transformed tensors; a real call passes tensors. One look decides.
    first = next(iter(overrides.values()), None)
    proxy = first if isinstance(first, torch.fx.Proxy) else None
    if proxy is None and not overrides:
        proxy = _first_proxy((args, kwargs))
    if proxy is not None:
        return proxy.tracer.create_proxy(
            "call_function", call_with_overrides, (module, overrides, args, kwargs), {}
        )
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for path, value in overrides.items():
            owner_path, _, attribute = path.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            # An instance attribute shadows both _parameters (reached through __getattr__) and a
            # missing attribute: the forward reads `value`, and the real state stays untouched.
            namespace = owner.__dict__
            saved.append((namespace, attribute, namespace.get(attribute, _MISSING)))
            namespace[attribute] = value
        return module(*args, **kwargs)
    finally:
        for namespace, attribute, previous in reversed(saved):
            if previous is _MISSING:
                namespace.pop(attribute, None)
            else:
                namespace[attribute] = previous


def _picklable_by_reference(fn: Callable) -> bool:
    try:
        pickle.dumps(fn)
    except Exception:  # noqa: BLE001 - any failure means "not by reference"
        return False
    return True


class ByValue:
    """A callable that pickles the function it wraps by value (with cloudpickle).

    fxpass wraps the local functions it finds among a copied module's hooks (torch's
    ``weight_norm`` registers one), which plain pickle cannot save.

    Args:
        fn: the function to call.

    Example:
        >>> import pickle
        >>> pickle.loads(pickle.dumps(ByValue(lambda x: x + 1)))(1)
        2
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_loads, (cloudpickle.dumps(self.fn),))


def _loads(payload: bytes) -> ByValue:
    return ByValue(pickle.loads(payload))


class Opaque(nn.Module):
    """A transform that torch.fx cannot trace, kept as one call.

    It pickles its function by reference when the function is importable and by value (with
    cloudpickle) otherwise, so the compiled model stays pickleable either way.

    Args:
        fn: the transform, called with the raw tensor.

    Example:
        >>> import pickle, torch
        >>> op = Opaque(lambda w: w if w.sum() > 0 else -w)
        >>> pickle.loads(pickle.dumps(op))(torch.tensor([-2.0])).tolist()
        [2.0]
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if not _picklable_by_reference(self.fn):
            state = dict(state, fn=None, _fn_by_value=cloudpickle.dumps(self.fn))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        by_value = state.pop("_fn_by_value", None)
        if by_value is not None:
            state["fn"] = pickle.loads(by_value)
        super().__setstate__(state)


class LoadTracer(torch.fx.Tracer):
    """The tracer torch.fx uses to rebuild a compiled model's graph when it is unpickled.

    torch.fx re-traces the generated code on load; its default tracer looks every parameter up by
    scanning ``named_parameters()``, which makes loading quadratic in model size. This one looks
    tensors up by identity.
    """

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if isinstance(attr_val, torch.Tensor):
            names = self.__dict__.get("_fxpass_names")
            if names is None or names[0] is not self.root:
                table: dict[int, str] = {}
                for name, tensor in [*self.root.named_parameters(), *self.root.named_buffers()]:
                    table.setdefault(id(tensor), name)
                names = self.__dict__["_fxpass_names"] = (self.root, table)
            name = names[1].get(id(attr_val))
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return attr_val


# torch.fx's key (in GraphModule.meta) of the attributes that deepcopy sets on the copy.
PRESERVED = getattr(torch.fx.graph_module, "_USER_PRESERVED_ATTRIBUTES_KEY", "_user_preserved_attributes")

#: The attributes that hold a module's tree.
TREE_ATTRIBUTES = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")


class CompiledGraphModule(torch.fx.GraphModule):
    """The GraphModule :func:`fxpass.compile` and :func:`fxpass.freeze` return.

    A plain GraphModule rebuilds its module tree from the targets its graph references when it is
    deep-copied, and forgets ``meta`` when it is unpickled. This one keeps the compiled model's
    whole tree (every module, parameter and buffer of the runtime model, in its order) and the
    attributes listed in ``meta[PRESERVED]`` (fxpass's record) through both.

    Its forward reads tensors and modules through the tree's dictionaries
    (:class:`fxpass.codegen.DictWalkCodeGen`); pickles and TorchScript get torch.fx's own code.
    """

    pickles_attribute_code = True  # see fxpass.codegen.PICKLES_ATTRIBUTE_CODE

    @classmethod
    def build(
        cls,
        tree: nn.Module,
        graph: torch.fx.Graph,
        *,
        class_name: str,
        training: bool,
        preserved: dict[str, Any] | None = None,
        codegen: torch.fx.graph.CodeGen | None = None,
    ) -> CompiledGraphModule:
        """A GraphModule holding ``tree``'s containers (not copies of its referenced parts).

        Args:
            tree: the module whose parameters, buffers and children the result holds (shared).
            graph: the graph, owned by the result from now on.
            class_name: the result's class name.
            training: the result's mode.
            preserved: more attributes to keep through copies and pickles (see :meth:`preserve`).
            codegen: the code generator (default: :class:`fxpass.codegen.DictWalkCodeGen` for a
                graph with torch.fx's plain generator; a pytree one, from ``concrete_args``, stays).

        Root-level attributes of ``tree`` that the graph reads and that are not part of the tree
        (tensor constants) are set on the result too, and kept like ``preserved``.
        """
        gm = cls(nn.Module(), torch.fx.Graph(), class_name=class_name)
        gm.__dict__.update(
            _parameters=dict(tree._parameters),
            _buffers=dict(tree._buffers),
            _non_persistent_buffers_set=set(tree._non_persistent_buffers_set),
            _modules=dict(tree._modules),
            _tracer_cls=graph._tracer_cls,
            _tracer_extras=graph._tracer_extras or {},
        )
        gm.training = training
        tree_names = {*tree._parameters, *tree._buffers, *tree._modules}
        constants = {name: getattr(tree, name) for name in _root_attributes(graph) if name not in tree_names}
        gm.preserve(**{**constants, **(preserved or {})})
        graph.set_codegen(codegen if codegen is not None else _fast_codegen(graph))
        gm.graph = graph  # generates the code, against the tree now in place
        return gm

    def preserve(self, **attributes: Any) -> None:
        """Keep the current tree containers, and ``attributes``, through copies and pickles."""
        tree = {name: self.__dict__[name] for name in TREE_ATTRIBUTES}
        self.meta[PRESERVED] = {**tree, **attributes}
        for name, value in attributes.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # torch.fx re-traces the pickled code on load: it must read attributes, so that each read
        # of a tensor becomes a get_attr node again (a dict walk would hand the tracer the raw
        # tensor, and the transforms after it would run once and become constants).
        with _default_code(self):
            rebuild, args = super().__reduce__()
        preserved = self.meta.get(PRESERVED, {})
        return (_rebuild_compiled, (rebuild, args, preserved, type(self).__name__))

    def __reduce_package__(self, exporter: Any) -> tuple[Any, ...]:
        # torch.package saves the generated code too, and re-traces it on import.
        with _default_code(self):
            return super().__reduce_package__(exporter)

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledGraphModule:
        copied = super().__deepcopy__(memo)
        # torch.fx generated the copy's code before restoring the preserved tree and attributes
        # (a tensor constant was then a buffer of the copy): generate it for the final tree.
        copied.recompile()
        return copied

    def __prepare_scriptable__(self) -> CompiledGraphModule:
        """What ``torch.jit.script`` compiles: a twin with torch.fx's code, sharing everything."""
        extras = {k: v for k, v in self.meta.get(PRESERVED, {}).items() if k not in TREE_ATTRIBUTES}
        return CompiledGraphModule.build(
            self,
            copy.deepcopy(self.graph),
            class_name=type(self).__name__,
            training=self.training,
            preserved=extras,
            codegen=_plain_codegen(self.graph),
        )


def _fast_codegen(graph: torch.fx.Graph) -> torch.fx.graph.CodeGen:
    """Dict walks for a graph with torch.fx's plain generator; any other generator (the pytree
    one of ``concrete_args``) stays as it is."""
    return DictWalkCodeGen() if type(graph._codegen) is torch.fx.graph.CodeGen else graph._codegen


def _plain_codegen(graph: torch.fx.Graph) -> torch.fx.graph.CodeGen:
    """torch.fx's own generator in place of the dict walks."""
    return torch.fx.graph.CodeGen() if isinstance(graph._codegen, DictWalkCodeGen) else graph._codegen


def _root_attributes(graph: torch.fx.Graph) -> list[str]:
    """The first step of every target the graph reads."""
    return [
        node.target.partition(".")[0]
        for node in graph.nodes
        if node.op in ("get_attr", "call_module") and isinstance(node.target, str)
    ]


@contextlib.contextmanager
def _default_code(gm: torch.fx.GraphModule) -> Iterator[None]:
    """Within the block, ``gm`` has torch.fx's own generated code."""
    codegen = gm.graph._codegen
    gm.graph.set_codegen(_plain_codegen(gm.graph))
    gm.recompile()
    try:
        yield
    finally:
        gm.graph.set_codegen(codegen)
        gm.recompile()


def _rebuild_compiled(
    rebuild: Callable[..., Any], args: tuple, preserved: dict[str, Any], class_name: str = "GraphModule"
) -> nn.Module:
    gm = rebuild(*args)
    # One class per instance, as GraphModule makes them: torch.fx recognises those by their
    # qualified name; the name is the model's, as when it was compiled.
    cls = type("GraphModuleImpl", (CompiledGraphModule,), {})
    cls.__name__ = class_name
    gm.__class__ = cls
    gm.meta[PRESERVED] = preserved
    for name, value in preserved.items():
        if name in TREE_ATTRIBUTES:
            gm.__dict__[name] = value
        else:
            setattr(gm, name, value)
    gm.graph.set_codegen(_fast_codegen(gm.graph))
    gm.recompile()  # the generated forward lives on the (new) class, and reads the final tree
    return gm
