"""The tracer: torch.fx's Tracer, watching patched attributes and the training mode.

While tracing, every copied module (see :mod:`fxpass._shells`) wears a tracing subclass of its own
class. Its patched attributes are properties that emit ``get_attr`` of the raw tensor followed by
the transforms as nodes, once per read, in the order the forward reads them; its ``training`` is a
property that notes the read. A module whose forward reads the mode (BatchNorm, dropout) or cannot
be traced is not traced into the graph: its nodes are rolled back and it stays a call at run time,
and the patched modules inside it read their tensors as at run time while it runs
(:mod:`fxpass.reading`). Tracing through a mode-dependent forward would bake the current mode into
the graph.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
from typing import Any, Callable, Iterator

import torch
import torch.fx
import torch.nn as nn
from torch.nn.utils import parametrize as _parametrize

from fxpass._common import join_path, tensor_names, where
from fxpass._provenance import Provenance
from fxpass._shells import Patched, ShellTree, keep_reads
from fxpass._transforms import TransformEmitter, describe, refuse_autograd_functions
from fxpass.comparison import listing
from fxpass.errors import CachedInsideTrace as _CachedInsideTrace
from fxpass.errors import FxpassError, ReadsModeError, UnsupportedPatchError, UntraceableModelError
from fxpass.ops import Opaque, parametrized
from fxpass.reading import install_eager_forward
from fxpass.record import KeptCall, Rewrite

__all__ = ["ACTIVATIONS", "PatchTracer"]

ACTIVATIONS: frozenset[type[nn.Module]] = frozenset(
    (
        nn.CELU, nn.ELU, nn.GELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardswish, nn.Hardtanh,
        nn.LeakyReLU, nn.LogSigmoid, nn.LogSoftmax, nn.Mish, nn.ReLU, nn.ReLU6, nn.SELU, nn.SiLU,
        nn.Sigmoid, nn.Softmax, nn.Softmin, nn.Softplus, nn.Softshrink, nn.Softsign, nn.Tanh,
        nn.Tanhshrink, nn.Threshold,
    )
)  # fmt: skip
"""The modules ``fxpass.compile(..., inline_activations=True)`` emits as functional calls.

Each has no state, and its forward is one ``torch.nn.functional`` call on constructor constants
that does not depend on the mode. Exact classes only: a subclass may override ``forward`` (and,
like any user module, is traced through anyway). A module or process holding forward or backward
hooks keeps its calls.
"""

_CALL_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

# The tracer whose shells wear tracing classes (see PatchTracer._dressed), per thread.
_ACTIVE: contextvars.ContextVar[PatchTracer | None] = contextvars.ContextVar("fxpass_tracer", default=None)




def _cache_level() -> int:
    return getattr(_parametrize, "_cache_enabled", 0)


@dataclasses.dataclass
class _Scope:
    """One module forward being traced."""

    module: nn.Module
    path: str
    #: the modules whose ``training`` its forward read, by id
    mode_reads: dict[int, nn.Module] = dataclasses.field(default_factory=dict)
    #: the modules whose ``training`` its forward set (``self.drop.eval()``), by id
    mode_writes: dict[int, nn.Module] = dataclasses.field(default_factory=dict)
    #: parametrize.cached() nesting when its forward started
    cache_level: int = dataclasses.field(default_factory=_cache_level)

    @property
    def reads_training(self) -> bool:
        return bool(self.mode_reads)


@dataclasses.dataclass(frozen=True)
class _Mark:
    node: torch.fx.Node | None
    rewrites: int
    kept: int
    inlined: int
    eager_calls: int


_MISSING = object()


# The attributes torch.fx itself sets on the root while tracing: the graph's constants.
_TRACER_ATTRIBUTES = ("_tensor_constant", "_torchbind_obj")


def _restore_namespace(namespace: dict[str, Any], before: dict[str, Any]) -> None:
    """Put a module's ``__dict__`` back as it was, but for torch.fx's constants (the containers
    themselves are kept: their contents are the tree's, edited on purpose)."""
    for name in [n for n in namespace if n not in before and not n.startswith(_TRACER_ATTRIBUTES)]:
        del namespace[name]
    for name, value in before.items():
        if namespace.get(name, _MISSING) is not value:
            namespace[name] = value


def _get_training(self: nn.Module) -> bool:
    tracer = _ACTIVE.get()
    if tracer is not None:
        tracer.note_training_read(self)
    return self.__dict__["training"]


def _set_training(self: nn.Module, mode: bool) -> None:
    tracer = _ACTIVE.get()
    if tracer is not None:
        tracer.note_training_write(self)
    self.__dict__["training"] = mode


def _patched_property(attribute: str) -> property:
    def get(self: nn.Module) -> Any:
        tracer = _ACTIVE.get()
        assert tracer is not None, "a tracing class outlived its trace"
        return tracer.read_patched(self, attribute)

    return property(get)


_TRACING_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _tracing_class(base: type, attributes: tuple[str, ...]) -> type:
    key = (base, attributes)
    cls = _TRACING_CLASSES.get(key)
    if cls is None:
        namespace: dict[str, Any] = {"training": property(_get_training, _set_training)}
        namespace.update({a: _patched_property(a) for a in attributes})
        namespace["__module__"] = base.__module__
        namespace["_fxpass_traced"] = base
        cls = type(base.__name__, (base,), namespace)
        _TRACING_CLASSES[key] = cls
    return cls


def _inlinable(m: nn.Module) -> bool:
    """Whether calling ``m.forward`` is what calling ``m`` does: an activation without hooks."""
    own = type(m).__dict__.get("_fxpass_traced", type(m))  # (the class below the tracing one)
    if own not in ACTIVATIONS or any(m.__dict__.get(name) for name in _CALL_HOOKS):
        return False
    hooks = torch.nn.modules.module
    return not any(getattr(hooks, f"_global{name}", None) for name in _CALL_HOOKS)


class PatchTracer(torch.fx.Tracer):
    """A torch.fx Tracer over a :class:`~fxpass._shells.ShellTree`.

    Args:
        tree: the copied module tree to trace.
        inline_activations: trace the modules of :data:`ACTIVATIONS` into their functional call
            (when neither they nor the process hold forward or backward hooks).
    """

    def __init__(self, tree: ShellTree, *, inline_activations: bool = False) -> None:
        super().__init__()
        self.tree = tree
        self.inline_activations = inline_activations
        #: paths of the activation modules traced into functional calls
        self.inlined: list[str] = []
        self.rewrites: list[Rewrite] = []
        self.kept: list[KeptCall] = []
        #: modules kept as calls with patched modules inside, and those (see finish())
        self.eager_calls: list[tuple[nn.Module, tuple[Patched, ...]]] = []
        self._scopes: list[_Scope] = []
        self._tensor_names: dict[int, str] = {}
        self._provenance = Provenance([])
        #: paths of the modules (not the root) whose mode the root's forward read (trace_tree)
        self.mode_reads: tuple[str, ...] = ()
        self._emitter = TransformEmitter(self)

    # -- entry point -------------------------------------------------------------------------

    def trace_tree(self, concrete_args: dict[str, Any] | None = None, *, mode: bool | None = None) -> torch.fx.Graph:
        """Trace the tree's root; the tree's classes are restored whatever happens.

        Args:
            concrete_args: as for ``torch.fx.symbolic_trace``.
            mode: None to refuse a forward of the root that reads a mode (:class:`ReadsModeError`),
                or the mode (True for training) every copied module has while this trace runs:
                the graph for that mode. :attr:`mode_reads` then lists the other modules whose
                mode the root's forward read.
        """
        root = self.tree.root
        self._tensor_names = tensor_names(root)
        scope = _Scope(root, "")
        self._provenance = Provenance([*root.parameters(), *root.buffers()])
        with self._dressed(mode), refuse_autograd_functions(), self._provenance:
            self._scopes.append(scope)
            try:
                graph = self.trace(root, concrete_args)
            except _CachedInsideTrace as error:  # the model itself entered the cached() block
                raise UntraceableModelError(str(error)).because(error.reason or "") from None
            except FxpassError:
                raise
            except Exception as error:
                first_line = (str(error).strip().splitlines() or [""])[0]
                raise UntraceableModelError(
                    f"torch.fx cannot trace the forward of the model ({type(root).__name__}): "
                    f"{type(error).__name__}: {error}. Pass concrete_args for the arguments that "
                    "steer its control flow, or compile with scope='module' to compile each patched "
                    "part on its own"
                ).because(f"torch.fx cannot trace it ({type(error).__name__}: {first_line})") from error
            finally:
                self._scopes.pop()
        for node in graph.nodes:
            # `from __future__ import annotations` leaves strings here, which the generated code
            # would import by name when the GraphModule is pickled.
            if isinstance(node.type, str):
                node.type = None
        if scope.mode_writes:
            reason = f"its forward sets the mode of {self._named(scope.mode_writes)}"
            raise UntraceableModelError(
                f"the model ({type(root).__name__}): {reason}, which a graph would not replay (the "
                "next call would run in the mode it was traced in); compile with scope='module', "
                "where the model's own forward runs as it is"
            ).because(reason)
        if scope.reads_training and mode is None:
            raise ReadsModeError(
                f"the forward of the model ({type(root).__name__}) reads self.training, so its "
                "graph would be fixed to the current mode; fxpass.compile traces it once per mode"
            ).because("its forward reads self.training")
        self.mode_reads = tuple(
            self.tree.paths[id(m)] for m in scope.mode_reads.values() if m is not root and id(m) in self.tree.paths
        )
        return graph

    @contextlib.contextmanager
    def _dressed(self, mode: bool | None = None) -> Iterator[None]:
        """Give every shell its tracing class for the duration of the trace; afterwards, its
        class and its attributes are as they were.

        What the traced code set on a shell (a forward pre-hook of ``torch.nn.utils.prune`` or of
        the legacy ``weight_norm`` assigns the recomputed weight, a proxy while tracing; a lazy
        module its shapes) is recorded in the graph, where it happens at every call; on the
        compiled model the attributes keep the values they had before the trace.
        """
        dressed: list[tuple[nn.Module, type, dict[str, Any]]] = []
        active = _ACTIVE.set(self)
        try:
            for key, shell in self.tree.shells.items():
                patched = self.tree.patched.get(key)
                attributes = patched.stack.attributes if patched is not None else ()
                dressed.append((shell, type(shell), dict(shell.__dict__)))
                # (object.__setattr__: nn.Module's would first look for a parameter "__class__")
                object.__setattr__(shell, "__class__", _tracing_class(type(shell), attributes))
                if mode is not None:  # (restored with the rest of the attributes)
                    shell.__dict__["training"] = mode
            yield
        finally:
            for shell, cls, before in dressed:
                object.__setattr__(shell, "__class__", cls)
                _restore_namespace(shell.__dict__, before)
            _ACTIVE.reset(active)

    # -- rollback ----------------------------------------------------------------------------

    def mark(self) -> _Mark:
        """Remember the current end of the graph and of the record."""
        last = next(iter(reversed(self.graph.nodes)), None)
        return _Mark(last, len(self.rewrites), len(self.kept), len(self.inlined), len(self.eager_calls))

    def nodes_since(self, mark: _Mark) -> list[torch.fx.Node]:
        """The nodes added since ``mark``, in graph order."""
        added: list[torch.fx.Node] = []
        for node in reversed(self.graph.nodes):
            if node is mark.node:
                break
            added.append(node)
        return added[::-1]

    def recorded_since(self, mark: _Mark) -> bool:
        """Whether the record gained an entry since ``mark``."""
        now = (len(self.rewrites), len(self.kept), len(self.inlined), len(self.eager_calls))
        return now != (mark.rewrites, mark.kept, mark.inlined, mark.eager_calls)

    def rollback(self, mark: _Mark) -> None:
        """Erase every node and record entry added since ``mark``."""
        for node in reversed(self.nodes_since(mark)):
            self.graph.erase_node(node)
        del self.rewrites[mark.rewrites :]
        del self.kept[mark.kept :]
        del self.inlined[mark.inlined :]
        del self.eager_calls[mark.eager_calls :]

    # -- hooks of torch.fx.Tracer ------------------------------------------------------------

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        # torch.fx searches named_parameters() on every access (quadratic in model size) and
        # caches proxies across a rollback; look the name up by identity instead.
        if isinstance(attr_val, torch.Tensor):
            name = self._tensor_names.get(id(attr_val))
            if name is not None:
                return self.create_proxy("get_attr", name, (), {})
        return attr_val

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            name = self._tensor_names.get(id(a))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
            if a.grad_fn is not None or self._provenance.derived(a):
                # Computed eagerly from a parameter that torch.fx did not see being read (say,
                # through module._parameters): as a constant it would freeze the value and cut
                # the gradient, the very bug of plain symbolic_trace on patched modules.
                scope = self._scopes[-1] if self._scopes else None
                place = where(scope.path, scope.module) if scope else "the model"
                how = f"a {a.grad_fn.name()} result" if a.grad_fn is not None else "computed while tracing"
                raise UnsupportedPatchError(
                    f"{place}: a tensor computed from parameters or buffers outside torch.fx's "
                    f"view ({how}; does a property or forward read module._parameters directly?) "
                    "would be frozen into the graph as a constant; read tensors as attributes, or "
                    "apply the transform with imitation_runtime.imitate"
                )
        return super().create_arg(a)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        # torch.fx's own call_module keeps a scope and a module stack, copied into every node's
        # meta; fxpass keeps neither (they are not part of a GraphModule's semantics).
        if id(m) not in self.tree.shells or id(m) in self.tree.leaves:  # a leaf: one call_module node, or inlined
            path = self.path_of_module(m)
            if self.inline_activations and _inlinable(m):
                mark = self.mark()
                try:
                    out = m.forward(*args, **kwargs)
                except Exception:  # noqa: BLE001 - say, Softmax(dim=None) branches on the rank
                    self.rollback(mark)
                else:
                    self.inlined.append(path)
                    return out
            return self.create_proxy("call_module", path, args, kwargs)
        path = self.tree.paths[id(m)]
        scope = _Scope(m, path)
        mark = self.mark()
        failure: Exception | None = None
        self._scopes.append(scope)
        try:
            out = forward(*args, **kwargs)  # a shell is traced through (hooks included)
        except _CachedInsideTrace as error:
            if error.module is not m:
                raise  # a module around m entered the cached() block: that one is kept
            failure = error
        except FxpassError:
            raise
        except Exception as error:  # noqa: BLE001 - an untraceable forward is kept as a call
            failure = error
        finally:
            self._scopes.pop()
        if failure is None and not scope.reads_training and not scope.mode_writes:
            return out
        self.rollback(mark)
        if isinstance(failure, _CachedInsideTrace):
            reason = failure.reason or str(failure)
        elif failure is not None:
            reason = f"its forward cannot be traced ({type(failure).__name__}: {failure})"
        elif scope.mode_writes:  # (a graph would not replay the write: run the forward as it is)
            reason = f"its forward sets the mode of {self._named(scope.mode_writes)}"
        else:
            reason = "its forward reads self.training"
        return self._keep_call(m, path, args, kwargs, reason)

    # -- patched attributes ------------------------------------------------------------------

    def note_training_read(self, module: nn.Module) -> None:
        """Called by a shell's ``training`` property."""
        if self._scopes:
            self._scopes[-1].mode_reads[id(module)] = module

    def note_training_write(self, module: nn.Module) -> None:
        """Called by a shell's ``training`` setter (``module.train()``, ``module.eval()``)."""
        if self._scopes:
            self._scopes[-1].mode_writes[id(module)] = module

    def _named(self, modules: dict[int, nn.Module]) -> str:
        """The paths of ``modules`` for a message."""
        return listing([self.tree.paths.get(key, type(m).__name__) or "the model" for key, m in modules.items()])

    def read_patched(self, shell: nn.Module, attribute: str) -> Any:
        """Emit the nodes computing ``shell.<attribute>`` as the runtime patch would."""
        patched = self.tree.patched[id(shell)]
        if not patched.has_attribute(attribute):
            raise AttributeError(f"'{patched.stack.base.__name__}' object has no attribute '{attribute}'")
        return self._value(patched, attribute, len(patched.stack.layers) - 1)

    def _value(self, patched: Patched, attribute: str, top: int) -> Any:
        layers = patched.stack.layers
        index = next((i for i in range(top, -1, -1) if attribute in layers[i].attributes), None)
        if index is None:
            return self._raw(patched, attribute)
        layer = layers[index]
        transform = layer.transform_attribute(attribute)
        if layer.kind == "parametrize":
            self._check_cache_level(patched)
            mark = self.mark()
            target = join_path(patched.path, transform)
            plist = patched.shell.get_submodule(transform)
            originals = [
                self.create_proxy("get_attr", join_path(target, name), (), {})
                for name in (*plist._parameters, *plist._buffers)
                if name.startswith("original")
            ]
            module = self.create_proxy("get_attr", target, (), {})
            out = self.create_proxy("call_function", parametrized, (module, *originals), {})
            self._record(patched, attribute, transform, "module", mark)
            return out
        previous = self._value(patched, attribute, index - 1)
        if previous is None and layer.kind == "imitate":
            return None  # imitation_runtime never calls a transform on a missing bias
        mark = self.mark()
        out, how = self._emitter.emit(patched.path, transform, patched.transforms[transform], previous)
        self._record(patched, attribute, transform, how, mark)
        return out

    def _check_cache_level(self, patched: Patched) -> None:
        """Refuse to trace a read inside a ``parametrize.cached()`` block that a forward being
        traced entered (see :class:`_CachedInsideTrace`)."""
        level = _cache_level()
        entered = next((scope for scope in reversed(self._scopes) if scope.cache_level < level), None)
        if entered is None:
            return
        reason = "its forward enters parametrize.cached()"
        raise _CachedInsideTrace(
            f"{where(entered.path, entered.module)}: {reason} and reads the parametrized "
            f"{patched.path or 'model'} inside it; a graph would evaluate the parametrization at every "
            "read; compile with scope='module', or enter parametrize.cached() around the call of the "
            "model instead",
            entered.module,
        ).because(reason)

    def _record(self, patched: Patched, attribute: str, transform: str, how: str, mark: _Mark) -> None:
        nodes = tuple(node.name for node in self.nodes_since(mark))
        thing = patched.transforms.get(transform)
        if thing is None:  # a parametrization
            thing = patched.shell.get_submodule(transform)
        self.rewrites.append(
            Rewrite(patched.path, attribute, transform, how, describe(thing), nodes)  # type: ignore[arg-type]
        )

    def _raw(self, patched: Patched, attribute: str) -> Any:
        shell = patched.shell
        for cls in patched.stack.base.__mro__:
            if attribute in cls.__dict__:
                descriptor = inspect.getattr_static(patched.stack.base, attribute)
                return descriptor.__get__(shell, patched.stack.base)
        tensor = shell._parameters.get(attribute, shell._buffers.get(attribute))
        if tensor is None:
            return None
        return self.proxy(self.create_node("get_attr", join_path(patched.path, attribute), (), {}))

    # -- modules kept as calls ---------------------------------------------------------------

    def _keep_call(self, m: nn.Module, path: str, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str) -> Any:
        """One ``call_module`` of ``m``; the patched modules inside it read as at run time.

        The runtime evaluates a transform at each read of the tensor, inside the forward: how
        often, and in which order with other reads, only running that forward tells. So ``m``
        gets an :class:`~fxpass.reading.EagerForward` and its patched modules their read plans
        (applied after tracing, see :meth:`finish`): each read inside the call is evaluated then,
        with the transform's own state, whatever the number of reads.
        """
        # Patched modules inside m (a module may sit elsewhere first), named relative to m.
        inside = [
            (relative, self.tree.patched[id(module)])
            for relative, module in m.named_modules()
            if id(module) in self.tree.patched
        ]
        if inside and not path:
            raise UntraceableModelError(f"the model itself cannot be kept as a call: {reason}").because(reason)
        reads = tuple(
            join_path(relative, attribute)
            for relative, patched in inside
            for attribute in patched.stack.attributes
            if patched.has_attribute(attribute)
        )
        if inside:
            self.eager_calls.append((m, tuple(patched for _, patched in inside)))
        self.kept.append(KeptCall(path, reason, reads))
        return self.create_proxy("call_module", path, args, kwargs)

    def finish(self) -> None:
        """After tracing, finish the tree from the record: each transform function emitted as
        opaque becomes an :class:`~fxpass.ops.Opaque` module at its path (and leaves the shell's
        attributes, where module scope keeps the functions for eager reads and where it would
        shadow the module); each module kept as a call, with patched modules inside, gets an
        :class:`~fxpass.reading.EagerForward`, and those modules their read plans. Nothing of this
        happens while tracing, so what a rollback erased leaves no trace in the tree."""
        by_path = {patched.path: patched for patched in self.tree.patched.values()}
        for rewrite in self.rewrites:
            if rewrite.how == "opaque":
                patched = by_path[rewrite.module]
                namespace = patched.shell.__dict__
                if not isinstance(namespace["_modules"].get(rewrite.transform), Opaque):  # (read twice)
                    namespace["_modules"][rewrite.transform] = Opaque(patched.transforms[rewrite.transform])
                namespace.pop(rewrite.transform, None)
        done: set[int] = set()
        for module, inside in self.eager_calls:
            for patched in inside:
                keep_reads(patched.shell, patched.stack, patched.transforms)
            if id(module) not in done:
                done.add(id(module))
                install_eager_forward(module)
