"""``fxpass.freeze``: an eval-mode inference graph with every transform computed once."""

from __future__ import annotations

import copy

import torch
import torch.fx
import torch.nn as nn

from fxpass.errors import FreezeError, InvalidModelError
from fxpass.ops import CompiledGraphModule, call_with_overrides
from fxpass.record import Rewrite, find_record, record_of
from fxpass.rewrite import compile

__all__ = ["freeze"]

#: Attribute of a frozen GraphModule listing the buffers that hold frozen transform outputs.
FROZEN_ATTRIBUTE = "_fxpass_frozen"


def _compiled_copy(model: nn.Module) -> torch.fx.GraphModule:
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"fxpass.freeze expects an nn.Module, got {type(model).__name__}; pass the "
            "runtime-patched model or its fxpass.compile result"
        )
    if find_record(model) is not None:
        return copy.deepcopy(model)
    return compile(copy.deepcopy(model))


def _buffer_name(gm: nn.Module, rewrite: Rewrite) -> str:
    stem = "frozen_" + f"{rewrite.module}_{rewrite.attribute}".strip("_").replace(".", "_")
    name, index = stem, 1
    while hasattr(gm, name):
        name, index = f"{stem}_{index}", index + 1
    return name


def freeze(model: nn.Module) -> torch.fx.GraphModule:
    """A snapshot for inference: every transform evaluated once and stored as a constant.

    ``freeze`` compiles the model (a deep copy: the input is never touched), switches it to eval
    mode, computes the output of every transform node once under ``no_grad`` and replaces those
    nodes by buffers. No transform remains in the graph, so models whose transforms are stateful
    or data-dependent (qsparse's) export with ``torch.export`` and ONNX; modules that were kept as
    calls become plain calls of modules holding the frozen tensors.

    It is a snapshot: later training of ``model`` does not reach the frozen graph, and the frozen
    graph is for eval-mode inference only (its output equals the runtime model's eval output,
    bitwise).

    Args:
        model: a runtime-patched model, or a GraphModule from :func:`fxpass.compile`.

    Returns:
        An eval-mode GraphModule without transform nodes.

    Raises:
        InvalidModelError: ``model`` is not an ``nn.Module``.
        FreezeError: a transform failed; the message names its module and transform.

    Example:
        >>> import torch, torch.nn as nn, fxpass
        >>> from imitation_runtime import imitate
        >>> model = imitate(nn.Linear(3, 2), "halve", lambda w: w / 2).eval()
        >>> frozen = fxpass.freeze(model)
        >>> [n.op for n in frozen.graph.nodes]
        ['placeholder', 'get_attr', 'get_attr', 'call_function', 'output']
        >>> x = torch.randn(4, 3)
        >>> torch.equal(frozen(x), model(x))
        True
    """
    gm = _compiled_copy(model).eval()
    graph = gm.graph
    nodes = {node.name: node for node in graph.nodes}
    owner: dict[torch.fx.Node, Rewrite] = {}
    for rewrite in record_of(gm).rewrites:
        for name in rewrite.nodes:
            owner[nodes[name]] = rewrite

    interpreter = torch.fx.Interpreter(gm)
    frozen: list[str] = []
    with torch.no_grad():
        for node in graph.nodes:
            if node.op == "get_attr" and any(user in owner for user in node.users):
                interpreter.env[node] = interpreter.run_node(node)
            elif node in owner:
                rewrite = owner[node]
                try:
                    interpreter.env[node] = interpreter.run_node(node)
                except Exception as error:
                    raise FreezeError(
                        f"the transform {rewrite.transform!r} of {rewrite.module or 'the model'} "
                        f"({rewrite.description}) failed while freezing its {rewrite.attribute}: "
                        f"{type(error).__name__}: {error}"
                    ) from error
                if any(user not in owner for user in node.users):
                    name = _buffer_name(gm, rewrite)
                    gm.register_buffer(name, interpreter.env[node].detach().clone())
                    with graph.inserting_before(node):
                        constant = graph.get_attr(name)
                    node.replace_all_uses_with(constant, delete_user_cb=lambda u: u not in owner)
                    frozen.append(name)
    _unkeep_calls(gm)
    for node in reversed(graph.nodes):
        if not node.users and (node in owner or node.op == "get_attr"):
            graph.erase_node(node)
    graph.lint()
    # Only what the graph reads (as torch.fx keeps it), with fxpass's code and pickling.
    referenced = torch.fx.GraphModule(gm, graph)
    return CompiledGraphModule.build(
        referenced,
        graph,
        class_name=type(gm).__name__,
        training=False,
        preserved={FROZEN_ATTRIBUTE: tuple(frozen)},
    ).eval()  # (the containers torch.fx created for the referenced parts too)


def _unkeep_calls(gm: torch.fx.GraphModule) -> None:
    """Turn each kept call into a plain call of its module, the frozen tensors stored in it."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not call_with_overrides:
            continue
        module_node, overrides, args, kwargs = node.args
        module = gm.get_submodule(module_node.target)
        for path, value in overrides.items():
            owner_path, _, attribute = path.rpartition(".")
            holder = module.get_submodule(owner_path)
            if not (isinstance(value, torch.fx.Node) and value.op == "get_attr"):
                raise FreezeError(f"{module_node.target}.{path} is not a frozen constant")
            tensor = _fetch(gm, value.target)
            if holder._parameters.get(attribute) is tensor:
                continue  # an identity transform: the module reads its own tensor
            holder._parameters.pop(attribute, None)
            holder.register_buffer(attribute, tensor)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(module_node.target, tuple(args), dict(kwargs))
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)


def _fetch(module: nn.Module, target: str) -> torch.Tensor:
    owner_path, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner_path), name)
