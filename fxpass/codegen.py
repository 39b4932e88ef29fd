"""Generated code that reaches tensors and modules through the tree's dictionaries.

torch.fx writes a ``get_attr`` of ``layers.0.0.weight`` as
``getattr(getattr(self.layers, "0"), "0").weight``. None of these names is in an instance
``__dict__``, so every step falls back to the Python-level ``nn.Module.__getattr__``: on a model
of small layers this costs about as much as the arithmetic. :class:`DictWalkCodeGen` writes the
same read as ``self._modules['layers']._modules['0']._modules['0']._parameters['weight']``, which
is what ``nn.Module.__getattr__`` would end up reading, at a fraction of the cost.

A step is written as a dictionary read only where plain attribute lookup would reach the same
dictionary: the owner's class uses ``nn.Module``'s lookup, the name is neither a class attribute
(a property, a method) nor an instance attribute, and the name is in ``_modules``, ``_parameters``
or ``_buffers``. Any other step, and every step after it, keeps torch.fx's form. Each read still
happens on every call (nothing is cached), so reassigned parameters, ``load_state_dict``,
``.to()`` and swapped submodules are seen as before. Steps are resolved when the code is
generated: call ``recompile()`` after turning a module's child into a plain attribute, or the
reverse.

Whatever needs torch.fx's own code gets it: a pickle (torch.fx re-traces the code when it loads
one, and must see attribute reads to rebuild ``get_attr`` nodes) and TorchScript (which cannot
compile ``_modules[...]``); see :class:`fxpass.ops.CompiledGraphModule`.
"""

from __future__ import annotations

from typing import Any

import torch.fx
import torch.nn as nn

__all__ = ["DictWalkCodeGen", "attribute_chain", "dict_walk"]

_MODULE_GETATTR = nn.Module.__getattr__
_DICTIONARIES = ("_modules", "_parameters", "_buffers")


def attribute_chain(base: str, target: str) -> str:
    """torch.fx's spelling of ``base.<target>``: ``getattr`` for steps that are not identifiers.

    Example:
        >>> attribute_chain("self", "layers.0.weight")
        'getattr(self.layers, "0").weight'
    """
    expression = base
    for step in target.split("."):
        expression = f"{expression}.{step}" if step.isidentifier() else f'getattr({expression}, "{step}")'
    return expression


def _dictionary_of(owner: Any, step: str) -> str | None:
    """The dictionary of ``owner`` that plain ``owner.<step>`` reads, if it is one of the tree's."""
    cls = type(owner)
    if (
        not isinstance(owner, nn.Module)
        or getattr(cls, "__getattr__", None) is not _MODULE_GETATTR
        or cls.__getattribute__ is not object.__getattribute__
        or hasattr(cls, step)
        or step in owner.__dict__
    ):
        return None
    for dictionary in _DICTIONARIES:
        if step in owner.__dict__.get(dictionary, ()):
            return dictionary
    return None


def dict_walk(root: nn.Module, base: str, target: str) -> str:
    """An expression reading ``root.<target>`` (``root`` spelled ``base``) through dictionaries.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> dict_walk(model, "self", "0.weight")
        "self._modules['0']._parameters['weight']"
        >>> dict_walk(model, "self", "0.in_features")  # a plain attribute: torch.fx's form
        "self._modules['0'].in_features"
    """
    expression, owner = base, root
    steps = target.split(".")
    for index, step in enumerate(steps):
        dictionary = _dictionary_of(owner, step)
        if dictionary is None:
            return attribute_chain(expression, ".".join(steps[index:]))
        expression = f"{expression}.{dictionary}[{step!r}]"
        owner = owner.__dict__[dictionary][step]
    return expression


class DictWalkCodeGen(torch.fx.graph.CodeGen):
    """torch.fx's code generator, with ``get_attr`` and ``call_module`` targets as dict walks.

    It generates torch.fx's code, then rewrites the target expression of each ``get_attr`` and
    ``call_module`` line, resolving the steps against the graph's owning module. A line it does not
    recognise (a torch.fx version that spells targets differently) keeps torch.fx's form, which
    reads the same objects. It holds no state, so a graph carrying it deep-copies as before.

    Example:
        >>> import torch.fx, torch.nn as nn
        >>> gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2)))
        >>> gm.graph.set_codegen(DictWalkCodeGen())
        >>> print(gm.recompile().src.strip().splitlines()[2].strip())
        _0 = self._modules['0'](input_1);  input_1 = None
    """

    def _gen_python_code(self, nodes: Any, root_module: str, namespace: Any, **kwargs: Any) -> Any:
        code = super()._gen_python_code(nodes, root_module, namespace, **kwargs)
        root = _owning_module(nodes)
        if root is None:
            return code
        # While code is generated, repr(node) is the name the code uses for the node; each
        # get_attr or call_module is one line "    <name> = <chain>" followed by nothing, ";"
        # (the next statement) or "(" (the call).
        rewrites: dict[str, tuple[str, str]] = {}
        for node in nodes:
            if node.op in ("get_attr", "call_module") and isinstance(node.target, str):
                chain = attribute_chain(root_module, node.target)
                walk = dict_walk(root, root_module, node.target)
                if walk != chain:
                    rewrites[f"    {node!r} = "] = (chain, walk)
        if rewrites:
            lines = code.src.split("\n")
            for index, line in enumerate(lines):
                name, equals, rest = line.partition(" = ")
                chain, walk = rewrites.get(name + equals, ("", ""))
                if chain and rest.startswith(chain) and rest[len(chain) : len(chain) + 1] in ("", ";", "("):
                    lines[index] = name + equals + walk + rest[len(chain) :]
            code.src = "\n".join(lines)
        return code


def _owning_module(nodes: Any) -> nn.Module | None:
    for node in nodes:
        return node.graph.owning_module
    return None
