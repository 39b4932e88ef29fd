"""How :func:`fxpass.parity.check` compares two models' values: nested outputs flattened to named
leaves, tensors compared bitwise or within a tolerance, with the largest differences kept.

Comparisons are bitwise (``torch.equal``) when ``atol == rtol == 0`` and ``torch.isclose``
otherwise; NaN where the reference has NaN counts as equal, and an equal pair returns at
``torch.equal`` without temporaries.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "Comparison",
    "compare_all",
    "compare_tensors",
    "compare_values",
    "error_text",
    "flat",
    "flatten",
    "kind_of",
    "listing",
    "sequence_difference",
]

#: How many names a row's detail lists before "and N more".
MAX_LISTED = 5


@dataclasses.dataclass
class Comparison:
    """What comparing a set of named values found: passed (within the tolerances), bitwise
    equal, the largest absolute and relative differences, and what differed."""

    passed: bool = True
    bitwise: bool = True
    max_abs: float = 0.0
    max_rel: float = 0.0
    detail: str = ""


def compare_all(
    reference: Mapping[str, Any], candidate: Mapping[str, Any], atol: float, rtol: float
) -> Comparison:
    """Compare two name -> value mappings entry by entry; a name on one side only is a mismatch."""
    result = Comparison()
    failed: list[str] = []
    worst = ""
    for label in list(reference) + [k for k in candidate if k not in reference]:
        if label not in candidate or label not in reference:
            equal = close = False
            reason = "missing in candidate" if label not in candidate else "only in candidate"
            result.max_abs = result.max_rel = math.inf
        else:
            equal, close, reason, max_abs, max_rel = compare_values(
                reference[label], candidate[label], atol, rtol
            )
            if max_abs > result.max_abs:
                worst = label
            result.max_abs = max(result.max_abs, max_abs)
            result.max_rel = max(result.max_rel, max_rel)
        result.bitwise &= equal
        if not close:
            if not failed:
                result.detail = f"{label}: {reason}"
            failed.append(label)
    result.passed = not failed
    if len(failed) > 1:
        result.detail += f" (and {len(failed) - 1} more: {listing(failed[1:])})"
    if result.passed and not result.bitwise:
        result.detail = f"within tolerance, not bitwise; largest difference at {worst}"
    return result


def compare_values(
    reference: Any, candidate: Any, atol: float, rtol: float
) -> tuple[bool, bool, str, float, float]:
    """(bitwise equal, passed, why not, max abs diff, max rel diff) of one pair of leaves."""
    numbers = [isinstance(v, (int, float)) and not isinstance(v, bool) for v in (reference, candidate)]
    if all(numbers):  # Python scalars in an output: compare them as float64 tensors
        reference, candidate = torch.tensor(float(reference)), torch.tensor(float(candidate))
    if isinstance(reference, torch.Tensor) and isinstance(candidate, torch.Tensor):
        return compare_tensors(reference.detach(), candidate.detach(), atol, rtol)
    if isinstance(reference, torch.Tensor) or isinstance(candidate, torch.Tensor):
        return False, False, f"{kind_of(reference)} vs {kind_of(candidate)}", math.inf, math.inf
    try:
        equal = type(reference) is type(candidate) and bool(reference == candidate)
    except Exception:  # noqa: BLE001 - an == that fails means "not equal"
        equal = False
    reason = "" if equal else f"{reference!r} vs {candidate!r}"
    return equal, equal, reason, 0.0, 0.0


def compare_tensors(
    reference: torch.Tensor, candidate: torch.Tensor, atol: float, rtol: float
) -> tuple[bool, bool, str, float, float]:
    """(bitwise equal, passed, why not, max abs diff, max rel diff) of two tensors: shape, dtype,
    then the values (NaN equals NaN; an infinite difference is ``inf``), in float64."""
    if reference.shape != candidate.shape:
        reason = f"shape {tuple(reference.shape)} vs {tuple(candidate.shape)}"
        return False, False, reason, math.inf, math.inf
    if reference.dtype != candidate.dtype:
        return False, False, f"dtype {reference.dtype} vs {candidate.dtype}", math.inf, math.inf
    if reference.device != candidate.device:
        reference = reference.to(candidate.device)
    try:
        if reference.layout != torch.strided:
            reference, candidate = reference.to_dense(), candidate.to_dense()
        if reference.is_quantized:
            reference, candidate = reference.dequantize(), candidate.dequantize()
    except Exception as e:  # noqa: BLE001 - any failure to compare is a mismatch
        return False, False, f"cannot compare: {error_text(e)}", math.inf, math.inf
    if reference.numel() == 0 or torch.equal(reference, candidate):  # (the usual case: no temporaries)
        return True, True, "", 0.0, 0.0
    if reference.is_complex():
        wide_r, wide_c = reference.to(torch.complex128), candidate.to(torch.complex128)
    else:
        wide_r, wide_c = reference.to(torch.float64), candidate.to(torch.float64)
    both_nan = wide_r.isnan() & wide_c.isnan()
    diff = (wide_r - wide_c).abs()
    diff = torch.where(both_nan, torch.zeros_like(diff), diff)
    diff = torch.where(diff.isnan(), torch.full_like(diff, math.inf), diff)
    scale = wide_r.abs()
    rel = torch.where(diff == 0, torch.zeros_like(diff), diff / scale)
    rel = torch.where(rel.isnan(), torch.full_like(rel, math.inf), rel)
    max_abs, max_rel = float(diff.max()), float(rel.max())
    equal = bool((diff == 0).all())
    if atol == 0 and rtol == 0:
        close = equal
    else:
        close = bool(torch.isclose(wide_r, wide_c, rtol=rtol, atol=atol, equal_nan=True).all())
    reason = ""
    if not close:
        count = int((diff != 0).sum())
        reason = f"{count} of {reference.numel()} elements differ, max abs diff {max_abs:.3g}"
    return equal, close, reason, max_abs, max_rel


def flatten(value: Any, path: str, seen: frozenset[int] = frozenset()) -> Iterator[tuple[str, Any]]:
    """(path, leaf) pairs of a nested output: tensors and other non-container values are leaves.

    Containers are mappings (``ModelOutput`` included), dataclasses, named tuples, tuples and
    lists, types registered with torch's pytree, and other plain objects, whose attributes are
    walked (a transformers ``DynamicCache``: its layers' key and value tensors). Modules, classes
    and functions are leaves; an object met again inside itself is not walked twice.
    """
    if isinstance(value, torch.Tensor):
        yield path, value
        return
    if id(value) in seen:
        yield path, f"<{type(value).__name__} seen above>"
        return
    inner = seen | {id(value)}
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten(item, f"{path}[{key!r}]", inner)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from flatten(getattr(value, field.name), f"{path}.{field.name}", inner)
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        for field, item in zip(value._fields, value):
            yield from flatten(item, f"{path}.{field}", inner)
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from flatten(item, f"{path}[{index}]", inner)
    elif (children := _pytree_children(value)) is not None:
        for key, item in children:
            yield from flatten(item, f"{path}{key}", inner)
    elif _walkable(value):
        for name, item in vars(value).items():
            yield from flatten(item, f"{path}.{name}", inner)
    else:
        yield path, value


def _pytree_children(value: Any) -> list[tuple[str, Any]] | None:
    """The children of a value of a type registered with torch's pytree, with their keys."""
    from torch.utils import _pytree as pytree

    node = pytree.SUPPORTED_NODES.get(type(value))
    if node is None:
        return None
    if node.flatten_with_keys_fn is not None:
        children, _ = node.flatten_with_keys_fn(value)
        return [(pytree.keystr((key,)), child) for key, child in children]
    children, _ = node.flatten_fn(value)
    return [(f"[{index}]", child) for index, child in enumerate(children)]


def _walkable(value: Any) -> bool:
    """A plain object whose attributes make up its value: it compares by identity (no ``__eq__``
    of its own) and is not a module, class or function."""
    return (
        hasattr(value, "__dict__")
        and type(value).__eq__ is object.__eq__
        and not isinstance(value, (nn.Module, type, types.FunctionType, types.MethodType, types.ModuleType))
    )


def flat(value: Any, root: str) -> dict[str, Any]:
    """:func:`flatten` as a dict: leaf path -> leaf."""
    return dict(flatten(value, root))


def kind_of(value: Any) -> str:
    """A few words for a leaf in a mismatch message: ``Tensor[2, 3]``, or its type's name."""
    if isinstance(value, torch.Tensor):
        return f"Tensor{list(value.shape)}"
    return "None" if value is None else type(value).__name__


def error_text(error: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def listing(items: Sequence[str]) -> str:
    """Names joined by commas, the first :data:`MAX_LISTED` of them and how many in all."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_LISTED else "")


def sequence_difference(reference: list[str], candidate: list[str], what: str) -> str:
    """Where two sequences of names part: the first position that differs, or the extra ones."""
    for index, (a, b) in enumerate(zip(reference, candidate)):
        if a != b:
            return f"{what} differ at position {index}: {a!r} (reference) vs {b!r} (candidate)"
    if len(reference) != len(candidate):
        longer, which = (candidate, "candidate")
        if len(reference) > len(candidate):
            longer, which = reference, "reference"
        shorter = min(len(reference), len(candidate))
        return f"only the {which} has {what} {listing(longer[shorter:])}"
    return ""
