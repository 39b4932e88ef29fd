"""The benchmark command: run the figures, print the table, write the JSON.

``python -m benchmarks`` runs every figure but the torch.compile ones (a few minutes);
``--inductor`` adds those (several more minutes: each cold start is a fresh process);
``--quick`` runs everything at tiny sizes, only to check that the scripts work.
``--real`` runs the real-model section instead (:mod:`benchmarks.real`), with the same
``--quick`` and ``--inductor``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch
from tabulate import tabulate

from benchmarks.child import REPO
from benchmarks.figures import BENCHMARKS, FIGURES, Measured, Settings
from benchmarks.models import TRANSFORMS
from benchmarks.real_models import REAL_MODELS

__all__ = ["main", "met", "rows", "run"]

DEFAULT_JSON = REPO / "benchmarks" / "results.json"
DEFAULT_REAL_JSON = REPO / "benchmarks" / "results-real.json"
HEADERS = ("figure", "ratio", "target", "met", "notes")
#: Every figure is measured on one thread (the method of issue 5).
THREADS = 1


def met(value: float | None, target: float | None) -> str:
    """``yes``, ``no``, or ``n/a`` when there is no value or no target.

    Example:
        >>> met(0.7, 0.8), met(0.9, 0.8), met(0.9, None), met(None, 0.8)
        ('yes', 'no', 'n/a', 'n/a')
    """
    if value is None or target is None:
        return "n/a"
    return "yes" if value <= target else "no"


def run(settings: Settings, only: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Measure every figure; a figure whose benchmark is skipped or fails still gets a row.

    Args:
        settings: sizes and repetitions.
        only: names of the benchmarks to run (all when empty); the others are marked skipped.

    Returns:
        key -> the figure's JSON object (``figure``, ``ratio``, ``target``, ``met``, ``notes``,
        ``detail``), in table order.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(settings, only)
    finally:
        torch.set_num_threads(threads)  # callers in the same process (the tests) keep theirs


def _run(settings: Settings, only: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, Measured] = {}
    for index, bench in enumerate(BENCHMARKS, 1):
        if only and bench.name not in only:
            skipped = Measured(None, "skipped (not in --only)")
        elif bench.needs_inductor and not settings.inductor:
            skipped = Measured(None, "skipped (run with --inductor)")
        else:
            skipped = None
        if skipped is not None:
            found.update(dict.fromkeys(bench.keys, skipped))
            continue
        print(f"[{index}/{len(BENCHMARKS)}] {bench.name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            measured = bench.run(settings)
        except Exception as error:  # noqa: BLE001 - one failing benchmark must not hide the rest
            traceback.print_exc(file=sys.stderr)
            measured = dict.fromkeys(bench.keys, Measured.failed(error))
        missing = set(bench.keys) - set(measured)
        if missing:
            raise AssertionError(f"benchmark {bench.name} did not measure {sorted(missing)}")
        found.update(measured)
        print(f"    {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    fields = vars(settings)
    results = {}
    for key, figure in FIGURES.items():
        m = found[key]
        results[key] = {
            "figure": figure.label.format(**fields),
            "ratio": m.value,
            "target": figure.target,
            "met": met(m.value, figure.target),
            "notes": m.notes,
            "detail": m.detail,
        }
    return results


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The table rows: figure, ratio, target, met, notes."""
    table = []
    for r in results.values():
        value = r["ratio"]
        shown = "-" if value is None else (f"{value:.0f}" if r["target"] == 0 else f"{value:.3f}")
        target = "-" if r["target"] is None else f"<= {r['target']:g}"
        table.append((r["figure"], shown, target, r["met"], r["notes"]))
    return table


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _meta(settings: Settings, elapsed: float) -> dict[str, Any]:
    return {
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": _git("status", "--porcelain", "--", "fxpass", "imitation_runtime").splitlines(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "threads": THREADS,
        "settings": vars(settings),
        "transform": (TRANSFORMS[settings.transform].__doc__ or settings.transform).splitlines()[0],
        "seconds": round(elapsed, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks from the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Run the fxpass benchmarks.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and rounds: check the scripts run")
    parser.add_argument("--inductor", action="store_true", help="also run the torch.compile figures")
    parser.add_argument("--real", action="store_true", help="the real-model section (benchmarks/real.py)")
    parser.add_argument(
        "--models", nargs="+", default=(), metavar="NAME",
        help="with --real, only these models (" + ", ".join(m.name for m in REAL_MODELS) + ")",
    )
    parser.add_argument(
        "--json", type=Path,
        help=f"where to write results (default {DEFAULT_JSON.relative_to(REPO)}, with --real "
        f"{DEFAULT_REAL_JSON.relative_to(REPO)})",
    )
    parser.add_argument("--transform", choices=sorted(TRANSFORMS), default="fakequant", help="weight transform of every peer")
    parser.add_argument("--rounds", type=int, help="rounds of every eager timing")
    parser.add_argument("--table-format", default="simple", help="tabulate format of the table (github for Markdown)")
    parser.add_argument(
        "--only", nargs="+", choices=[b.name for b in BENCHMARKS], default=(), metavar="NAME",
        help=f"run only these benchmarks ({', '.join(b.name for b in BENCHMARKS)})",
    )
    args = parser.parse_args(argv)
    if args.real:
        return _main_real(args)
    args.json = args.json or DEFAULT_JSON
    overrides: dict[str, Any] = {"inductor": args.inductor, "transform": args.transform}
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    settings = Settings.quick_settings(**overrides) if args.quick else Settings(**overrides)

    start = time.perf_counter()
    results = run(settings, args.only)
    meta = _meta(settings, time.perf_counter() - start)
    print(tabulate(rows(results), headers=HEADERS, tablefmt=args.table_format, disable_numparse=True))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "figures": results}, indent=2) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def _main_real(args: argparse.Namespace) -> int:
    from benchmarks import real

    overrides: dict[str, Any] = {"inductor": args.inductor, "models": tuple(args.models)}
    if args.rounds is not None:
        overrides["rounds"] = args.rounds
    settings = real.RealSettings.quick_settings(**overrides) if args.quick else real.RealSettings(**overrides)
    start = time.perf_counter()
    results = real.run(settings)
    meta = _meta(Settings(quick=args.quick, inductor=args.inductor), time.perf_counter() - start)
    meta["settings"] = dataclasses.asdict(settings)
    meta["transform"] = "fake_quant (straight-through, 1/16 grid) on every Linear, Conv2d and Conv1D"
    print(real.table(results, args.table_format))
    path = args.json or DEFAULT_REAL_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, **real.to_json(results)}, indent=2) + "\n")
    print(f"\nwrote {path}", file=sys.stderr)
    return 0
