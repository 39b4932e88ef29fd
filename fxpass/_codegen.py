"""Generated code that reaches tensors and modules through the tree's dictionaries.

torch.fx writes a ``get_attr`` of ``layers.0.0.weight`` as
``getattr(getattr(self.layers, "0"), "0").weight``. None of these names is in an instance
``__dict__``, so every step falls back to the Python-level ``nn.Module.__getattr__``: on a model
of small layers this costs about as much as the arithmetic. :class:`fxpass.compiled.DictWalkCodeGen` writes the
same read as ``self._modules['layers']._modules['0']._modules['0']._parameters['weight']``, which
is what ``nn.Module.__getattr__`` would end up reading, at a fraction of the cost.

A step is written as a dictionary read only where plain attribute lookup would reach the same
dictionary: the owner's class uses ``nn.Module``'s lookup, the name is neither a class attribute
(a property, a method) nor an instance attribute, and the name is in ``_modules``, ``_parameters``
or ``_buffers``. Any other step, and every step after it, keeps torch.fx's form.

A dictionary that two reads or more pass through (``self._modules['layers']._modules``, a layer's
``_parameters``) is looked up once per call, where the code first needs it, and kept in a local
variable: reading an attribute of a module is slow even when it is in the instance ``__dict__``
(``nn.Module`` defines ``__getattr__``, so CPython does not specialise those reads). The entries
are read at every use and nothing outlives the call, so reassigned parameters,
``load_state_dict``, ``.to()`` and replaced submodules are seen by the next call as before. (A
forward that replaced a module's ``_parameters`` dictionary itself, or one of the modules on the
way, while it runs would not be seen until the next call.) Steps are resolved when the code is
generated: call ``recompile()`` after turning a module's child into a plain attribute, or the
reverse.

Whatever re-traces the code with torch.fx gets torch.fx's own code, since a walk would hand the
tracer the raw tensor and the transforms after it would be recorded as constants: pickles and
``torch.package`` carry it, TorchScript (which cannot compile ``_modules[...]``) compiles a twin
with it (see :class:`fxpass.compiled.CompiledGraphModule`), and the forward's first line hands a call
made while torch.fx traces (``symbolic_trace`` of the compiled model, ``make_fx``) to it.
"""

from __future__ import annotations

from typing import Any

import torch.fx
import torch.nn as nn

from fxpass.errors import EntryGuardError
from fxpass.reading import reads_open, standard_lookup

__all__ = [
    "ENTRY_ATTRIBUTE",
    "FX_FORWARD",
    "GRAPH_MODE_ATTRIBUTE",
    "MODES_ATTRIBUTE",
    "attribute_chain",
    "dict_walk",
    "fx_forward",
    "walk_code",
]

_MODULE_GETATTR = nn.Module.__getattr__


#: An attribute of a compiled part: ``((argument, traced as None), ...)`` for the arguments whose
#: ``None``-ness its graph was traced for. The generated forward first checks them and hands any
#: other call to the module's eager forward (``self._fxpass_eager``).
ENTRY_ATTRIBUTE = "_fxpass_entry"

#: An attribute of a model compiled once per mode (its forward reads ``self.training``): its
#: :class:`fxpass.compiled.ModeGraphs`. The generated forward (of the training graph) first hands an
#: eval-mode call to the eval graph.
MODES_ATTRIBUTE = "_fxpass_modes"
#: With :data:`MODES_ATTRIBUTE`: the mode (True: training) of the graph the model holds now.
GRAPH_MODE_ATTRIBUTE = "_fxpass_graph_mode"


_DICTIONARIES = ("_modules", "_parameters", "_buffers")


def _attribute_step(expression: str, step: str) -> str:
    return f"{expression}.{step}" if step.isidentifier() else f'getattr({expression}, "{step}")'


def attribute_chain(base: str, target: str) -> str:
    """torch.fx's spelling of ``base.<target>``: ``getattr`` for steps that are not identifiers.

    Example:
        >>> attribute_chain("self", "layers.0.weight")
        'getattr(self.layers, "0").weight'
    """
    expression = base
    for step in target.split("."):
        expression = _attribute_step(expression, step)
    return expression


def _dictionary_of(owner: Any, step: str) -> str | None:
    """The dictionary of ``owner`` that plain ``owner.<step>`` reads, if it is one of the tree's."""
    cls = type(owner)
    if (
        not isinstance(owner, nn.Module)
        or not standard_lookup(cls)
        or cls.__getattribute__ is not object.__getattribute__
        or hasattr(cls, step)
        or step in owner.__dict__
    ):
        return None
    for dictionary in _DICTIONARIES:
        if step in owner.__dict__.get(dictionary, ()):
            return dictionary
    return None


class _Spellings:
    """Both spellings of targets under one root, each module prefix resolved once."""

    def __init__(self, root: nn.Module, base: str) -> None:
        # path -> (torch.fx's chain, dict walk, the object reached while the walk holds or None,
        #          the dictionary the last step reads: (its expression, a name for it) or None)
        self._paths: dict[str, tuple[str, str, Any, tuple[str, str] | None]] = {"": (base, base, root, None)}

    def __call__(self, target: str) -> tuple[str, str]:
        chain, walk, _, _ = self._resolve(target)
        return chain, walk

    def dictionaries(self, target: str) -> list[tuple[str, str]]:
        """The dictionaries the walk to ``target`` reads, outermost first: (expression, name)."""
        steps = target.split(".")
        found = []
        for end in range(1, len(steps) + 1):
            dictionary = self._resolve(".".join(steps[:end]))[3]
            if dictionary is None:
                break
            found.append(dictionary)
        return found

    def _resolve(self, path: str) -> tuple[str, str, Any, tuple[str, str] | None]:
        found = self._paths.get(path)
        if found is None:
            parent, _, step = path.rpartition(".")
            chain, walk, owner, _ = self._resolve(parent)
            dictionary = None if owner is None else _dictionary_of(owner, step)
            if dictionary is None:
                found = (_attribute_step(chain, step), _attribute_step(walk, step), None, None)
            else:
                read = (f"{walk}.{dictionary}", (parent.replace(".", "_") or "self") + dictionary)
                found = (_attribute_step(chain, step), f"{read[0]}[{step!r}]", owner.__dict__[dictionary][step], read)
            self._paths[path] = found
        return found


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
    return _Spellings(root, base)(target)[1]


def walk_code(code: Any, nodes: Any, root: nn.Module, root_module: str, namespace: Any, *, walks: bool = True) -> Any:
    """torch.fx's generated ``code`` of ``nodes``, its ``get_attr`` and ``call_module`` targets
    rewritten as dictionary walks resolved against ``root`` (unless ``walks`` is false), and the
    lines that guard the forward (another mode's graph, arguments the graph was not traced for,
    a torch.fx trace of the forward) inserted after its ``def``.

    Raises:
        EntryGuardError: the code needs a guard and has no place for one.
    """
    entry = root.__dict__.get(ENTRY_ATTRIBUTE)
    modes = root.__dict__.get(MODES_ATTRIBUTE)
    # Each get_attr or call_module is one line "    <name> = <chain>" followed by nothing, ";"
    # (the next statement) or "(" (the call). A line is rewritten only when it spells its
    # node's chain: a node whose name the code changed (to avoid a clash) keeps its line.
    spellings = _Spellings(root, root_module)
    rewrites: dict[str, tuple[str, str]] = {}  # node name -> (torch.fx's chain, target)
    for node in nodes if walks else ():
        if node.op in ("get_attr", "call_module") and isinstance(node.target, str):
            chain, walk = spellings(node.target)
            if walk != chain:
                rewrites[node.name] = (chain, node.target)
    if walks and not rewrites and not entry and modes is None:
        return code
    lines = code.src.split("\n")
    guard = _tracing_guard(nodes, lines)
    if guard is None:
        if entry or modes is not None or not walks:
            raise EntryGuardError("the generated forward has no place for the argument guard")
        return code
    _rewrite_lines(lines, rewrites, spellings, namespace)
    # torch.fx tracing this forward (symbolic_trace of the compiled model, a model around
    # it, make_fx) must see attribute reads, or the transforms would run eagerly on the raw
    # tensors and be recorded as constants: the forward then runs torch.fx's own code.
    def_line, call = guard
    added = []
    # (first: torch.fx's own code below is the graph's too, valid for its mode and pattern only)
    if modes is not None:
        mode = bool(root.__dict__.get(GRAPH_MODE_ATTRIBUTE, True))
        added.append(f"    if self.training is not {mode}: return self._fxpass_other_mode({call})")
        if modes.reads:
            added.append(f"    self._fxpass_check_modes({mode})")
    if entry:
        added.append(f"    if {_entry_condition(entry)}: return self._fxpass_eager({call})")
    if not walks:
        # Attribute reads of torch.fx's code, run inside eager code (a compiled part of a
        # module-scope model), would see patched tensors evaluated as at run time
        # (fxpass.reading), and the graph would transform them again: close those reads.
        added.append(f"    if {_READS_OPEN}(): return self._fxpass_reads_closed({call})")
        code.globals[_READS_OPEN] = reads_open
    added.append(f"    if {_TRACE_STATE}._is_fx_tracing_flag: return self.{FX_FORWARD}({call})")
    lines[def_line + 1 : def_line + 1] = added
    code.src = "\n".join(lines)
    code.globals[_TRACE_STATE] = torch.fx._symbolic_trace
    if code._lineno_map is not None:  # (numbered from the def line: lines added before each)
        code._lineno_map = {line + len(added): node for line, node in code._lineno_map.items()}
    return code


def _rewrite_lines(
    lines: list[str], rewrites: dict[str, tuple[str, str]], spellings: _Spellings, namespace: Any
) -> None:
    """Rewrite, in place, the line of each node in ``rewrites`` (name -> (chain, target)) as its
    dict walk.

    A dictionary that two walks or more read (``self._modules['layers']._modules``, a layer's
    ``_parameters``) is bound to a local variable where the code first reads it, and later walks
    start from there: a dictionary is looked up once per call, its entries at every read.
    """
    uses: dict[str, int] = {}
    walks: dict[str, list[tuple[str, str]]] = {}
    for name, (_, target) in rewrites.items():
        walks[name] = spellings.dictionaries(target)
        for expression, _hint in walks[name]:
            uses[expression] = uses.get(expression, 0) + 1
    bound: dict[str, str] = {}  # dictionary expression -> local variable

    def relative(expression: str, dictionaries: list[tuple[str, str]]) -> str:
        for outer, _hint in reversed(dictionaries):
            if outer in bound:
                return expression.replace(outer, bound[outer], 1)
        return expression

    for index, line in enumerate(lines):
        if not line.startswith("    "):
            continue
        name, equals, rest = line[4:].partition(" = ")
        if not equals or name not in rewrites:
            continue
        chain, target = rewrites[name]
        if not (rest.startswith(chain) and rest[len(chain) : len(chain) + 1] in ("", ";", "(")):
            continue
        dictionaries = walks[name]
        statements = []
        for depth, (expression, hint) in enumerate(dictionaries):
            if uses[expression] > 1 and expression not in bound:
                local = namespace.create_name(hint, None)
                statements.append(f"{local} = {relative(expression, dictionaries[:depth])}")
                bound[expression] = local
        statements.append(f"{name} = {relative(spellings(target)[1], dictionaries)}{rest[len(chain):]}")
        lines[index] = "    " + ";  ".join(statements)


def _entry_condition(entry: tuple[tuple[str, bool], ...]) -> str:
    """A condition true for the calls the graph was not traced for.

    Example:
        >>> _entry_condition((("x", False), ("mask", True)))
        'x is None or mask is not None'
    """
    for name, _ in entry:
        if not name.isidentifier():
            raise EntryGuardError(f"cannot guard the argument {name!r}")
    return " or ".join(f"{name} is not None" if none else f"{name} is None" for name, none in entry)


_TRACE_STATE = "_fxpass_fx_trace_state"
#: The generated code's name of :func:`fxpass.reading.reads_open`.
_READS_OPEN = "_fxpass_reads_open"
#: The method of a module that pickles torch.fx's code (:class:`fxpass.compiled.CompiledGraphModule`)
#: running torch.fx's own code of its graph. A method, not a global of the generated code, so that
#: graphs of the same structure generate the same code with the same globals (and share it).
FX_FORWARD = "_fxpass_fx_forward"


def _tracing_guard(nodes: Any, lines: list[str]) -> tuple[int, str] | None:
    """Where the forward's ``def`` line is, and the arguments that forward its parameters, or None
    when the code is not of the expected shape (then no walks are written)."""
    if not hasattr(torch.fx._symbolic_trace, "_is_fx_tracing_flag"):
        return None
    def_line = next((i for i, line in enumerate(lines) if line.startswith("def forward(self")), None)
    if def_line is None or not lines[def_line].endswith(":"):
        return None
    arguments, keyword_only = [], False
    for node in nodes:
        if node.op != "placeholder":
            continue
        target = str(node.target)
        if target.startswith("*"):
            arguments.append(target)
            keyword_only = True
        elif keyword_only:
            arguments.append(f"{target}={target}")
        else:
            arguments.append(target)
        if not target.lstrip("*").isidentifier():
            return None
    return def_line, ", ".join(arguments)


def fx_forward(graph: torch.fx.Graph) -> Any:
    """torch.fx's own forward function for ``graph`` (``forward(self, ...)``), generated once per
    graph and kept on it (a graph changed after that must drop it: ``graph.__dict__.pop``)."""
    fn = graph.__dict__.get(FX_FORWARD)
    if fn is None:
        codegen = graph._codegen
        graph._codegen = torch.fx.graph.CodeGen()
        try:
            code = graph.python_code(root_module="self")
        finally:
            graph._codegen = codegen
        namespace = dict(code.globals)
        exec(compile(code.src, "<fxpass: torch.fx's code>", "exec"), namespace)  # noqa: S102
        fn = graph.__dict__[FX_FORWARD] = namespace["forward"]
    return fn
