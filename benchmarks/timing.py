"""The timing method: two callables, interleaved, compared by the median of per-round ratios.

A round makes ``inner`` calls of A and ``inner`` calls of B in pairs, each call timed on its own,
the order within a pair alternating (A B, B A, ...), with the garbage collector off and a
collection before the round. Pairing call by call means that whatever the machine does meanwhile
(another process, a clock change) lands on both sides alike instead of on one block. A round
yields one ratio ``t(A) / t(B)`` of the summed times; the figure is the median of those ratios,
and their quartiles say how much the machine moved. Absolute times are kept only as a detail.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
from typing import Any, Callable

__all__ = ["Comparison", "compare", "quartiles"]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`.

    Attributes:
        ratio: median over rounds of ``t(A) / t(B)``.
        ratios: the per-round ratios, in round order.
        a_s: median seconds per call of A.
        b_s: median seconds per call of B.
        inner: calls per timed block.
    """

    ratio: float
    ratios: tuple[float, ...]
    a_s: float
    b_s: float
    inner: int

    def spread(self, scale: float = 1.0) -> str:
        """The quartiles of the per-round ratios (times ``scale``), for the notes column."""
        low, high = quartiles(self.ratios)
        return f"IQR {low * scale:.3f}-{high * scale:.3f}, {len(self.ratios)} rounds"

    def detail(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        low, high = quartiles(self.ratios)
        return {
            "ratio": self.ratio,
            "q1": low,
            "q3": high,
            "rounds": len(self.ratios),
            "inner": self.inner,
            "a_s": self.a_s,
            "b_s": self.b_s,
        }


def quartiles(values: tuple[float, ...] | list[float]) -> tuple[float, float]:
    """The first and third quartiles (the values themselves when fewer than two).

    Example:
        >>> quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
        (1.5, 4.5)
    """
    if len(values) < 2:
        only = values[0] if values else math.nan
        return only, only
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def _round(a: Callable[[], Any], b: Callable[[], Any], inner: int, first: int) -> tuple[float, float]:
    """Seconds spent in ``inner`` calls of each, in pairs whose order alternates (A B, B A, ...;
    ``first`` odd starts with B A)."""
    gc.collect()
    clock = time.perf_counter
    spent_a = spent_b = 0.0
    for index in range(first, first + inner):
        if index % 2 == 0:
            t0 = clock()
            a()
            t1 = clock()
            b()
            t2 = clock()
            spent_a += t1 - t0
            spent_b += t2 - t1
        else:
            t0 = clock()
            b()
            t1 = clock()
            a()
            t2 = clock()
            spent_b += t1 - t0
            spent_a += t2 - t1
    return spent_a, spent_b


def compare(
    a: Callable[[], Any],
    b: Callable[[], Any],
    *,
    rounds: int,
    warmup: int = 3,
    min_block_s: float = 0.05,
) -> Comparison:
    """Time ``a`` against ``b``: warm-up, then ``rounds`` interleaved rounds with gc off.

    Args:
        a: the callable under test.
        b: the reference.
        rounds: how many ratios to take the median of.
        warmup: untimed calls of each before anything is measured.
        min_block_s: a round makes enough calls of each to last about this long.

    Returns:
        The median ratio and what it was computed from.

    Example:
        >>> c = compare(lambda: sum(range(2000)), lambda: sum(range(1000)), rounds=3, min_block_s=0.001)
        >>> c.ratio > 1, len(c.ratios)
        (True, 3)
    """
    for _ in range(warmup):
        a()
        b()
    enabled = gc.isenabled()
    gc.disable()
    # Objects alive now are moved out of the collector's sight, so the collection before each
    # block only walks what the calls themselves left behind (a full one takes ~0.2 s here).
    gc.collect()
    gc.freeze()
    try:
        spent_a, spent_b = _round(a, b, 1, 0)
        inner = max(1, math.ceil(min_block_s / max(spent_a, spent_b, 1e-9)))
        ratios: list[float] = []
        times_a: list[float] = []
        times_b: list[float] = []
        for index in range(rounds):
            ta, tb = _round(a, b, inner, index)
            ratios.append(ta / tb)
            times_a.append(ta / inner)
            times_b.append(tb / inner)
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        gc.collect()
    return Comparison(
        ratio=statistics.median(ratios),
        ratios=tuple(ratios),
        a_s=statistics.median(times_a),
        b_s=statistics.median(times_b),
        inner=inner,
    )
