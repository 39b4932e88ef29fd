"""What a compile did, as plain data that pickles with the GraphModule."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Literal

import tabulate
import torch
import torch.fx

from fxpass.errors import NotCompiledError

__all__ = [
    "CompileRecord",
    "EagerModule",
    "KeptCall",
    "Rewrite",
    "ScopeRecord",
    "find_record",
    "record_of",
    "record_totals",
    "scope_record",
]

How = Literal["inlined", "module", "opaque"]

#: Attribute of a compiled GraphModule that holds its record. (Not ``GraphModule.meta``: torch.fx
#: drops ``meta`` when it rebuilds an unpickled GraphModule, but keeps other attributes.)
RECORD_ATTRIBUTE = "_fxpass_record"
#: Attribute of the root of a module-scope compile that holds its :class:`ScopeRecord`.
SCOPE_ATTRIBUTE = "_fxpass_scope"


def find_record(module: object) -> CompileRecord | None:
    """The record of a compiled GraphModule, or None for any other object."""
    record = getattr(module, RECORD_ATTRIBUTE, None) if isinstance(module, torch.fx.GraphModule) else None
    return record if isinstance(record, CompileRecord) else None


@dataclasses.dataclass(frozen=True)
class Rewrite:
    """One read of a patched attribute, turned into graph nodes.

    Attributes:
        module: path of the patched module (``""`` for the model itself).
        attribute: the attribute read (``"weight"``, ``"bias"``, ...).
        transform: the module attribute holding the transform (``"quantize"``,
            ``"quantize_bias"``, ``"parametrizations.weight"``).
        how: ``"inlined"`` (traced into graph nodes), ``"module"`` (a ``call_module`` of the
            transform module) or ``"opaque"`` (one call of a function torch.fx cannot trace).
        description: the transform's qualified name.
        nodes: names of the graph nodes emitted for it.
    """

    module: str
    attribute: str
    transform: str
    how: How
    description: str
    nodes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class KeptCall:
    """A module kept as a call at run time.

    Attributes:
        module: path of the module called.
        reason: why its forward was not traced into the graph.
        overrides: the patched attributes inside it (relative to ``module``), which its forward
            reads as at run time: each read evaluated when it happens. (In graphs compiled by
            fxpass 0.1: the attributes replaced during the call by values the graph computed.)
    """

    module: str
    reason: str
    overrides: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CompileRecord:
    """Everything :func:`fxpass.compile` rewrote.

    Attributes:
        patched_modules: paths of the class-patched modules found, in model order.
        rewrites: each patched-attribute read turned into nodes, in graph order.
        kept_calls: modules whose forward stays a call at run time.
        inlined_activations: unpatched activation modules traced into functional calls
            (``compile(..., inline_activations=True)``).
        specialized: arguments of the forward traced as ``None`` (a compiled part of a
            module-scope compile traces its arguments that default to ``None`` that way); a call
            that passes one of them, or passes ``None`` for another argument, runs the module's
            own forward eagerly instead of the graph.
        boundaries: paths of the modules compiled on their own, which the graph calls
            (``fxpass.compile(..., boundaries=...)``); each has its own record.
        modes: ``("train", "eval")`` for a model whose own forward reads ``self.training``: it
            was traced once per mode (see :class:`fxpass.compiled.ModeGraphs`), and this is the record
            of the graph of the model's current mode.
        scope_reason: with ``scope="auto"``, why model scope was used.
    """

    patched_modules: tuple[str, ...]
    rewrites: tuple[Rewrite, ...]
    kept_calls: tuple[KeptCall, ...]
    inlined_activations: tuple[str, ...] = ()
    specialized: tuple[str, ...] = ()
    boundaries: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    scope_reason: str = ""

    def counts(self) -> dict[str, int]:
        """Number of rewrites by how they were emitted."""
        return record_totals((self,))

    def table(self, fmt: str = "simple") -> str:
        """The rewrites as a table (any ``tabulate`` format), then the kept calls."""
        rows = [
            (r.module or "<model>", r.attribute, r.transform, r.how, r.description)
            for r in self.rewrites
        ]
        text = tabulate.tabulate(
            rows, headers=("module", "attribute", "transform", "how", "function"), tablefmt=fmt
        )
        if self.kept_calls:
            kept = [(k.module or "<model>", ", ".join(k.overrides), k.reason) for k in self.kept_calls]
            text += "\n\n" + tabulate.tabulate(
                kept, headers=("kept as a call", "patched tensors read inside", "why"), tablefmt=fmt
            )
        if self.boundaries:
            text += "\n\nboundaries (compiled on their own): " + ", ".join(self.boundaries)
        if self.scope_reason:
            text += "\n\n" + self.scope_reason
        if self.modes:
            text += "\n\ntraced once per mode: " + ", ".join(self.modes) + " (this is the record of the model's current mode)"
        return text


def record_totals(records: Iterable[CompileRecord]) -> dict[str, int]:
    """Number of rewrites by how they were emitted, summed over ``records`` (the parts of a
    module-scope compile); every kind of :data:`How` is a key, in its order."""
    counts = dict.fromkeys(typing.get_args(How), 0)
    for record in records:
        for rewrite in record.rewrites:
            counts[rewrite.how] += 1
    return counts


def record_of(gm: torch.fx.GraphModule) -> CompileRecord:
    """The record of the compile that produced ``gm``.

    Raises:
        NotCompiledError: ``gm`` was not produced by :func:`fxpass.compile`.

    Example:
        >>> import torch.nn as nn, fxpass
        >>> from imitation_runtime import imitate
        >>> gm = fxpass.compile(imitate(nn.Linear(2, 2), "halve", lambda w: w / 2))
        >>> [(r.attribute, r.how) for r in fxpass.record_of(gm).rewrites]
        [('weight', 'inlined'), ('bias', 'inlined')]
    """
    record = find_record(gm)
    if record is None:
        raise NotCompiledError(
            f"{type(gm).__name__} carries no fxpass record: it was not produced by "
            "fxpass.compile; compile the model first"
        )
    return record


@dataclasses.dataclass(frozen=True)
class EagerModule:
    """A module of a module-scope compile that runs as the model's own code, not as a graph.

    Attributes:
        module: its path.
        reason: why it is not a compiled part (the error compiling it raised).
        patched: whether it carries a class patch itself; its reads (and those of every patched
            module below it) are then evaluated as at run time while it runs.
    """

    module: str
    reason: str
    patched: bool


@dataclasses.dataclass(frozen=True)
class ScopeRecord:
    """What a module-scope compile made of the model.

    Attributes:
        parts: paths of the compiled parts (each a GraphModule with its own
            :class:`CompileRecord`), in model order.
        eager: the modules holding patched modules that run eagerly, in model order.
        reason: with ``scope="auto"``, why module scope was used.
    """

    parts: tuple[str, ...]
    eager: tuple[EagerModule, ...]
    reason: str = ""

    def table(self, fmt: str = "simple") -> str:
        """The eager modules as a table (any ``tabulate`` format), after a line counting the parts."""
        rows = [(e.module or "<model>", "yes" if e.patched else "", e.reason) for e in self.eager]
        text = f"{len(self.parts)} compiled part(s), {len(self.eager)} eager module(s)"
        if self.reason:
            text = f"{self.reason}\n{text}"
        if rows:
            text += "\n\n" + tabulate.tabulate(rows, headers=("eager module", "patched", "why"), tablefmt=fmt)
        return text


def scope_record(model: object) -> ScopeRecord | None:
    """The :class:`ScopeRecord` of a module-scope compile, or None for any other object.

    Example:
        >>> import torch, torch.nn as nn, fxpass
        >>> from imitation_runtime import imitate
        >>> class Branch(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = imitate(nn.Linear(2, 2), "halve", lambda w: w / 2)
        ...     def forward(self, x):
        ...         return self.fc(x) if x.sum() > 0 else x
        >>> record = fxpass.scope_record(fxpass.compile(Branch(), scope="module"))
        >>> record.parts, [e.module or "<model>" for e in record.eager]
        (('fc',), ['<model>'])
    """
    found = getattr(model, SCOPE_ATTRIBUTE, None) if isinstance(model, torch.nn.Module) else None
    return found if isinstance(found, ScopeRecord) else None
