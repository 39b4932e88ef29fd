"""What a compile did, as plain data that pickles with the GraphModule."""

from __future__ import annotations

import dataclasses
from typing import Literal

import tabulate
import torch.fx

from fxpass.errors import NotCompiledError

__all__ = ["CompileRecord", "KeptCall", "Rewrite", "find_record", "record_of"]

How = Literal["inlined", "module", "opaque"]

#: Attribute of a compiled GraphModule that holds its record. (Not ``GraphModule.meta``: torch.fx
#: drops ``meta`` when it rebuilds an unpickled GraphModule, but keeps other attributes.)
RECORD_ATTRIBUTE = "_fxpass_record"


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
    """A module kept as a call at run time, with patched tensors passed in for the call.

    Attributes:
        module: path of the module called.
        reason: why its forward was not traced into the graph.
        overrides: the attributes (relative to ``module``) replaced during the call.
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
    """

    patched_modules: tuple[str, ...]
    rewrites: tuple[Rewrite, ...]
    kept_calls: tuple[KeptCall, ...]
    inlined_activations: tuple[str, ...] = ()

    def counts(self) -> dict[str, int]:
        """Number of rewrites by how they were emitted."""
        counts = dict.fromkeys(("inlined", "module", "opaque"), 0)
        for rewrite in self.rewrites:
            counts[rewrite.how] += 1
        return counts

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
                kept, headers=("kept as a call", "tensors passed in", "why"), tablefmt=fmt
            )
        return text


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
