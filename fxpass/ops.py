"""What the generated code of a compiled model calls.

These names are part of every saved GraphModule (pickles refer to them by import path): keep them
where they are.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import weakref
from typing import Any, Callable, Iterator

import cloudpickle
import torch
import torch.fx
import torch.nn as nn

from fxpass import reading
from fxpass.codegen import (
    ENTRY_ATTRIBUTE,
    FX_FORWARD,
    GRAPH_MODE_ATTRIBUTE,
    MODES_ATTRIBUTE,
    DictWalkCodeGen,
    fx_forward,
)
from fxpass.errors import NotScriptableError, UntraceableModelError

__all__ = [
    "ByValue",
    "CompiledGraphModule",
    "LoadTracer",
    "ModeGraphs",
    "Opaque",
    "call_with_overrides",
    "parametrized",
    "part_class",
    "picklable_by_reference",
]

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

    fxpass 0.1 emitted this for a patched module (or the smallest module around it that reads its
    tensors) whose forward must stay a call at run time, the transforms computed by graph nodes
    and handed in through ``overrides``. A kept call is now a plain ``call_module`` whose patched
    modules read as at run time (:mod:`fxpass.reading`); this stays for the models saved then.

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


def parametrized(parametrization: nn.Module, *originals: Any) -> Any:
    """The value of a parametrized tensor: ``parametrization()``, once per
    ``torch.nn.utils.parametrize.cached()`` block or at every call outside one, as torch's own
    property computes it (:func:`fxpass.reading.evaluate_parametrization`).

    The graph calls this for each read of a parametrized tensor, with the parametrization's
    ``ParametrizationList`` and its original tensors: when torch.fx re-traces the generated code
    (unpickling) the originals are proxies, and the call is recorded again, not evaluated.

    Example:
        >>> import torch, torch.nn as nn
        >>> from torch.nn.utils import parametrize
        >>> class Twice(nn.Module):
        ...     def forward(self, w):
        ...         return 2 * w
        >>> lin = parametrize.register_parametrization(nn.Linear(2, 2), "weight", Twice())
        >>> plist = lin.parametrizations.weight
        >>> torch.equal(parametrized(plist, plist.original), lin.weight)
        True
    """
    proxy = next((o for o in originals if isinstance(o, torch.fx.Proxy)), None)
    if proxy is not None:
        return proxy.tracer.create_proxy("call_function", parametrized, (parametrization, *originals), {})
    return reading.evaluate_parametrization(parametrization)


def picklable_by_reference(fn: Callable) -> bool:
    """Whether plain pickle saves ``fn`` (by its import path)."""
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
        if not picklable_by_reference(self.fn):
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

# (generated code, ...) -> the class of compiled modules whose forward is that code
_SHARED_CLASSES: weakref.WeakValueDictionary[Any, type] = weakref.WeakValueDictionary()


class Preserved(dict):
    """What a compiled model keeps through copies and pickles (in ``meta[PRESERVED]``).

    A dict subclass, so that torch's pytree treats it as a leaf: ``torch.export`` snapshots the
    plain containers among a module's attributes with ``pytree.tree_map`` while the tensors are
    fake, and writes the copies back afterwards; a plain dict here would come back holding the
    fake tensors, and the next deepcopy or pickle would restore them.
    """


#: The attributes that hold a module's tree.
TREE_ATTRIBUTES = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")
#: The preserved entry holding instance attributes set as they are (see CompiledGraphModule.preserve).
INSTANCE_ATTRIBUTES = "_fxpass_attributes"


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
    #: On the class of a compiled part (:func:`part_class`): the class of the module it replaces.
    _fxpass_base: type | None = None

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
        base: type | None = None,
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
            base: for a compiled part, the class of the module it stands in for: the result is
                then an instance of :func:`part_class` of it.

        Root-level attributes of ``tree`` that the graph reads and that are not part of the tree
        (tensor constants) are set on the result too, and kept like ``preserved``.
        """
        klass = part_class(base) if base is not None else cls
        gm = klass(nn.Module(), torch.fx.Graph(), class_name=class_name)
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
        """Keep the current tree containers, and ``attributes``, through copies and pickles.

        ``attributes[INSTANCE_ATTRIBUTES]``, a dict, is applied to the instance ``__dict__`` as it
        is: the plain attributes and hooks of the module a compiled part replaces (nn.Module's
        ``setattr`` would register a module-valued attribute as a child).
        """
        tree = {name: self.__dict__[name] for name in TREE_ATTRIBUTES}
        self.meta[PRESERVED] = Preserved({**tree, **attributes})
        for name, value in attributes.items():
            setattr(self, name, value)
        self._apply_instance_attributes()

    def _apply_instance_attributes(self) -> None:
        self.__dict__.update(self.meta.get(PRESERVED, {}).get(INSTANCE_ATTRIBUTES, {}))

    def _fxpass_fx_forward(self, *args: Any, **kwargs: Any) -> Any:
        """torch.fx's own code of the graph: what a call made while torch.fx traces runs
        (:mod:`fxpass.codegen`)."""
        return fx_forward(self.graph)(self, *args, **kwargs)

    def recompile(self) -> Any:
        """Generate the code, as GraphModule does, and share one class with the other compiled
        modules whose code came out the same (the identical blocks of a model): their forward is
        then one function, which ``torch.compile`` of each block compiles once."""
        cls = type(self)
        if cls.__dict__.get("_fxpass_shared"):  # others use this class: change a class of its own
            own = type("GraphModuleImpl", cls.__bases__, {})
            own.__name__ = cls.__name__
            object.__setattr__(self, "__class__", own)
        elif _SHARED_CLASSES.get(cls.__dict__.get("_fxpass_code_key")) is cls:
            del _SHARED_CLASSES[cls._fxpass_code_key]  # its code is about to change
        self.graph.__dict__.pop(FX_FORWARD, None)
        result = super().recompile()
        cls = type(self)
        globals_ = cls.forward.__globals__
        key = (cls.__bases__, cls.__name__, self._code, tuple(sorted((k, id(v)) for k, v in globals_.items())))
        shared = _SHARED_CLASSES.get(key)
        if shared is None:
            _SHARED_CLASSES[key] = cls
            cls._fxpass_code_key = key
        elif shared is not cls:
            shared._fxpass_shared = True
            object.__setattr__(self, "__class__", shared)
        return result

    def _fxpass_other_mode(self, *args: Any, **kwargs: Any) -> Any:
        """A call of a model compiled once per mode whose graph is not the one of its mode (its
        ``training`` was assigned directly, not through ``train()``): the graph of its mode."""
        modes: ModeGraphs = self.__dict__[MODES_ATTRIBUTE]
        modes.check(self, self.training)
        return modes.of(self.training)(*args, **kwargs)

    def _fxpass_check_modes(self, mode: bool) -> None:
        self.__dict__[MODES_ATTRIBUTE].check(self, mode)

    def train(self, mode: bool = True) -> CompiledGraphModule:
        """As ``nn.Module.train``; a model compiled once per mode takes the graph of ``mode``."""
        result = super().train(mode)
        if MODES_ATTRIBUTE in self.__dict__ and self.__dict__.get(GRAPH_MODE_ATTRIBUTE) is not mode:
            self.use_mode_graph(mode)
        return result

    def use_mode_graph(self, mode: bool) -> None:
        """Hold the graph (and the record) of ``mode`` of a model compiled once per mode."""
        source = self.__dict__[MODES_ATTRIBUTE].of(mode)
        record = source.__dict__.get("_fxpass_record")
        preserved = self.meta[PRESERVED]
        preserved[INSTANCE_ATTRIBUTES][GRAPH_MODE_ATTRIBUTE] = self.__dict__[GRAPH_MODE_ATTRIBUTE] = mode
        preserved["_fxpass_record"] = self.__dict__["_fxpass_record"] = record
        self.graph = copy.deepcopy(source.graph)  # (generates the code)

    def share_tree(self, other: CompiledGraphModule) -> None:
        """Hold ``other``'s tree containers (the same dictionaries, not copies) from now on."""
        self.__dict__.update({name: other.__dict__[name] for name in TREE_ATTRIBUTES})
        preserved = self.meta[PRESERVED]
        preserved.update({name: other.__dict__[name] for name in TREE_ATTRIBUTES})
        self.recompile()

    def _fxpass_eager(self, *args: Any, **kwargs: Any) -> Any:
        """The replaced module's own forward, run eagerly, its patched reads evaluated as at run
        time (:mod:`fxpass.reading`).

        A compiled part's generated code calls it for arguments its graph was not traced for: an
        optional argument given where it was traced as ``None``, or ``None`` where it was traced
        as a value (see ``CompileRecord.specialized``).
        """
        base = type(self)._fxpass_base
        if base is None:
            raise RuntimeError(f"{type(self).__name__} is not a compiled part: it has no eager forward")
        with reading.eager_reads():
            return base.forward(self, *args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        _check_transform_modules_pickle(self)
        base = _ClassByValue.wrap(type(self)._fxpass_base)
        nodes = _NodeList.of(self.graph)
        if nodes is not None:
            # The graph's nodes and the instance dict, as they are: loading rebuilds the graph
            # node by node and generates the code once (see _NodeList).
            state = {k: v for k, v in self.__dict__.items() if k not in _GENERATED}
            return (_new_compiled, (type(self).__name__, base), {**state, _NODES: nodes})
        # torch.fx's own pickle (a graph with concrete_args' pytree code, or a node target pickle
        # cannot find by name): the code, re-traced on load. It must read attributes, so that
        # each read of a tensor becomes a get_attr node again (a dict walk would hand the tracer
        # the raw tensor, and the transforms after it would run once and become constants).
        with _default_code(self):
            rebuild, args = super().__reduce__()
        preserved = self.meta.get(PRESERVED, {})
        return (_rebuild_compiled, (rebuild, args, preserved, type(self).__name__, base))

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        nodes: _NodeList | None = state.pop(_NODES, None)
        super().__setstate__(state)
        if nodes is not None:
            self.graph = nodes.graph()  # (generates the code)

    def __reduce_package__(self, exporter: Any) -> tuple[Any, ...]:
        # torch.package saves the generated code too, and re-traces it on import.
        with _default_code(self):
            return super().__reduce_package__(exporter)

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledGraphModule:
        copied = super().__deepcopy__(memo)
        copied._apply_instance_attributes()
        # torch.fx generated the copy's code before restoring the preserved tree and attributes
        # (a tensor constant was then a buffer of the copy): generate it for the final tree.
        copied.recompile()
        return copied

    def __prepare_scriptable__(self) -> CompiledGraphModule:
        """What ``torch.jit.script`` compiles: a twin with torch.fx's code, sharing everything.

        Raises:
            NotScriptableError: a module kept as a call reads patched tensors as at run time
                (Python TorchScript cannot compile): script ``fxpass.freeze(model)`` instead.
        """
        if MODES_ATTRIBUTE in self.__dict__:
            raise NotScriptableError(
                f"{type(self).__name__} is compiled once per mode (its forward reads self.training), "
                "and a scripted module would keep one graph for both; script fxpass.freeze(model), "
                "the eval graph, instead"
            )
        for name, module in self.named_modules():
            if reading.has_eager_forward(module):
                raise NotScriptableError(
                    f"{name} ({type(module).__name__}) is kept as a call and its patched modules read "
                    "their tensors as at run time, in Python, which TorchScript cannot compile; "
                    "script fxpass.freeze(model) instead"
                )
        extras = {k: v for k, v in self.meta.get(PRESERVED, {}).items() if k not in TREE_ATTRIBUTES}
        # (TorchScript cannot call an eager forward, nor the Python hooks of a replaced module)
        extras.pop(ENTRY_ATTRIBUTE, None)
        extras.pop(INSTANCE_ATTRIBUTES, None)
        return CompiledGraphModule.build(
            self,
            copy.deepcopy(self.graph),
            class_name=type(self).__name__,
            training=self.training,
            preserved=extras,
            codegen=_plain_codegen(self.graph),
        )


class _TensorlessPickler(pickle.Pickler):
    """Pickles everything but tensors, which always pickle (only what surrounds them is checked)."""

    def persistent_id(self, obj: Any) -> Any:
        return id(obj) if isinstance(obj, torch.Tensor) else None


def _check_transform_modules_pickle(gm: torch.fx.GraphModule) -> None:
    """Name the transform module that stops a compiled model from pickling.

    Raises:
        pickle.PicklingError: a transform module (its Python state) cannot be pickled.
    """
    record = gm.__dict__.get("_fxpass_record")
    targets = dict.fromkeys(
        f"{r.module}.{r.transform}".lstrip(".") for r in getattr(record, "rewrites", ()) if r.how == "module"
    )
    for target in targets:
        try:
            module = gm.get_submodule(target)
            _TensorlessPickler(io.BytesIO()).dump(module)
        except AttributeError:
            continue  # (not a module of the tree any more)
        except Exception as error:  # noqa: BLE001 - any failure: say which module
            raise pickle.PicklingError(
                f"{target} ({type(module).__name__}): this transform module cannot be pickled "
                f"({type(error).__name__}: {error}); keep its state in tensors and importable "
                "objects (fxpass pickles local functions by value already)"
            ) from error


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


def _module_init(self: nn.Module, *args: Any, **kwargs: Any) -> None:
    nn.Module.__init__(self)


_PART_CLASSES: dict[type, type] = {}


def part_class(base: type) -> type:
    """The class of a compiled part standing in for a module of class ``base``.

    A :class:`CompiledGraphModule` that is also a ``base``: ``isinstance`` answers as for the
    module it replaced (code that selects modules by class, weight init, adapters and wrapping
    policies find it), ``base``'s own methods apply to it, and GraphModule's come first. Between
    GraphModule and ``base`` sits a class whose ``__init__`` is ``nn.Module``'s, since GraphModule
    initialises its base without arguments. Made once per ``base``; a pickle names ``base`` and is
    rebuilt through this function.

    Raises:
        TypeError: Python cannot derive such a class from ``base`` (a metaclass or layout conflict).

    Example:
        >>> import torch.nn as nn
        >>> cls = part_class(nn.Linear)
        >>> issubclass(cls, nn.Linear), issubclass(cls, CompiledGraphModule), cls.__name__
        (True, True, 'Linear')
    """
    found = _PART_CLASSES.get(base)
    if found is None:
        if not (isinstance(base, type) and issubclass(base, nn.Module)) or issubclass(base, torch.fx.GraphModule):
            raise TypeError(f"a compiled part cannot stand in for {base!r}")
        names = {"__module__": __name__, "__qualname__": base.__qualname__}
        shim = type(base.__name__, (base,), {"__init__": _module_init, **names})
        found = type(
            base.__name__,
            (CompiledGraphModule, shim),
            # a patched module compiled alone is read by eager code as at run time (fxpass.reading)
            {"_fxpass_base": base, "__getattr__": reading.reading_getattr, "_fxpass_getattr_from": shim, **names},
        )
        _PART_CLASSES[base] = found
    return found


class ModeGraphs:
    """The graphs of a model whose own forward reads ``self.training``, one per mode.

    Such a model is traced once per mode, each graph a compiled model over the same tree. The
    compiled model itself holds the graph of its current mode (``train()`` and ``eval()`` switch
    it), so whatever reads its graph (``torch.fx.Interpreter``, ``torch.export``) reads the one
    for its mode; its generated forward checks the mode first all the same, and hands a call made
    in the other mode to the other graph. The root's forward may read the mode of other modules
    too (``reads``): each must then have the model's mode, or the call raises.

    Args:
        train: the training-mode graph, as a compiled model sharing the tree.
        eval: the eval-mode graph, likewise.
        reads: paths of the other modules whose mode the root's forward reads.
    """

    def __init__(
        self, train: CompiledGraphModule, eval: CompiledGraphModule, reads: tuple[str, ...] = ()  # noqa: A002
    ) -> None:
        self.train = train
        self.eval = eval
        self.reads = reads

    def of(self, mode: bool) -> CompiledGraphModule:
        """The compiled model of ``mode`` (True: training)."""
        return self.train if mode else self.eval

    def check(self, model: nn.Module, mode: bool) -> None:
        """Raise unless every module in :attr:`reads` is in ``mode`` too."""
        for path in self.reads:
            if model.get_submodule(path).training != mode:
                raise UntraceableModelError(
                    f"{path} is in {'train' if not mode else 'eval'} mode under a model in "
                    f"{'train' if mode else 'eval'} mode, and the model's forward reads its mode: its "
                    "graphs are traced with every module in the same mode; set the modes alike, or "
                    "compile with scope='module'"
                )


class _ClassByValue:
    """A class pickled by value (cloudpickle) where plain pickle cannot find it by name (a class
    defined in a function)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    @staticmethod
    def wrap(cls: type | None) -> type | _ClassByValue | None:
        if cls is None or picklable_by_reference(cls):
            return cls
        return _ClassByValue(cloudpickle.dumps(cls))

    @staticmethod
    def unwrap(value: type | _ClassByValue | None) -> type | None:
        return pickle.loads(value.payload) if isinstance(value, _ClassByValue) else value


#: The instance attributes a compiled model's pickle leaves out: its graph, saved as a node list
#: instead, and what generating the code sets.
_GENERATED = frozenset(("_graph", "_code", "_lineno_map", "_prologue_start"))
#: The key of the node list in a compiled model's pickled state.
_NODES = "_fxpass_nodes"


class _Ref(int):
    """A node argument in a :class:`_NodeList`: the position of an earlier node."""

    __slots__ = ()


class _NodeList:
    """A graph as the arguments of ``Graph.create_node``, one tuple per node, for pickling.

    torch.fx pickles a GraphModule as its generated code and re-traces that code on load, which
    costs a trace and a second code generation per load (the larger part of loading a compiled
    model). This keeps each node's op, name, target, arguments (earlier nodes as :class:`_Ref`)
    and type instead; loading creates the same nodes under the same names, so the graph and its
    code come back exactly as they were. Only the plain code generators qualify (a pytree one,
    from ``concrete_args``, carries its specs), and only graphs whose every target pickle finds
    by name; :meth:`of` returns None for the others, which pickle as torch.fx does.

    Example:
        >>> import torch.fx, torch.nn as nn
        >>> graph = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(), nn.Tanh())).graph
        >>> nodes = _NodeList.of(graph)
        >>> [n.name for n in nodes.graph().nodes] == [n.name for n in graph.nodes]
        True
    """

    def __init__(self, nodes: list[tuple[Any, ...]], codegen: type, tracer_cls: type | None, tracer_extras: Any) -> None:
        self.nodes = nodes
        self.codegen = codegen
        self.tracer_cls = tracer_cls
        self.tracer_extras = tracer_extras

    @classmethod
    def of(cls, graph: torch.fx.Graph) -> _NodeList | None:
        if type(graph._codegen) not in (torch.fx.graph.CodeGen, DictWalkCodeGen):
            return None
        position: dict[torch.fx.Node, _Ref] = {}
        checked: dict[int, bool] = {}
        nodes = []
        for node in graph.nodes:
            target = node.target
            if not isinstance(target, str):
                if id(target) not in checked:
                    checked[id(target)] = picklable_by_reference(target)
                if not checked[id(target)]:
                    return None
            args = torch.fx.node.map_arg(node.args, position.__getitem__)
            kwargs = torch.fx.node.map_arg(node.kwargs, position.__getitem__)
            kind = node.type if node.type is None or picklable_by_reference(node.type) else None
            nodes.append((node.op, node.name, target, args, kwargs, kind))
            position[node] = _Ref(len(position))
        tracer_cls = graph._tracer_cls if graph._tracer_cls is None or picklable_by_reference(graph._tracer_cls) else None
        return cls(nodes, type(graph._codegen), tracer_cls, graph._tracer_extras)

    def graph(self) -> torch.fx.Graph:
        """A new graph holding these nodes."""
        graph = torch.fx.Graph(tracer_cls=self.tracer_cls, tracer_extras=self.tracer_extras)
        made: list[torch.fx.Node] = []

        def node_of(value: Any) -> Any:
            return made[value] if type(value) is _Ref else value

        for op, name, target, args, kwargs, kind in self.nodes:
            args = torch.fx.node.map_aggregate(args, node_of)
            kwargs = torch.fx.node.map_aggregate(kwargs, node_of)
            made.append(graph.create_node(op, target, args, kwargs, name=name, type_expr=kind))
        graph.set_codegen(self.codegen())
        return graph


def _new_compiled(class_name: str = "GraphModule", base: type | _ClassByValue | None = None) -> nn.Module:
    """An empty compiled model of class ``class_name``, for pickle to fill in (``__setstate__``)."""
    cls = _instance_class(class_name, _ClassByValue.unwrap(base))
    return object.__new__(cls)  # (GraphModule.__new__ would derive yet another class)


def _instance_class(class_name: str, base: type | None) -> type:
    # One class per instance, as GraphModule makes them: torch.fx recognises those by their
    # qualified name; the name is the model's, as when it was compiled.
    cls = type("GraphModuleImpl", (part_class(base) if base is not None else CompiledGraphModule,), {})
    cls.__name__ = class_name
    return cls


def _rebuild_compiled(
    rebuild: Callable[..., Any],
    args: tuple,
    preserved: dict[str, Any],
    class_name: str = "GraphModule",
    base: type | _ClassByValue | None = None,
) -> nn.Module:
    gm = rebuild(*args)
    gm.__class__ = _instance_class(class_name, _ClassByValue.unwrap(base))
    gm.meta[PRESERVED] = preserved = Preserved(preserved)
    for name, value in preserved.items():
        if name in TREE_ATTRIBUTES:
            gm.__dict__[name] = value
        else:
            setattr(gm, name, value)
    gm._apply_instance_attributes()
    gm.graph.set_codegen(_fast_codegen(gm.graph))
    gm.recompile()  # the generated forward lives on the (new) class, and reads the final tree
    return gm
