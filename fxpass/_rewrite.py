"""``fxpass.compile``: a class-patched model -> a plain, pickleable GraphModule."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from typing import Any, Callable, Literal, Union

import torch.fx
import torch.nn as nn

from fxpass._codegen import ENTRY_ATTRIBUTE, GRAPH_MODE_ATTRIBUTE, MODES_ATTRIBUTE
from fxpass._common import join_path
from fxpass._patches import find_patch_stack
from fxpass._shells import build_shells, has_patch, remap_references, shell_of
from fxpass._tracer import PatchTracer
from fxpass.compiled import (
    CODE_STYLES,
    INSTANCE_ATTRIBUTES,
    PRESERVED,
    TREE_ATTRIBUTES,
    CompiledGraphModule,
    ModeGraphs,
    use_fx_code,
)
from fxpass.errors import EntryGuardError, InvalidModelError, ReadsModeError, UntraceableModelError
from fxpass.reading import install_eager_forward
from fxpass.record import (
    RECORD_ATTRIBUTE,
    SCOPE_ATTRIBUTE,
    CompileRecord,
    EagerModule,
    ScopeRecord,
    find_record,
)
from fxpass.saved import LoadTracer

__all__ = ["compile", "records"]

_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def compile(  # noqa: A001 - the library's verb, like torch.compile
    model: nn.Module,
    *,
    concrete_args: dict[str, Any] | None = None,
    scope: Literal["model", "module", "auto"] = "model",
    inline_activations: bool = False,
    boundaries: Boundaries = None,
    code: Literal["walks", "fx"] = "walks",
) -> nn.Module:
    """Rewrite a class-patched model into a plain ``GraphModule`` with the same semantics.

    Every read of a patched attribute (``imitate``, qsparse's ``imitate``, torch parametrize)
    becomes a ``get_attr`` of the raw tensor followed by the transforms as graph nodes. The result
    holds no patched class, so it pickles, saves whole with ``torch.save`` and travels to worker
    processes; its outputs, gradients, ``state_dict()`` (raw values, same keys in the same order)
    and ``named_parameters()`` equal the runtime model's, in train and in eval mode.

    ``model`` is never modified. Like ``torch.fx.symbolic_trace``, the result shares the model's
    parameter and buffer tensors and its transform modules (its modules are copies sharing those
    tensors): deep-copy the model first if the two must train independently.

    With ``scope="module"``, for models whose own forward torch.fx cannot trace (data-dependent
    control flow, most transformers models), the result is instead a copy of the model in which
    each patched module, or the smallest enclosing module that torch.fx can trace, is replaced by
    its own compiled GraphModule; other modules are the model's own. The copy pickles whole and
    keeps the model's ``state_dict()`` keys; :func:`records` lists what each part rewrote.

    Args:
        model: the model, patched anywhere in its tree (or not at all).
        concrete_args: arguments of ``model.forward`` to fix while tracing, as in
            ``torch.fx.symbolic_trace`` (model scope only).
        scope: ``"model"`` for one GraphModule of the whole model, ``"module"`` as above, or
            ``"auto"``: model scope where torch.fx traces the model's own forward, module scope
            otherwise (the record says which, and why: ``CompileRecord.scope_reason``,
            ``ScopeRecord.reason``).
        inline_activations: emit the activation modules of :data:`fxpass.ACTIVATIONS` (ReLU,
            GELU, Tanh, ... exact classes, without hooks) as their ``torch.nn.functional`` call
            instead of a ``call_module``: the same values, without a module call per activation
            at run time (the fastest choice for overhead-bound models). The modules stay in the
            tree; the graph no longer calls them, so hooks registered on them later do not run.
        boundaries: module classes (a class or a tuple of them), or a callable
            ``(path, module) -> bool``. Each matching module (the outermost match wins) is
            compiled into a GraphModule of its own, in place at its path, which the enclosing
            graph calls (``call_module``): its own ``forward`` runs at every call, so what users
            attach to a block works (``fully_shard`` per block, activation checkpointing, forward
            hooks, ``torch.compile`` of each block). It answers ``isinstance`` like the module it
            replaces and keeps its plain attributes. A matching module torch.fx cannot trace runs
            eagerly, as in module scope. The default, None, gives one flat graph.
        code: the generated forward of every compiled graph: ``"walks"`` reaches tensors and
            modules through the tree's dictionaries (:mod:`fxpass._codegen`, faster on models of
            small layers), ``"fx"`` is torch.fx's own code (attribute lookups). Both compute the
            same outputs; ``"fx"`` sees a class patch applied to a compiled module after the
            compile without a ``recompile()``.

    Returns:
        The compiled model (a GraphModule in model scope); :func:`fxpass.record_of` tells what
        was rewritten.

    Raises:
        InvalidModelError: ``model`` is not an ``nn.Module``.
        UntraceableModelError: torch.fx cannot trace the model's own forward, or it reads
            ``self.training``.
        UnsupportedPatchError: a patch fxpass cannot reproduce exactly.

    Example:
        >>> import pickle, torch, torch.nn as nn, fxpass
        >>> from imitation_runtime import imitate
        >>> model = nn.Sequential(imitate(nn.Linear(3, 2), "round", torch.round), nn.ReLU())
        >>> gm = fxpass.compile(model)
        >>> x = torch.randn(4, 3)
        >>> torch.equal(gm(x), model(x)), list(gm.state_dict()) == list(model.state_dict())
        (True, True)
        >>> torch.equal(pickle.loads(pickle.dumps(gm))(x), model(x))
        True
    """
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"fxpass.compile expects an nn.Module, got {type(model).__name__}; pass the model "
            "itself (not its state_dict or a function)"
        )
    if code not in CODE_STYLES:
        raise InvalidModelError(f"code must be {' or '.join(map(repr, CODE_STYLES))}, got {code!r}")
    compiled = _compile(model, concrete_args, scope, inline_activations, _matcher(boundaries))
    return use_fx_code(compiled) if code == "fx" else compiled


def _compile(
    model: nn.Module,
    concrete_args: dict[str, Any] | None,
    scope: str,
    inline_activations: bool,
    match: Callable[[str, nn.Module], bool] | None,
) -> nn.Module:
    if scope == "auto":
        try:
            result = _compile_at_model_scope(model, concrete_args, inline_activations, match)
        except UntraceableModelError as error:
            if concrete_args is not None:
                raise
            why = f"scope='auto': module scope, since {_reason(error)}"
            return _ModuleScope(inline_activations, match, why).compile(model)
        record = result.__dict__[RECORD_ATTRIBUTE]
        result.__dict__[RECORD_ATTRIBUTE] = result.meta[PRESERVED][RECORD_ATTRIBUTE] = dataclasses.replace(
            record, scope_reason="scope='auto': model scope, since torch.fx traces the model's own forward"
        )
        return result
    if scope == "module":
        if concrete_args is not None:
            raise InvalidModelError("concrete_args applies to scope='model' only")
        return _ModuleScope(inline_activations, match).compile(model)
    if scope != "model":
        raise InvalidModelError(f"scope must be 'auto', 'model' or 'module', got {scope!r}")
    return _compile_at_model_scope(model, concrete_args, inline_activations, match)


def _compile_at_model_scope(
    model: nn.Module,
    concrete_args: dict[str, Any] | None,
    inline_activations: bool,
    match: Callable[[str, nn.Module], bool] | None,
) -> CompiledGraphModule:
    if match is None:
        return _compile_model(model, concrete_args, inline_activations)
    return _ModuleScope(inline_activations, match).compile_model(model, concrete_args)  # type: ignore[return-value]


Boundaries = Union[type, tuple[type, ...], Callable[[str, nn.Module], bool], None]


def _matcher(boundaries: Boundaries) -> Callable[[str, nn.Module], bool] | None:
    """``boundaries`` as a predicate ``(path, module) -> bool``."""
    if boundaries is None:
        return None
    classes = (boundaries,) if isinstance(boundaries, type) else boundaries
    if isinstance(classes, (tuple, list)) and classes and all(isinstance(c, type) for c in classes):
        chosen = tuple(classes)
        return lambda path, module: isinstance(module, chosen)
    if callable(boundaries) and not isinstance(boundaries, (tuple, list)):
        return boundaries  # type: ignore[return-value]
    raise InvalidModelError(
        f"boundaries must be a module class, a tuple of them, or a callable (path, module) -> bool; "
        f"got {boundaries!r}"
    )


def _compile_model(
    model: nn.Module,
    concrete_args: dict[str, Any] | None,
    inline_activations: bool = False,
    *,
    part: _Part | None = None,
    substitutes: dict[int, nn.Module] | None = None,
    boundaries: tuple[str, ...] = (),
) -> CompiledGraphModule:
    tree = build_shells(model, keep_transforms=part is not None, substitutes=substitutes)
    tracer = PatchTracer(tree, inline_activations=inline_activations)
    if part is not None and part.specialized:
        concrete_args = dict.fromkeys(part.specialized)
    try:
        graph = tracer.trace_tree(concrete_args)
    except ReadsModeError:
        if part is not None:
            raise  # (a part whose forward reads its mode runs eagerly: exact, and live)
        return _compile_per_mode(model, tree, concrete_args, inline_activations, boundaries)
    record = _finish(tracer, graph, specialized=part.specialized if part is not None else (), boundaries=boundaries)
    preserved: dict[str, Any] = {RECORD_ATTRIBUTE: record}
    if part is None:
        return CompiledGraphModule.build(
            tree.root, graph, class_name=type(model).__name__, training=model.training, preserved=preserved
        )
    preserved[ENTRY_ATTRIBUTE] = _entry(graph, part.specialized)
    preserved[INSTANCE_ATTRIBUTES] = _instance_attributes(tree.root)
    try:
        gm = CompiledGraphModule.build(
            tree.root, graph, class_name=part.base.__name__, training=model.training,
            preserved=preserved, base=part.base,
        )  # fmt: skip
    except (TypeError, EntryGuardError) as error:  # no part class, or no place for the guard
        raise UntraceableModelError(f"cannot stand in for {part.base.__name__}: {error}") from error
    part.copies.update(tree.copies)
    part.copies[id(tree.root)] = part.copies[id(model)] = gm
    return gm


def _finish(tracer: PatchTracer, graph: torch.fx.Graph, **record: Any) -> CompileRecord:
    """After a trace: the tracer's changes to the tree, the graph's load-time tracer, the record."""
    tracer.finish()
    # A pickled GraphModule is re-traced on load with a subclass of the tracer recorded here;
    # ours needs the shell tree, so name one that only looks tensors up fast.
    graph._tracer_cls = LoadTracer
    graph._tracer_extras = None
    return CompileRecord(
        patched_modules=tuple(p.path for p in tracer.tree.patched.values()),
        rewrites=tuple(tracer.rewrites),
        kept_calls=tuple(tracer.kept),
        inlined_activations=tuple(tracer.inlined),
        **record,
    )


def _compile_per_mode(
    model: nn.Module,
    tree: Any,
    concrete_args: dict[str, Any] | None,
    inline_activations: bool,
    boundaries: tuple[str, ...],
) -> CompiledGraphModule:
    """A model whose own forward reads ``self.training``: one graph per mode over one tree (see
    :class:`~fxpass.compiled.ModeGraphs`); the compiled model starts with the graph of the model's mode."""
    built: dict[bool, tuple[torch.fx.Graph, CompileRecord, tuple[str, ...]]] = {}
    for mode in (True, False):
        tracer = PatchTracer(tree, inline_activations=inline_activations)
        graph = tracer.trace_tree(concrete_args, mode=mode)
        record = _finish(tracer, graph, boundaries=boundaries, modes=("train", "eval"))
        built[mode] = (graph, record, tracer.mode_reads)
    name = type(model).__name__
    graphs = {
        mode: CompiledGraphModule.build(
            tree.root, graph, class_name=name, training=mode, preserved={RECORD_ATTRIBUTE: record}
        )
        for mode, (graph, record, _) in built.items()
    }
    reads = tuple(dict.fromkeys(built[True][2] + built[False][2]))
    start = bool(model.training)
    graph, record, _ = built[start]
    gm = CompiledGraphModule.build(
        tree.root, copy.deepcopy(graph), class_name=name, training=start,
        preserved={
            RECORD_ATTRIBUTE: record,
            INSTANCE_ATTRIBUTES: {MODES_ATTRIBUTE: ModeGraphs(graphs[True], graphs[False], reads), GRAPH_MODE_ATTRIBUTE: start},
        },
    )  # fmt: skip
    for other in graphs.values():
        other.share_tree(gm)
    return gm


# -- module scope ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Part:
    """How to compile one module as a part of a module-scope compile."""

    base: type  # the class of the module it replaces
    specialized: tuple[str, ...]  # arguments traced as None
    copies: dict[int, nn.Module]  # filled in: id(module of the input) -> its copy in the part


def _none_defaults(cls: type) -> tuple[str, ...]:
    """The arguments of ``cls.forward`` that default to None."""
    try:
        parameters = inspect.signature(cls.forward).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p.name for p in parameters if p.kind in kinds and p.default is None)


def _entry(graph: torch.fx.Graph, specialized: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    """Name the placeholders torch.fx traced as None as their arguments again, drop torch.fx's
    assertions on them (the entry guard checks them), and say what the guard checks."""
    assert_is_none = getattr(torch.fx._symbolic_trace, "_assert_is_none", None)
    entry: list[tuple[str, bool]] = []
    for node in list(graph.nodes):
        if node.op != "placeholder" or str(node.target).startswith("*"):
            continue
        name = str(node.target)
        traced_as_none = name.endswith("_1") and name[:-2] in specialized
        if traced_as_none:
            node.target = name = name[:-2]
            for user in list(node.users):
                if user.op == "call_function" and user.target is assert_is_none:
                    graph.erase_node(user)
        entry.append((name, traced_as_none))
    return tuple(entry)


def _instance_attributes(shell: nn.Module) -> dict[str, Any]:
    """What a compiled part keeps of the module it replaces: every instance attribute but its
    tree and mode (its plain attributes, hooks, transforms and read plan)."""
    return {
        name: value
        for name, value in shell.__dict__.items()
        if name not in TREE_ATTRIBUTES and name not in _GRAPH_MODULE_ATTRIBUTES and name != "training"
    }


# The instance attributes a GraphModule sets beyond nn.Module's own.
_GRAPH_MODULE_ATTRIBUTES = frozenset(
    set(torch.fx.GraphModule(nn.Module(), torch.fx.Graph()).__dict__) - set(nn.Module().__dict__)
) | {"meta", "_graph", "_code", "_lineno_map", "_prologue_start"}


def _reason(error: Exception) -> str:
    """Why a module is not a compiled part, in a few words."""
    return getattr(error, "reason", None) or str(error)


class _ModuleScope:
    """One module-scope compile: the largest traceable subtrees holding patched modules become
    compiled parts; the modules around them are copied and run eagerly, reading patched tensors
    as the runtime does (:mod:`fxpass.reading`)."""

    def __init__(
        self, inline_activations: bool, match: Callable[[str, nn.Module], bool] | None = None, why: str = ""
    ) -> None:
        self.inline_activations = inline_activations
        self.why = why  # (scope='auto': why module scope)
        #: which modules are boundaries (see fxpass.compile), or None
        self.match = match
        self.boundaries: list[str] = []
        self.memo: dict[int, nn.Module] = {}
        self.copies: dict[int, nn.Module] = {}
        self.parts: list[str] = []
        self.eager: list[EagerModule] = []
        self.called: list[nn.Module] = []  # the eager copies, which get an EagerForward

    def compile(self, model: nn.Module) -> nn.Module:
        result = self.visit(model, "")
        self.finish(result)
        if result is not model and not isinstance(result, torch.fx.GraphModule):
            result.__dict__[SCOPE_ATTRIBUTE] = ScopeRecord(tuple(self.parts), tuple(self.eager), self.why)
        return result

    def compile_model(self, model: nn.Module, concrete_args: dict[str, Any] | None) -> nn.Module:
        """Model scope with boundaries: one graph of the model, each boundary below it a call of
        its own compiled module."""
        if self.match is not None and self.match("", model):
            if concrete_args is not None:
                raise InvalidModelError("concrete_args cannot apply: the model itself is a boundary")
            result = self.boundary(model, "")
        else:
            substitutes = self.boundaries_below(model, "")
            result = _compile_model(
                model, concrete_args, self.inline_activations,
                substitutes=substitutes, boundaries=tuple(self.boundaries),
            )  # fmt: skip
        self.finish(result)
        return result

    def finish(self, result: nn.Module) -> None:
        # (only the copies: modules shared with the input are the input's own)
        copied = {id(copy) for key, copy in self.copies.items() if key != id(copy)}
        remap_references((m for m in result.modules() if id(m) in copied), self.copies)
        for module in self.called:
            install_eager_forward(module)

    def visit(self, module: nn.Module, path: str) -> nn.Module:
        key = id(module)
        if key in self.memo:
            return self.memo[key]
        if self.match is not None and self.match(path, module):
            return self.boundary(module, path)
        if not has_patch(module) and not self.boundaries_below(module, path):
            self.memo[key] = module
            return module
        return self.compiled(module, path, self.boundaries_below(module, path))

    def boundary(self, module: nn.Module, path: str) -> nn.Module:
        """A boundary: its own compiled part (whatever is patched inside), or where torch.fx cannot
        trace it an eager copy whose children are compiled as in module scope."""
        if id(module) in self.memo:
            return self.memo[id(module)]
        self.boundaries.append(path)
        return self.compiled(module, path, None)

    def compiled(self, module: nn.Module, path: str, substitutes: dict[int, nn.Module] | None) -> nn.Module:
        """``module`` as a compiled part, or where torch.fx cannot trace it an eager copy."""
        stack = find_patch_stack(module, path)
        base = stack.base if stack is not None else type(module)
        try:
            result: nn.Module = self.part(module, base, path, substitutes)
        except UntraceableModelError as error:
            result = self.eager_copy(module, path, stack, error)
        else:
            self.parts.append(path)
        self.memo[id(module)] = result
        return result

    def boundaries_below(self, module: nn.Module, path: str) -> dict[int, nn.Module]:
        """The outermost boundaries strictly below ``module``, compiled: id(module) -> part."""
        if self.match is None:
            return {}
        found: dict[int, nn.Module] = {}
        seen: set[int] = set()

        def walk(current: nn.Module, prefix: str) -> None:
            for name, child in current._modules.items():
                if child is None or id(child) in seen:
                    continue
                seen.add(id(child))
                child_path = join_path(prefix, name)
                if self.match(child_path, child):  # type: ignore[misc]
                    found[id(child)] = self.boundary(child, child_path)
                else:
                    walk(child, child_path)

        walk(module, path)
        return found

    def part(
        self, module: nn.Module, base: type, path: str, substitutes: dict[int, nn.Module] | None = None
    ) -> CompiledGraphModule:
        # A part is traced for the call its parent most likely makes, without the arguments that
        # default to None; the model itself is called by its user with its inputs, which
        # transformers models declare with None defaults too.
        specialized = _none_defaults(base) if path else ()
        attempts = (specialized, ()) if specialized else ((),)
        for index, names in enumerate(attempts):
            part = _Part(base, names, {})
            try:
                gm = _compile_model(module, None, self.inline_activations, part=part, substitutes=substitutes)
            except UntraceableModelError:
                if index == len(attempts) - 1:
                    raise
                continue
            self.copies.update(part.copies)
            return gm
        raise AssertionError("unreachable")

    def eager_copy(self, module: nn.Module, path: str, stack: Any, error: Exception) -> nn.Module:
        copied = shell_of(module, stack, path, keep_transforms=True)[0]
        if not isinstance(copied, _CONTAINERS):
            self.eager.append(EagerModule(path, _reason(error), stack is not None))
        self.memo[id(module)] = self.copies[id(module)] = copied
        children = copied._modules
        for name, child in children.items():
            if child is not None and not (stack is not None and name in stack.transform_attributes()):
                children[name] = self.visit(child, join_path(path, name))
        if not isinstance(copied, _CONTAINERS):  # (containers are never called)
            self.called.append(copied)
        return copied


def records(model: nn.Module) -> dict[str, CompileRecord]:
    """The compile record of every compiled part of ``model``, by module path.

    For a model-scope compile this is ``{"": record}``; for ``scope="module"`` one entry per
    compiled submodule.

    Example:
        >>> import torch.nn as nn, fxpass
        >>> from imitation_runtime import imitate
        >>> model = nn.Sequential(imitate(nn.Linear(2, 2), "halve", lambda w: w / 2))
        >>> list(fxpass.records(fxpass.compile(model, scope="module")))
        ['']
    """
    found = ((name, find_record(m)) for name, m in model.named_modules())
    return {name: record for name, record in found if record is not None}
