"""``fxpass.compile``: a class-patched model -> a plain, pickleable GraphModule."""

from __future__ import annotations

from typing import Any

import torch.fx
import torch.nn as nn

from fxpass.errors import InvalidModelError
from fxpass.record import META_KEY, CompileRecord
from fxpass.shells import build_shells
from fxpass.tracer import PatchTracer

__all__ = ["compile"]


def compile(  # noqa: A001 - the library's verb, like torch.compile
    model: nn.Module, *, concrete_args: dict[str, Any] | None = None
) -> torch.fx.GraphModule:
    """Rewrite a class-patched model into a plain ``GraphModule`` with the same semantics.

    Every read of a patched attribute (``imitate``, qsparse's ``imitate``, torch parametrize)
    becomes a ``get_attr`` of the raw tensor followed by the transforms as graph nodes. The result
    holds no patched class, so it pickles, ``torch.save``\\ s whole and travels to worker
    processes; its outputs, gradients, ``state_dict()`` (raw values, same keys in the same order)
    and ``named_parameters()`` equal the runtime model's, in train and in eval mode.

    ``model`` is never modified. Like ``torch.fx.symbolic_trace``, the result shares the model's
    parameter and buffer tensors and its unpatched leaf and transform modules: deep-copy the model
    first if the two must train independently.

    Args:
        model: the model, patched anywhere in its tree (or not at all).
        concrete_args: arguments of ``model.forward`` to fix while tracing, as in
            ``torch.fx.symbolic_trace``.

    Returns:
        The compiled model; :func:`fxpass.record_of` tells what was rewritten.

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
    tree = build_shells(model)
    tracer = PatchTracer(tree)
    graph = tracer.trace_tree(concrete_args)
    # A pickled GraphModule is re-traced on load with a subclass of the tracer recorded here;
    # ours needs the shell tree, so let torch.fx use its own.
    graph._tracer_cls = None
    graph._tracer_extras = None
    root = tree.root
    gm = torch.fx.GraphModule(root, graph, class_name=type(model).__name__)
    # GraphModule copies only what the graph references, creating plain containers in graph order;
    # the compiled model must keep the model's whole tree, in its order, so its state_dict() and
    # named_parameters() match the runtime model's.
    namespace = gm.__dict__
    namespace["_parameters"] = dict(root._parameters)
    namespace["_buffers"] = dict(root._buffers)
    namespace["_non_persistent_buffers_set"] = set(root._non_persistent_buffers_set)
    namespace["_modules"] = dict(root._modules)
    gm.training = model.training
    gm.graph.lint()
    gm.meta[META_KEY] = CompileRecord(
        patched_modules=tuple(p.path for p in tree.patched.values()),
        rewrites=tuple(tracer.rewrites),
        kept_calls=tuple(tracer.kept),
    )
    return gm
