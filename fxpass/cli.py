"""The ``fxpass`` command line (also ``python -m fxpass``).

Commands:

* ``fxpass example``: compile a built-in patched model, show what was rewritten, check parity,
  save it whole;
* ``fxpass parity``: the parity harness over the built-in zoo, or over ``--model pkg.mod:factory``;
* ``fxpass compile pkg.mod:factory -o model.pt``: compile a user's model and save it whole;
* ``fxpass export pkg.mod:factory -o model.pt2``: compile, freeze and export a user's model
  (``torch.export`` or ONNX), then check what was written against the runtime model;
* ``fxpass inspect model.pt``: what a saved compiled model rewrote, and its generated code.

A factory is a callable without arguments that returns ``(model, example_inputs)``: the inputs
are a tuple of positional inputs, a dict of keyword inputs, or a single tensor.

Exit codes: 0 when everything asked holds, 1 when a parity check fails or an export differs from
the runtime model by more than ``--atol``, 2 on bad input (one line on stderr; ``--debug`` shows
the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import pickle
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import tabulate
import torch
import torch.fx
import torch.nn as nn

from fxpass import zoo
from fxpass._cli_export import (
    ONNX_PACKAGES,
    export_onnx,
    export_pt2,
    exporting,
    file_size,
    max_abs_error,
    one_line,
    require,
    save_file,
    tensors,
    writable,
)
from fxpass._cli_parity import parity_row, print_table
from fxpass._freeze import freeze, frozen_tensors
from fxpass._rewrite import compile, records
from fxpass.errors import CommandError, FxpassError
from fxpass.parity import check
from fxpass.record import CompileRecord, record_totals, scope_record

__all__ = ["load_factory", "main"]

FORMATS = {"text": "simple", "markdown": "github"}

#: version of the JSON that ``fxpass parity --format json`` and ``fxpass inspect --format json``
#: print; it changes only when a key is removed or changes meaning
JSON_SCHEMA = 1

#: seconds a model's parity run may take before each of its steps is reported on stderr
PROGRESS_AFTER_S = 2.0


# -- factories ------------------------------------------------------------------------------------


def load_factory(spec: str) -> Callable[[], Any]:
    """Import ``pkg.module:factory`` (:func:`main` puts the working directory first on
    ``sys.path``, as ``python -m`` does: ``fxpass parity --model mymodels:cnn`` finds
    ``./mymodels.py``).

    Raises:
        CommandError: the spec is malformed, the module does not import or lacks the name.

    Example:
        >>> load_factory("fxpass.zoo:entries").__name__
        'entries'
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CommandError(f"{spec!r} is not of the form pkg.module:factory")
    target = _import_attribute(module_name, attribute, spec)
    if not callable(target):
        raise CommandError(f"{spec!r} is not callable")
    return target


def _import_attribute(module_name: str, attribute: str, spec: str) -> Any:
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise CommandError(f"cannot import {module_name!r} (from {spec!r}): {error}") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise CommandError(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    return target


@dataclasses.dataclass
class _Built:
    """What a factory returned: the model and its example inputs, positional and keyword."""

    name: str
    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]  # fxpass.compile options (a zoo entry's own)

    def __call__(self, module: nn.Module) -> Any:
        return module(*self.args, **self.kwargs)


def _build_user_model(spec: str) -> _Built:
    factory = load_factory(spec)
    try:
        built = factory()
    except Exception as error:
        raise CommandError(f"the factory {spec} raised {type(error).__name__}: {error}") from error
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module)):
        raise CommandError(
            f"the factory {spec} must return (model, example_inputs), the inputs a tuple, a dict "
            f"of keyword inputs or one tensor; it returned a {type(built).__name__}"
        )
    model, inputs = built
    if isinstance(inputs, dict):
        return _Built(spec, model, (), dict(inputs), {})
    return _Built(spec, model, tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,), {}, {})


def _compile_options(args: argparse.Namespace, own: dict[str, Any]) -> dict[str, Any]:
    """``fxpass.compile`` options: ``--scope`` and ``--boundaries`` when given, else the zoo
    entry's own, else ``scope="auto"``."""
    options = dict(own)
    if args.scope is not None:
        options["scope"] = args.scope
    options.setdefault("scope", "auto")
    if args.boundaries:
        options["boundaries"] = tuple(_load_class(name) for name in args.boundaries.split(",") if name.strip())
    return options


def _load_class(name: str) -> type:
    """A class named ``pkg.module.Class`` (or ``pkg.module:Class``)."""
    name = name.strip()
    module_name, sep, attribute = name.partition(":") if ":" in name else name.rpartition(".")
    if not sep or not module_name or not attribute:
        raise CommandError(f"--boundaries: {name!r} is not a dotted class name (pkg.module.Class)")
    target = _import_attribute(module_name, attribute, name)
    if not (isinstance(target, type) and issubclass(target, nn.Module)):
        raise CommandError(f"--boundaries: {name} is not an nn.Module class")
    return target


def _scope_of(compiled: nn.Module) -> str:
    return "module" if scope_record(compiled) is not None else "model"


def _parts(compiled: nn.Module) -> int:
    scope = scope_record(compiled)
    return len(scope.parts) if scope is not None else len(records(compiled))


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- parity ---------------------------------------------------------------------------------------


class _StepProgress:
    """Reports a model's steps on stderr once its run has taken more than a few seconds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if time.perf_counter() - self.start > PROGRESS_AFTER_S:
            _progress(f"fxpass parity: {self.name}: {message}")


def _parity(args: argparse.Namespace) -> int:
    runs: list[_Built] = []
    skipped: list[dict[str, str]] = []
    if args.model:
        runs.append(_build_user_model(args.model))
    else:
        for entry in zoo.entries():
            if entry.missing():
                skipped.append({"model": entry.name, "reason": f"needs {', '.join(entry.missing())}"})
                continue
            model, inputs = entry.build()
            runs.append(_Built(entry.name, model, tuple(inputs), {}, entry.compile_options()))
    options = [_compile_options(args, built.options) for built in runs]  # bad --boundaries: before any run
    rows, reports = [], {}
    for built, compile_options in zip(runs, options):
        _progress(f"fxpass parity: {built.name} ...")
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # qsparse prints its schedule as it trains
            report = check(
                built.model,
                built.args,
                example_kwargs=built.kwargs,
                steps=args.steps,
                compile_options=compile_options,
                progress=_StepProgress(built.name),
            )
        rows.append(parity_row(built.name, report, time.perf_counter() - start))
        reports[built.name] = report
    ok = all(report.ok for report in reports.values())
    if args.format == "json":
        models = [{**row, "report": reports[row["model"]].to_dict()} for row in rows]
        print(json.dumps({"schema": JSON_SCHEMA, "ok": ok, "steps": args.steps, "models": models,
                          "skipped": skipped}, indent=2))  # fmt: skip
        return 0 if ok else 1
    print_table(rows, reports, skipped, args.steps, FORMATS[args.format])
    return 0 if ok else 1


# -- compile / inspect ----------------------------------------------------------------------------


def _compile(args: argparse.Namespace) -> int:
    writable(args.output)
    built = _build_user_model(args.factory)
    options = _compile_options(args, {})
    compiled = compile(built.model, inline_activations=args.inline_activations, **options)
    save_file(lambda: torch.save(compiled, args.output), args.output)
    print(
        f"compiled {type(built.model).__name__} at {_scope_of(compiled)} scope "
        f"({_parts(compiled)} part(s): {_counts(records(compiled))}) and saved it whole to {args.output}"
    )
    return 0


def _counts(parts: dict[str, CompileRecord]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in record_totals(parts.values()).items())


def _load_model(path: Path) -> nn.Module:
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    if _is_exported_program(path):
        raise CommandError(
            f"{path}: a torch.export archive (load it with torch.export.load); fxpass inspect reads "
            "models saved whole by fxpass compile or torch.save"
        )
    try:
        loaded = torch.load(path, weights_only=False)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, AttributeError, ImportError) as error:
        raise CommandError(f"{path}: not a saved model ({type(error).__name__}: {error})") from error
    if not isinstance(loaded, nn.Module):
        raise CommandError(f"{path}: holds a {type(loaded).__name__}, not a model saved whole")
    return loaded


def _is_exported_program(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/archive_format") for name in archive.namelist())


def _inspect(args: argparse.Namespace) -> int:
    model = _load_model(args.path)
    parts = records(model)
    if not parts:
        raise CommandError(f"{args.path}: a {type(model).__name__} that fxpass.compile did not produce")
    scope = scope_record(model)
    if args.format == "json":
        data = {
            "schema": JSON_SCHEMA,
            "model": type(model).__name__,
            "scope": _scope_of(model),
            "scope_reason": scope.reason if scope is not None else next(iter(parts.values())).scope_reason,
            "eager": [] if scope is None else [dataclasses.asdict(e) for e in scope.eager],
            "parts": {path: dataclasses.asdict(record) for path, record in parts.items()},
        }
        print(json.dumps(data, indent=2))
        return 0
    fmt = FORMATS[args.format]
    if scope is not None:
        print(f"# {type(model).__name__}, compiled at module scope\n\n{scope.table(fmt)}\n")
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


# -- export ---------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    target = args.format or ("onnx" if args.output.suffix == ".onnx" else "pt2")
    if target == "onnx":
        require(ONNX_PACKAGES, "--format onnx")
    writable(args.output)
    built = _build_user_model(args.factory)
    name = type(built.model).__name__
    _progress(f"fxpass export: compiling and freezing {name} ...")
    compiled = compile(built.model, **_compile_options(args, {}))
    frozen = freeze(compiled)  # before the runtime call below: a stateful transform (qsparse's)
    built.model.eval()  # moves on at every call, and the snapshot is of its first eval-mode value
    try:
        with torch.no_grad():
            expected = tensors(built(built.model))
    except Exception as error:
        raise CommandError(
            f"the runtime model {name} raised {type(error).__name__} on the example inputs of "
            f"{args.factory}: {error}"
        ) from error
    _progress(f"fxpass export: exporting to {args.output} ({target}) ...")
    with exporting(frozen, name, args.debug):
        save, run = (export_pt2 if target == "pt2" else export_onnx)(frozen, built.args, built.kwargs, args.output)
    save_file(save, args.output)
    _progress(f"fxpass export: loading {args.output} and running it against the runtime model ...")
    try:
        got = run()
    except CommandError:
        raise
    except Exception as error:
        raise CommandError(f"{args.output} was written but does not run: {one_line(error)}") from error
    error = max_abs_error(expected, got)
    row = {
        "model": name,
        "scope": _scope_of(compiled),
        "parts": _parts(compiled),
        "frozen tensors": len(frozen_tensors(frozen)),
        "format": target,
        "max abs error": f"{error:.3g}",
        "file size": file_size(args.output),
    }
    print(tabulate.tabulate([row], headers="keys"))
    if len(got) != len(expected):
        print(f"\nFAILED: {args.output} returns {len(got)} tensor(s), the runtime model {len(expected)}")
        return 1
    if not error <= args.atol:
        print(f"\nFAILED: the max abs error {error:.3g} exceeds --atol {args.atol:g}")
        return 1
    print(f"\nok: {args.output} matches the runtime model's eval output within --atol {args.atol:g}")
    return 0


# -- entry point ----------------------------------------------------------------------------------


def _add_compile_options(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument(
        "--scope",
        choices=["auto", "model", "module"],
        help=f"how fxpass.compile compiles the model (default: {default})",
    )
    parser.add_argument(
        "--boundaries",
        metavar="CLASSES",
        help="comma-separated dotted names of module classes compiled on their own (pkg.mod.Block)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fxpass", description="Compile class-patched PyTorch models into plain GraphModules.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    factory_help = "pkg.module:factory returning (model, example_inputs)"

    example = commands.add_parser("example", help="compile a built-in model, check it, save it")
    example.add_argument("--model", default="cnn_bn", choices=[e.name for e in zoo.entries()])
    example.add_argument("-o", "--output", type=Path, default=Path("fxpass-example.pt"))
    example.set_defaults(run=_example)

    parity = commands.add_parser("parity", help="check compiled models against runtime ones")
    parity.add_argument("--model", help=factory_help + " (default: the built-in zoo)")
    parity.add_argument("--steps", type=int, default=3, help="optimizer steps per mode")
    parity.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    _add_compile_options(parity, default="auto, or a zoo model's own")
    parity.set_defaults(run=_parity)

    comp = commands.add_parser("compile", help="compile a model and save it whole")
    comp.add_argument("factory", help=factory_help)
    comp.add_argument("-o", "--output", type=Path, required=True)
    _add_compile_options(comp)
    comp.add_argument(
        "--inline-activations", action="store_true", help="emit activation modules as functional calls"
    )
    comp.set_defaults(run=_compile)

    export = commands.add_parser("export", help="compile, freeze and export a model, then check the file")
    export.add_argument("factory", help=factory_help)
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument(
        "--format", choices=["pt2", "onnx"], help="torch.export or ONNX (default: onnx for a .onnx file, else pt2)"
    )
    export.add_argument("--atol", type=float, default=1e-5, help="largest abs error accepted (default 1e-5)")
    _add_compile_options(export)
    export.set_defaults(run=_export)

    inspect_ = commands.add_parser("inspect", help="show what a saved compiled model rewrote")
    inspect_.add_argument("path", type=Path)
    inspect_.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    inspect_.set_defaults(run=_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit code.

    Example:
        >>> main(["inspect", "no-such-file.pt"])
        2
    """
    args = _parser().parse_args(argv)
    if os.getcwd() not in sys.path and "" not in sys.path:  # factories, and what saved models import
        sys.path.insert(0, os.getcwd())
    try:
        return args.run(args)
    except BrokenPipeError:  # | head: the reader has what it wanted
        sys.stderr.close()
        return 0
    except FxpassError as error:
        if args.debug:
            raise
        message = " ".join(str(error).split())  # one line, whatever the message holds
        print(f"fxpass {args.command}: {message}", file=sys.stderr)
        return 2
