"""The result of :func:`fxpass.parity.check`: one row per check, and the report around them.

:class:`ParityReport` prints as a table (any ``tabulate`` format), summarizes in one line and
serializes as JSON (:meth:`ParityReport.to_dict`); :class:`ParityRow` is one comparison or
verdict. Both are importable from ``fxpass.parity`` and ``fxpass`` too.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import tabulate

__all__ = ["ParityReport", "ParityRow"]


@dataclasses.dataclass(frozen=True)
class ParityRow:
    """One check of a parity run.

    Attributes:
        name: what was compared, e.g. ``"train/step2/grad"`` or ``"eval/state_dict/order"``.
        passed: whether the check passed (bitwise, or within the tolerance when one was given).
        bitwise: whether everything compared was bitwise equal.
        max_abs_diff: largest absolute difference over the tensors compared; None for checks of
            names or order.
        max_rel_diff: largest difference relative to the reference's magnitude (``inf`` where the
            reference is 0 and the candidate is not); None for checks of names or order.
        detail: what differed first, or how the check went.
    """

    name: str
    passed: bool
    bitwise: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """What :func:`fxpass.parity.check` found.

    Attributes:
        model: class name of the reference model.
        candidate: how the candidate was made (``"fxpass.compile"``, a class or factory name).
        rows: one row per check, in the order run.
        modes: the modes run.
        steps: optimizer steps per mode.
        atol: absolute tolerance (0 with ``rtol`` 0: bitwise).
        rtol: relative tolerance.
        seed: the seed of the trajectories.
        compile_counts: the compile record's counts (``inlined``, ``module``, ``opaque``),
            summed over the compiled parts (``fxpass.records``), when the candidate holds
            :func:`fxpass.compile` output; else None.
        patched_modules: number of patched modules the compile found, or None.
        kept_calls: number of modules the compile kept as calls, or None.
        time_ratio: candidate / reference eager forward time, the median over the trajectories'
            steps (the first step of each left out when there are more). Indicative only: it
            is not a benchmark.
        graph_breaks: dynamo graph breaks of the candidate when the ``"dynamo"`` probe ran.
        scope: ``"model"`` or ``"module"``: how :func:`fxpass.compile` compiled the candidate (with
            ``scope="auto"``, which it chose), or None for a candidate it did not produce.
    """

    model: str
    candidate: str
    rows: tuple[ParityRow, ...]
    modes: tuple[str, ...]
    steps: int
    atol: float
    rtol: float
    seed: int
    compile_counts: dict[str, int] | None = None
    patched_modules: int | None = None
    kept_calls: int | None = None
    time_ratio: float | None = None
    graph_breaks: int | None = None
    scope: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(row.passed for row in self.rows)

    @property
    def bitwise(self) -> bool:
        """Whether every check compared bitwise-equal tensors."""
        return all(row.bitwise for row in self.rows)

    def failures(self) -> tuple[ParityRow, ...]:
        """The rows that failed, in order.

        Example:
            >>> ParityReport("M", "c", (ParityRow("a", True, True), ParityRow("b", False, False)),
            ...              ("train",), 1, 0.0, 0.0, 0).failures()[0].name
            'b'
        """
        return tuple(row for row in self.rows if not row.passed)

    def summary(self) -> str:
        """One line: the verdict, the counts and the indicative time ratio.

        Example:
            >>> ParityReport("M", "fxpass.compile", (ParityRow("a", True, True),), ("train",), 1,
            ...              0.0, 0.0, 0).summary()
            'M vs fxpass.compile: parity OK, 1/1 checks passed (bitwise)'
        """
        passed = sum(row.passed for row in self.rows)
        verdict = "parity OK" if self.ok else "parity FAILED"
        tolerance = f"atol={self.atol:g}, rtol={self.rtol:g}"
        if self.atol == 0 and self.rtol == 0:
            tolerance = "bitwise"
        text = (
            f"{self.model} vs {self.candidate}: {verdict}, "
            f"{passed}/{len(self.rows)} checks passed ({tolerance})"
        )
        if self.time_ratio is not None:
            text += f"; eager time ratio {self.time_ratio:.2f}x (indicative)"
        return text

    def table(self, fmt: str = "simple", *, failures_only: bool = False) -> str:
        """The rows as a table in any ``tabulate`` format (``"github"`` or ``"pipe"`` for markdown).

        Args:
            fmt: the ``tabulate`` table format.
            failures_only: list only the failing rows.

        Returns:
            The table, one line per row.

        Example:
            >>> report = ParityReport("M", "c", (ParityRow("train/step1/output", True, True, 0.0, 0.0),),
            ...                       ("train",), 1, 0.0, 0.0, 0)
            >>> print(report.table("github"))
            | check              | passed   | bitwise   |   max abs diff |   max rel diff | detail   |
            |--------------------|----------|-----------|----------------|----------------|----------|
            | train/step1/output | ok       | yes       |              0 |              0 |          |
        """
        rows = self.failures() if failures_only else self.rows
        body = [
            (
                row.name,
                "ok" if row.passed else "FAIL",
                "yes" if row.bitwise else "no",
                _format_diff(row.max_abs_diff),
                _format_diff(row.max_rel_diff),
                row.detail,
            )
            for row in rows
        ]
        headers = ("check", "passed", "bitwise", "max abs diff", "max rel diff", "detail")
        return tabulate.tabulate(body, headers=headers, tablefmt=fmt)

    def to_dict(self) -> dict[str, Any]:
        """Everything in the report as JSON-serializable data (non-finite floats as strings).

        Example:
            >>> import json
            >>> report = ParityReport("M", "c", (ParityRow("a", False, False, math.inf, None),),
            ...                       ("train",), 1, 0.0, 0.0, 0)
            >>> row = report.to_dict()["rows"][0]
            >>> json.dumps({k: row[k] for k in ("name", "passed", "max_abs_diff", "max_rel_diff")})
            '{"name": "a", "passed": false, "max_abs_diff": "inf", "max_rel_diff": null}'
        """
        data = {field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}
        data["ok"] = self.ok
        data["bitwise"] = self.bitwise
        data["summary"] = self.summary()
        return data


def _format_diff(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
