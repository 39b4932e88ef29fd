"""How a compiled model is saved: what its pickle holds, and what loading it uses.

A compiled model pickles as its graph's nodes (:class:`NodeList`) and its instance dict, its
classes by reference or, where plain pickle cannot find them, by value (:class:`ClassByValue`);
a graph that must pickle as torch.fx does (its code, re-traced on load) names
:class:`LoadTracer`. Saved models refer to the names of this module by import path: keep them
where they are. Models saved when they lived in :mod:`fxpass.compiled` (as ``_NodeList``,
``_Ref``, ``_ClassByValue``, ``LoadTracer``, ``Preserved``) still load: those names resolve there.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import cloudpickle
import torch
import torch.fx

from fxpass._common import tensor_names, where
from fxpass.ops import picklable_by_reference
from fxpass.record import RECORD_ATTRIBUTE

__all__ = [
    "ClassByValue",
    "GENERATED",
    "LoadTracer",
    "NODES",
    "NodeList",
    "Preserved",
    "Ref",
    "check_transform_modules_pickle",
]


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
                names = self.__dict__["_fxpass_names"] = (self.root, tensor_names(self.root))
            name = names[1].get(id(attr_val))
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return attr_val


class Preserved(dict):
    """What a compiled model keeps through copies and pickles (in ``meta[PRESERVED]``).

    A dict subclass, so that torch's pytree treats it as a leaf: ``torch.export`` snapshots the
    plain containers among a module's attributes with ``pytree.tree_map`` while the tensors are
    fake, and writes the copies back afterwards; a plain dict here would come back holding the
    fake tensors, and the next deepcopy or pickle would restore them.
    """


class TensorlessPickler(pickle.Pickler):
    """Pickles everything but tensors, which always pickle (only what surrounds them is checked)."""

    def persistent_id(self, obj: Any) -> Any:
        return id(obj) if isinstance(obj, torch.Tensor) else None


def check_transform_modules_pickle(gm: torch.fx.GraphModule) -> None:
    """Name the transform module that stops a compiled model from pickling.

    Raises:
        pickle.PicklingError: a transform module (its Python state) cannot be pickled.
    """
    record = gm.__dict__.get(RECORD_ATTRIBUTE)
    targets = dict.fromkeys(
        f"{r.module}.{r.transform}".lstrip(".") for r in getattr(record, "rewrites", ()) if r.how == "module"
    )
    for target in targets:
        try:
            module = gm.get_submodule(target)
            TensorlessPickler(io.BytesIO()).dump(module)
        except AttributeError:
            continue  # (not a module of the tree any more)
        except Exception as error:  # noqa: BLE001 - any failure: say which module
            raise pickle.PicklingError(
                f"{where(target, module)}: this transform module cannot be pickled "
                f"({type(error).__name__}: {error}); keep its state in tensors and importable "
                "objects (fxpass pickles local functions by value already)"
            ) from error


class ClassByValue:
    """A class pickled by value (cloudpickle) where plain pickle cannot find it by name (a class
    defined in a function)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    @staticmethod
    def wrap(cls: type | None) -> type | ClassByValue | None:
        if cls is None or picklable_by_reference(cls):
            return cls
        return ClassByValue(cloudpickle.dumps(cls))

    @staticmethod
    def unwrap(value: type | ClassByValue | None) -> type | None:
        return pickle.loads(value.payload) if isinstance(value, ClassByValue) else value


#: The instance attributes a compiled model's pickle leaves out: its graph, saved as a node list
#: instead, and what generating the code sets.
GENERATED = frozenset(("_graph", "_code", "_lineno_map", "_prologue_start"))
#: The key of the node list in a compiled model's pickled state.
NODES = "_fxpass_nodes"


class Ref(int):
    """A node argument in a :class:`NodeList`: the position of an earlier node."""

    __slots__ = ()


class NodeList:
    """A graph as the arguments of ``Graph.create_node``, one tuple per node, for pickling.

    torch.fx pickles a GraphModule as its generated code and re-traces that code on load, which
    costs a trace and a second code generation per load (the larger part of loading a compiled
    model). This keeps each node's op, name, target, arguments (earlier nodes as :class:`Ref`)
    and type instead; loading creates the same nodes under the same names, so the graph and its
    code come back exactly as they were. Only the plain code generators qualify (a pytree one,
    from ``concrete_args``, carries its specs), and only graphs whose every target pickle finds
    by name; :meth:`of` returns None for the others, which pickle as torch.fx does.

    Example:
        >>> import torch.fx, torch.nn as nn
        >>> graph = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(), nn.Tanh())).graph
        >>> nodes = NodeList.of(graph)
        >>> [n.name for n in nodes.graph().nodes] == [n.name for n in graph.nodes]
        True
    """

    def __init__(self, nodes: list[tuple[Any, ...]], codegen: type, tracer_cls: type | None, tracer_extras: Any) -> None:
        self.nodes = nodes
        self.codegen = codegen
        self.tracer_cls = tracer_cls
        self.tracer_extras = tracer_extras

    @classmethod
    def of(cls, graph: torch.fx.Graph, codegens: tuple[type, ...] = (torch.fx.graph.CodeGen,)) -> NodeList | None:
        """The nodes of ``graph``, or None where it must pickle as torch.fx does: a code
        generator not among ``codegens`` (the plain ones), or a target pickle cannot find."""
        if type(graph._codegen) not in codegens:
            return None
        checked: dict[int, bool] = {}

        def by_reference(obj: Any) -> bool:  # (each target, type and class asked once)
            if id(obj) not in checked:
                checked[id(obj)] = obj is None or isinstance(obj, str) or picklable_by_reference(obj)
            return checked[id(obj)]

        position: dict[torch.fx.Node, Ref] = {}
        nodes = []
        for node in graph.nodes:
            if not by_reference(node.target):
                return None
            args = torch.fx.node.map_arg(node.args, position.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, position.__getitem__)
            kind = node.type if by_reference(node.type) else None  # (an annotation only)
            nodes.append((node.op, node.name, node.target, args, kwargs, kind))
            position[node] = Ref(len(position))
        tracer_cls = graph._tracer_cls if by_reference(graph._tracer_cls) else None
        return cls(nodes, type(graph._codegen), tracer_cls, graph._tracer_extras)

    def graph(self) -> torch.fx.Graph:
        """A new graph holding these nodes."""
        graph = torch.fx.Graph(tracer_cls=self.tracer_cls, tracer_extras=self.tracer_extras)
        made: list[torch.fx.Node] = []

        def node_of(value: Any) -> Any:
            return made[value] if type(value) is Ref else value

        for op, name, target, args, kwargs, kind in self.nodes:
            args = torch.fx.node.map_aggregate(args, node_of)
            kwargs = torch.fx.node.map_aggregate(kwargs, node_of)
            made.append(graph.create_node(op, target, args, kwargs, name=name, type_expr=kind))
        graph.set_codegen(self.codegen())
        return graph
