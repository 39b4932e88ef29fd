"""How ``fxpass parity`` shows its results: one row per model, with the scope used, what the compile
found and a verdict per kind of check (the keys of :data:`COLUMNS`, which are also the keys of a
model's object in ``--format json``), printed as a text or markdown table followed by the zoo models
skipped and the failing rows of each model that failed. The command itself, which builds the models
and runs the parity harness on them, is ``_parity`` in :mod:`fxpass.cli`.
"""

from __future__ import annotations

from typing import Any

import tabulate

from fxpass.parity import ParityReport

#: the keys of a model's row in ``fxpass parity --format json``, with their column in the table
COLUMNS = {
    "model": "model",
    "scope": "scope",
    "patched": "patched",
    "inlined": "inlined",
    "module": "module",
    "opaque": "opaque",
    "kept_calls": "kept calls",
    "train_forward": "train fwd",
    "eval_forward": "eval fwd",
    "grads": "grads",
    "trajectory": "{steps}-step trajectory",
    "state_dict": "state_dict",
    "save_load": "save/load",
    "time_ratio": "time ratio",
    "ok": "ok",
}


def _verdict(report: ParityReport, *parts: str) -> str:
    rows = [r for r in report.rows if any(part in r.name for part in parts)]
    if not rows:
        return "-"
    return "ok" if all(r.passed for r in rows) else "FAIL"


def parity_row(name: str, report: ParityReport, seconds: float) -> dict[str, Any]:
    counts = report.compile_counts or {}
    return {
        "model": name,
        "scope": report.scope,
        "patched": report.patched_modules,
        "inlined": counts.get("inlined"),
        "module": counts.get("module"),
        "opaque": counts.get("opaque"),
        "kept_calls": report.kept_calls,
        "train_forward": _verdict(report, "train/step1/output"),
        "eval_forward": _verdict(report, "eval/step1/output"),
        "grads": _verdict(report, "/grad"),
        "trajectory": _verdict(report, "/params", "/buffers", "/output"),
        "state_dict": _verdict(report, "state_dict/", "param_names"),
        "save_load": _verdict(report, "save_load/"),
        "time_ratio": None if report.time_ratio is None else round(report.time_ratio, 2),
        "ok": report.ok,
        "seconds": round(seconds, 1),
    }


def print_table(
    rows: list[dict[str, Any]], reports: dict[str, ParityReport], skipped: list[dict[str, str]], steps: int, fmt: str
) -> None:
    """Print the rows as a ``tabulate`` table of format ``fmt``, then the skipped models and the
    failing rows of each report that failed."""
    headers = {key: column.format(steps=steps) for key, column in COLUMNS.items()}
    print(tabulate.tabulate([[row[key] for key in headers] for row in rows], headers=list(headers.values()),
                            tablefmt=fmt))  # fmt: skip
    for skip in skipped:
        print(f"skipped {skip['model']}: {skip['reason']}")
    for report in reports.values():
        if not report.ok:
            print(f"\n{report.summary()}\n{report.table(fmt, failures_only=True)}")
    print("\ntime ratio: compiled / runtime eager forward, indicative (see benchmarks/)")
