"""``fxpass.compile``: a class-patched model -> a plain, pickleable GraphModule."""

from __future__ import annotations

from typing import Any, Literal

import torch.fx
import torch.nn as nn

from fxpass.errors import InvalidModelError, UntraceableModelError
from fxpass.ops import CompiledGraphModule, LoadTracer
from fxpass.patches import find_patch_stack, join_path
from fxpass.record import RECORD_ATTRIBUTE, CompileRecord, find_record
from fxpass.shells import build_shells, copy_module, has_patch, is_default_leaf
from fxpass.tracer import PatchTracer

__all__ = ["compile", "records"]

_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def compile(  # noqa: A001 - the library's verb, like torch.compile
    model: nn.Module,
    *,
    concrete_args: dict[str, Any] | None = None,
    scope: Literal["model", "module"] = "model",
    inline_activations: bool = False,
) -> nn.Module:
    """Rewrite a class-patched model into a plain ``GraphModule`` with the same semantics.

    Every read of a patched attribute (``imitate``, qsparse's ``imitate``, torch parametrize)
    becomes a ``get_attr`` of the raw tensor followed by the transforms as graph nodes. The result
    holds no patched class, so it pickles, saves whole with ``torch.save`` and travels to worker
    processes; its outputs, gradients, ``state_dict()`` (raw values, same keys in the same order)
    and ``named_parameters()`` equal the runtime model's, in train and in eval mode.

    ``model`` is never modified. Like ``torch.fx.symbolic_trace``, the result shares the model's
    parameter and buffer tensors and its unpatched leaf and transform modules: deep-copy the model
    first if the two must train independently.

    With ``scope="module"``, for models whose own forward torch.fx cannot trace (data-dependent
    control flow, most transformers models), the result is instead a copy of the model in which
    each patched module, or the smallest enclosing module that torch.fx can trace, is replaced by
    its own compiled GraphModule; other modules are the model's own. The copy pickles whole and
    keeps the model's ``state_dict()`` keys; :func:`records` lists what each part rewrote.

    Args:
        model: the model, patched anywhere in its tree (or not at all).
        concrete_args: arguments of ``model.forward`` to fix while tracing, as in
            ``torch.fx.symbolic_trace`` (model scope only).
        scope: ``"model"`` for one GraphModule of the whole model, ``"module"`` as above.
        inline_activations: emit the activation modules of :data:`fxpass.ACTIVATIONS` (ReLU,
            GELU, Tanh, ... exact classes, without hooks) as their ``torch.nn.functional`` call
            instead of a ``call_module``: the same values, without a module call per activation
            at run time (the fastest choice for overhead-bound models). The modules stay in the
            tree; the graph no longer calls them, so hooks registered on them later do not run.

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
    if scope == "module":
        if concrete_args is not None:
            raise InvalidModelError("concrete_args applies to scope='model' only")
        return _compile_modules(model, "", {}, inline_activations)
    if scope != "model":
        raise InvalidModelError(f"scope must be 'model' or 'module', got {scope!r}")
    return _compile_model(model, concrete_args, inline_activations)


def _compile_model(
    model: nn.Module, concrete_args: dict[str, Any] | None, inline_activations: bool = False
) -> torch.fx.GraphModule:
    tree = build_shells(model)
    tracer = PatchTracer(tree, inline_activations=inline_activations)
    graph = tracer.trace_tree(concrete_args)
    # A pickled GraphModule is re-traced on load with a subclass of the tracer recorded here;
    # ours needs the shell tree, so name one that only looks tensors up fast.
    graph._tracer_cls = LoadTracer
    graph._tracer_extras = None
    gm = CompiledGraphModule.build(
        tree.root,
        graph,
        class_name=type(model).__name__,
        training=model.training,
        preserved={
            RECORD_ATTRIBUTE: CompileRecord(
                patched_modules=tuple(p.path for p in tree.patched.values()),
                rewrites=tuple(tracer.rewrites),
                kept_calls=tuple(tracer.kept),
                inlined_activations=tuple(tracer.inlined),
            )
        },
    )
    return gm


def _compile_modules(
    module: nn.Module, path: str, memo: dict[int, nn.Module], inline_activations: bool
) -> nn.Module:
    """Module scope: compile the largest traceable subtrees that hold patched modules."""
    key = id(module)
    if key in memo:
        return memo[key]
    if not has_patch(module):
        memo[key] = module
        return module
    try:
        result: nn.Module = _compile_model(module, None, inline_activations)
    except UntraceableModelError as error:
        where = f"{path} ({type(module).__name__})" if path else f"the model ({type(module).__name__})"
        # A torch.nn module with a forward (MultiheadAttention) may read its children's tensors
        # itself: compiling the children alone would hand it raw tensors.
        reads_children = is_default_leaf(type(module)) and not isinstance(module, _CONTAINERS)
        if not module._modules or reads_children or find_patch_stack(module):
            raise UntraceableModelError(
                f"{where} holds patched tensors but cannot be compiled on its own ({error}); "
                "wrap it in a module whose forward torch.fx can trace"
            ) from error
        result = copy_module(module)
        children = result._modules
        for name, child in children.items():
            if child is not None:
                children[name] = _compile_modules(child, join_path(path, name), memo, inline_activations)
    memo[key] = result
    return result


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
