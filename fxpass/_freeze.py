"""``fxpass.freeze``: an eval-mode inference model with every transform computed once."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from fxpass._common import join_path, owner_of, where
from fxpass._rewrite import compile
from fxpass.compiled import INSTANCE_ATTRIBUTES, PRESERVED, CompiledGraphModule
from fxpass.errors import FreezeError, InvalidModelError, UntraceableModelError
from fxpass.ops import call_with_overrides
from fxpass.reading import PLAN, read_value, remove_eager_forward, undress
from fxpass.record import RECORD_ATTRIBUTE, Rewrite, find_record, record_of, scope_record

__all__ = ["freeze"]

#: Attribute of a frozen GraphModule listing the buffers that hold frozen transform outputs.
FROZEN_ATTRIBUTE = "_fxpass_frozen"


def _buffer_name(gm: nn.Module, rewrite: Rewrite) -> str:
    stem = "frozen_" + f"{rewrite.module}_{rewrite.attribute}".strip("_").replace(".", "_")
    name, index = stem, 1
    while hasattr(gm, name):
        name, index = f"{stem}_{index}", index + 1
    return name


def freeze(model: nn.Module) -> nn.Module:
    """A snapshot for inference: every transform evaluated once and stored as a constant.

    ``freeze`` compiles the model (a deep copy: the input is never touched), switches it to eval
    mode, computes the output of every transform node once under ``no_grad`` and replaces those
    nodes by buffers. No transform remains in the graph, so models whose transforms are stateful
    or data-dependent (qsparse's) export with ``torch.export`` and ONNX; modules that were kept as
    calls become plain calls of modules holding the frozen tensors.

    A model that only ``scope="module"`` compiles (most transformers models), or a module-scope
    compile, is frozen in place: each patched tensor is evaluated once and stored as a buffer
    under its own name (``fc.weight`` holds the transformed weight), every compiled part reads it
    there, and the rest of the model is the model's own code, with no patch left. It exports with
    ``torch.export`` wherever the model itself does.

    It is a snapshot: later training of ``model`` does not reach the frozen model, and the frozen
    model is for eval-mode inference only (its output equals the runtime model's eval output,
    bitwise).

    Args:
        model: a runtime-patched model, or a model from :func:`fxpass.compile` (either scope).

    Returns:
        An eval-mode model without transforms: a GraphModule, or for module scope a copy of the
        model of its own class.

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
    if not isinstance(model, nn.Module):
        raise InvalidModelError(
            f"fxpass.freeze expects an nn.Module, got {type(model).__name__}; pass the "
            "runtime-patched model or its fxpass.compile result"
        )
    if scope_record(model) is not None or _is_part(model):
        return _freeze_in_place(copy.deepcopy(model))
    if find_record(model) is not None:
        return _freeze_graph(copy.deepcopy(model))
    copied = copy.deepcopy(model)
    try:
        compiled = compile(copied)
    except UntraceableModelError:
        return _freeze_in_place(compile(copied, scope="module"))
    return _freeze_graph(compiled)


def frozen_tensors(model: nn.Module) -> tuple[str, ...]:
    """The paths of the tensors :func:`freeze` stored in ``model`` (``()`` for a model it did
    not produce): ``frozen_*`` buffers of a frozen graph, and tensors frozen under their own
    name (``"fc.weight"``) in modules that were kept as calls or ran eagerly.

    Example:
        >>> import torch.nn as nn, fxpass
        >>> from imitation_runtime import imitate
        >>> model = imitate(nn.Linear(3, 2), "halve", lambda w: w / 2)
        >>> frozen_tensors(fxpass.freeze(model))
        ('frozen_weight',)
    """
    paths: dict[str, None] = {}
    for name, module in model.named_modules():
        for path in module.__dict__.get(FROZEN_ATTRIBUTE, ()):
            paths[join_path(name, path)] = None
    return tuple(paths)


def _is_part(model: nn.Module) -> bool:
    return isinstance(model, CompiledGraphModule) and type(model)._fxpass_base is not None


def _freeze_graph(gm: torch.fx.GraphModule) -> CompiledGraphModule:
    """Model scope: every transform node evaluated once, its output a ``frozen_*`` buffer; the
    patched modules inside kept calls frozen in place. (A model traced once per mode holds its eval
    graph once in eval mode.)"""
    gm = gm.eval()
    frozen = list(_freeze_reads(gm))
    graph = gm.graph
    owner = _transform_nodes(gm)
    interpreter = torch.fx.Interpreter(gm)
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
    _erase_unused(graph, owner)
    # Only what the graph reads (as torch.fx keeps it), with fxpass's code and pickling.
    referenced = torch.fx.GraphModule(gm, graph)
    return CompiledGraphModule.build(
        referenced,
        graph,
        class_name=type(gm).__name__,
        training=False,
        preserved={FROZEN_ATTRIBUTE: tuple(frozen)},
    ).eval()  # (the containers torch.fx created for the referenced parts too)


def _transform_nodes(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, Rewrite]:
    """Every node a transform emitted, with the rewrite it belongs to."""
    nodes = {node.name: node for node in gm.graph.nodes}
    return {nodes[name]: rewrite for rewrite in record_of(gm).rewrites for name in rewrite.nodes}


def _erase_unused(graph: torch.fx.Graph, owner: dict[torch.fx.Node, Rewrite]) -> None:
    """Erase the transform nodes and attribute reads nothing uses any more, then lint."""
    for node in reversed(graph.nodes):
        if not node.users and (node in owner or node.op == "get_attr"):
            graph.erase_node(node)
    graph.lint()


def _unkeep_calls(gm: torch.fx.GraphModule) -> None:
    """Turn each kept call into a plain call of its module, the frozen tensors stored in it."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not call_with_overrides:
            continue
        module_node, overrides, args, kwargs = node.args
        module = gm.get_submodule(module_node.target)
        for path, value in overrides.items():
            holder, attribute = owner_of(module, path)
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
    owner, name = owner_of(module, target)
    return getattr(owner, name)


# -- module scope ----------------------------------------------------------------------------------


def _freeze_in_place(model: nn.Module) -> nn.Module:
    """Module scope: each patched tensor evaluated once and stored under its own name.

    ``model`` is a copy this function owns. Every module holding a read plan gets its transformed
    tensors as buffers in place of the raw ones (and loses its transforms); every compiled part
    reads those buffers instead of its transform nodes; the eager modules lose their read hooks.
    """
    model.eval()
    frozen = _freeze_reads(model)
    for module in model.modules():
        if find_record(module) is not None:
            _read_frozen(module)  # type: ignore[arg-type]
    if not isinstance(model, torch.fx.GraphModule):
        model.__dict__[FROZEN_ATTRIBUTE] = frozen
    return model


def _freeze_reads(model: nn.Module) -> tuple[str, ...]:
    """Freeze in place every module of ``model`` that reads its patched tensors eagerly (it holds
    a read plan), and drop the eager forwards that evaluated those reads; the frozen tensors'
    paths."""
    names = {id(m): name for name, m in model.named_modules()}
    patched = [m for m in model.modules() if PLAN in m.__dict__]
    values: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []
    with torch.no_grad():
        for module in patched:
            values.append((module, _frozen_values(module, names[id(module)])))
    for module, frozen in values:
        _store_frozen(module, frozen)
    for module in model.modules():
        remove_eager_forward(module)
    return tuple(join_path(names[id(module)], attribute) for module, frozen in values for attribute in frozen)


def _frozen_values(module: nn.Module, path: str) -> dict[str, torch.Tensor]:
    frozen: dict[str, torch.Tensor] = {}
    for attribute in module.__dict__[PLAN].attributes:
        try:
            value = read_value(module, attribute)
        except AttributeError:
            continue  # the module has no such tensor (an Embedding's bias)
        except Exception as error:
            raise FreezeError(
                f"{where(path, module)}: a transform failed while "
                f"freezing its {attribute}: {type(error).__name__}: {error}"
            ) from error
        if value is not None:
            frozen[attribute] = value.detach().clone()
    return frozen


def _store_frozen(module: nn.Module, frozen: dict[str, torch.Tensor]) -> None:
    """Replace the raw tensors (and transforms) of ``module`` by its frozen tensors."""
    plan = module.__dict__[PLAN]
    undress(module)
    namespace = module.__dict__
    # (a compiled part re-applies its preserved instance attributes after copies and pickles)
    kept = module.meta.get(PRESERVED, {}).get(INSTANCE_ATTRIBUTES, {}) if isinstance(module, CompiledGraphModule) else {}
    kept.pop(PLAN, None)
    parametrizations = namespace["_modules"].get("parametrizations")
    for layer in plan.layers:
        if layer.kind == "parametrize":
            continue
        for transform in layer.transforms:
            namespace.pop(transform, None)
            kept.pop(transform, None)
            namespace["_modules"].pop(transform, None)
    for attribute, tensor in frozen.items():
        namespace["_parameters"].pop(attribute, None)
        namespace["_buffers"].pop(attribute, None)
        if parametrizations is not None and attribute in parametrizations._modules:
            del parametrizations._modules[attribute]
        module.register_buffer(attribute, tensor)
    if parametrizations is not None and not parametrizations._modules:
        del namespace["_modules"]["parametrizations"]


def _read_frozen(part: CompiledGraphModule) -> None:
    """Make a compiled part read the frozen buffers instead of computing its transforms."""
    graph = part.graph
    owner = _transform_nodes(part)
    for node in list(graph.nodes):
        rewrite = owner.get(node)
        if rewrite is None or all(user in owner for user in node.users):
            continue
        with graph.inserting_before(node):
            frozen = graph.get_attr(join_path(rewrite.module, rewrite.attribute))
        node.replace_all_uses_with(frozen, delete_user_cb=lambda u: u not in owner)
    _unkeep_calls(part)
    _erase_unused(graph, owner)
    preserved: dict[str, Any] = part.meta.get(PRESERVED, {})
    preserved.pop(RECORD_ATTRIBUTE, None)
    part.__dict__.pop(RECORD_ATTRIBUTE, None)
    preserved[FROZEN_ATTRIBUTE] = part.__dict__[FROZEN_ATTRIBUTE] = tuple(
        dict.fromkeys(join_path(r.module, r.attribute) for r in owner.values())
    )
    part.recompile()
