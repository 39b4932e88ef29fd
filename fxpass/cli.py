"""The ``fxpass`` command line (also ``python -m fxpass``).

Commands:

* ``fxpass example``: compile a built-in patched model, show what was rewritten, check parity,
  save it whole;
* ``fxpass parity``: the parity harness over the built-in zoo, or over ``--model pkg.mod:factory``;
* ``fxpass compile pkg.mod:factory -o model.pt``: compile a user's model and save it whole;
* ``fxpass inspect model.pt``: what a saved compiled model rewrote, and its generated code.

Exit codes: 0 when everything asked holds, 1 when a parity check fails, 2 on bad input (one line
on stderr; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import tabulate
import torch
import torch.fx
import torch.nn as nn

from fxpass import zoo
from fxpass.errors import FxpassError
from fxpass.parity import ParityReport, check
from fxpass.record import CompileRecord
from fxpass.rewrite import compile, records

__all__ = ["CommandError", "load_factory", "main"]

FORMATS = {"text": "simple", "markdown": "github"}


class CommandError(FxpassError, ValueError):
    """Bad input at the command line: a path that does not import, a file that is not a model."""


def load_factory(spec: str) -> Callable[[], Any]:
    """Import ``pkg.module:factory``.

    Raises:
        CommandError: the spec is malformed, the module does not import or lacks the name.

    Example:
        >>> load_factory("fxpass.zoo:entries").__name__
        'entries'
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"{spec!r} is not of the form pkg.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CommandError(f"cannot import {module_name!r} (from {spec!r}): {error}") from error
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f"{spec!r} is not callable")
    return target


def _build_user_model(spec: str) -> tuple[nn.Module, tuple[Any, ...]]:
    factory = load_factory(spec)
    try:
        built = factory()
    except Exception as error:
        raise CommandError(f"the factory {spec} raised {type(error).__name__}: {error}") from error
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module)):
        raise CommandError(f"the factory {spec} must return (model, example_inputs)")
    model, inputs = built
    return model, tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- parity ---------------------------------------------------------------------------------------


def _verdict(report: ParityReport, *parts: str) -> str:
    rows = [r for r in report.rows if any(part in r.name for part in parts)]
    if not rows:
        return "-"
    return "ok" if all(r.passed for r in rows) else "FAIL"


def _zoo_row(name: str, report: ParityReport, seconds: float) -> dict[str, Any]:
    counts = report.compile_counts or {}
    return {
        "model": name,
        "patched": report.patched_modules,
        "inlined": counts.get("inlined"),
        "module": counts.get("module"),
        "opaque": counts.get("opaque"),
        "kept calls": report.kept_calls,
        "train fwd": _verdict(report, "train/step1/output"),
        "eval fwd": _verdict(report, "eval/step1/output"),
        "grads": _verdict(report, "/grad"),
        f"{report.steps}-step trajectory": _verdict(report, "/params", "/buffers", "/output"),
        "state_dict": _verdict(report, "state_dict/", "param_names"),
        "save/load": _verdict(report, "save_load/"),
        "time ratio": None if report.time_ratio is None else round(report.time_ratio, 2),
        "ok": report.ok,
        "seconds": round(seconds, 1),
    }


def _parity(args: argparse.Namespace) -> int:
    runs: list[tuple[str, nn.Module, tuple[Any, ...], dict[str, Any]]] = []
    skipped: list[tuple[str, str]] = []
    if args.model:
        model, inputs = _build_user_model(args.model)
        runs.append((args.model, model, inputs, {}))
    else:
        for entry in zoo.entries():
            if entry.missing():
                skipped.append((entry.name, f"needs {', '.join(entry.missing())}"))
                continue
            model, inputs = entry.build()
            runs.append((entry.name, model, inputs, entry.compile_options()))
    rows, reports = [], {}
    for name, model, inputs, options in runs:
        _progress(f"fxpass parity: {name} ...")
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # qsparse prints its schedule as it trains
            report = check(model, inputs, steps=args.steps, compile_options=options)
        rows.append(_zoo_row(name, report, time.perf_counter() - start))
        reports[name] = report
    ok = all(report.ok for report in reports.values())
    if args.format == "json":
        print(json.dumps({"ok": ok, "models": rows, "skipped": skipped,
                          "reports": {k: r.to_dict() for k, r in reports.items()}}, indent=2))
    else:
        fmt = FORMATS[args.format]
        print(tabulate.tabulate([{k: v for k, v in row.items() if k != "seconds"} for row in rows],
                                headers="keys", tablefmt=fmt))
        for name, reason in skipped:
            print(f"skipped {name}: {reason}")
        for name, report in reports.items():
            if not report.ok:
                print(f"\n{report.summary()}\n{report.table(fmt, failures_only=True)}")
        print("\ntime ratio: compiled / runtime eager forward, indicative (see benchmarks/)")
    return 0 if ok else 1


# -- compile / inspect ----------------------------------------------------------------------------


def _compile(args: argparse.Namespace) -> int:
    model, _ = _build_user_model(args.factory)
    compiled = compile(model, scope=args.scope, inline_activations=args.inline_activations)
    torch.save(compiled, args.output)
    counts = _counts(records(compiled))
    print(f"compiled {type(model).__name__} ({counts}) and saved it whole to {args.output}")
    return 0


def _counts(parts: dict[str, CompileRecord]) -> str:
    total = dict.fromkeys(("inlined", "module", "opaque"), 0)
    for record in parts.values():
        for kind, n in record.counts().items():
            total[kind] += n
    return ", ".join(f"{n} {kind}" for kind, n in total.items())


def _load_model(path: Path) -> nn.Module:
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    try:
        loaded = torch.load(path, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError, ImportError) as error:
        raise CommandError(f"{path}: not a saved model ({type(error).__name__}: {error})") from error
    if not isinstance(loaded, nn.Module):
        raise CommandError(f"{path}: holds a {type(loaded).__name__}, not a model saved whole")
    return loaded


def _inspect(args: argparse.Namespace) -> int:
    model = _load_model(args.path)
    parts = records(model)
    if not parts:
        raise CommandError(f"{args.path}: a {type(model).__name__} that fxpass.compile did not produce")
    fmt = FORMATS.get(args.format, "simple")
    if args.format == "json":
        import dataclasses

        print(json.dumps({path: dataclasses.asdict(record) for path, record in parts.items()}, indent=2))
        return 0
    for path, record in parts.items():
        part = model.get_submodule(path)
        print(f"# {path or '<model>'} ({type(part).__name__}): {_counts({path: record})}\n")
        print(record.table(fmt), end="\n\n")
        assert isinstance(part, torch.fx.GraphModule)
        print(part.code)
    return 0


def _example(args: argparse.Namespace) -> int:
    entry = zoo.get(args.model)
    if entry.missing():
        raise CommandError(f"the example {entry.name!r} needs {', '.join(entry.missing())}")
    model, inputs = entry.build()
    print(f"# {entry.name}: {entry.description}\n")
    compiled = compile(model, **entry.compile_options())  # type: ignore[arg-type]
    for path, record in records(compiled).items():
        print(record.table(), end="\n\n")
        print(f"# generated code of {path or 'the model'}", compiled.get_submodule(path).code, sep="\n")
    _progress("checking parity with the runtime-patched model ...")
    with contextlib.redirect_stdout(sys.stderr):
        report = check(model, inputs, compile_options=entry.compile_options())
    print(report.summary())
    if not report.ok:
        print(report.table(failures_only=True))
    torch.save(compiled, args.output)
    loaded = torch.load(args.output, weights_only=False).eval()
    same = torch.equal(loaded(*inputs), model.eval()(*inputs))
    print(f"saved the whole compiled model to {args.output}; reloaded output equal: {same}")
    return 0 if report.ok and same else 1


# -- entry point ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxpass", description="Compile class-patched PyTorch models into plain GraphModules.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    example = commands.add_parser("example", help="compile a built-in model, check it, save it")
    example.add_argument("--model", default="cnn_bn", choices=[e.name for e in zoo.entries()])
    example.add_argument("-o", "--output", type=Path, default=Path("fxpass-example.pt"))
    example.set_defaults(run=_example)

    parity = commands.add_parser("parity", help="check compiled models against runtime ones")
    parity.add_argument("--model", help="pkg.module:factory returning (model, example_inputs)")
    parity.add_argument("--steps", type=int, default=3, help="optimizer steps per mode")
    parity.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    parity.set_defaults(run=_parity)

    comp = commands.add_parser("compile", help="compile a model and save it whole")
    comp.add_argument("factory", help="pkg.module:factory returning (model, example_inputs)")
    comp.add_argument("-o", "--output", type=Path, required=True)
    comp.add_argument("--scope", choices=["model", "module"], default="model")
    comp.add_argument(
        "--inline-activations", action="store_true", help="emit activation modules as functional calls"
    )
    comp.set_defaults(run=_compile)

    inspect = commands.add_parser("inspect", help="show what a saved compiled model rewrote")
    inspect.add_argument("path", type=Path)
    inspect.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    inspect.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code.

    Example:
        >>> main(["inspect", "no-such-file.pt"])
        2
    """
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except FxpassError as error:
        if args.debug:
            raise
        print(f"fxpass {args.command}: {error}", file=sys.stderr)
        return 2
