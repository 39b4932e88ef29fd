"""The work behind ``fxpass export``, whose command (``_export`` in :mod:`fxpass.cli`) builds,
compiles and freezes the factory's model and prints the result: writing the frozen model with
``torch.export`` or the ONNX exporter, then loading and running what was written (an ONNX graph fed
the example inputs' tensors by name); one line for an exporter's failure that names the module it
failed in; the largest absolute error between the runtime model's outputs and the file's; the
packages a format needs; and the output-file checks that ``fxpass compile`` shares (a path that can be
written, checked before any work, a save whose failure is a :class:`~fxpass.errors.CommandError`, a
file size for people).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from fxpass.errors import CommandError

#: what ``fxpass export --format onnx`` imports, all in the ``[export]`` extra
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")

Exported = tuple[Callable[[], object], Callable[[], list[torch.Tensor]]]  # (save, load and run)


def export_pt2(frozen: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], path: Path) -> Exported:
    """``torch.export`` of ``frozen`` on the example inputs: how to save it to ``path``, and how to load that file
    and run it on the same inputs."""
    program = torch.export.export(frozen, args, kwargs)

    def run() -> list[torch.Tensor]:
        with torch.no_grad():
            return tensors(torch.export.load(path).module()(*args, **kwargs))

    return lambda: torch.export.save(program, path), run


def export_onnx(frozen: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], path: Path) -> Exported:
    """The dynamo ONNX export of ``frozen`` on the example inputs: how to save it to ``path``, and how to run that
    file with onnxruntime on the same inputs."""
    with contextlib.redirect_stdout(sys.stderr):  # the exporter reports its stages on stdout
        program = torch.onnx.export(frozen, args, kwargs=kwargs, dynamo=True, verbose=False)
    feeds = _onnx_feeds(frozen, args, kwargs)

    def run() -> list[torch.Tensor]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        by_name = {n: feeds[n] for n in names if n in feeds}
        values = [by_name[n] for n in names] if len(by_name) == len(names) else list(feeds.values())
        if len(values) != len(names):
            raise CommandError(
                f"{path}: the ONNX graph takes {len(names)} input(s) ({', '.join(names)}), "
                f"the example inputs hold {len(values)} tensor(s)"
            )
        outputs = session.run(None, {n: v.numpy() for n, v in zip(names, values)})
        return [torch.from_numpy(output) for output in outputs]

    return lambda: program.save(str(path)), run


def _onnx_feeds(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensor inputs, by the name the ONNX exporter gives them (the forward's argument names;
    nested inputs ``name_0``, ``name_1``, ...), in the order of the forward's arguments."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except TypeError:
        bound = {f"input_{i}": value for i, value in enumerate(args)} | kwargs
    feeds: dict[str, torch.Tensor] = {}
    for argument, value in bound.items():
        leaves = [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]
        if isinstance(value, torch.Tensor):
            feeds[argument] = value.detach()
        else:
            feeds.update({f"{argument}_{i}": leaf.detach() for i, leaf in enumerate(leaves)})
    return feeds


@contextlib.contextmanager
def exporting(model: nn.Module, name: str, debug: bool) -> Iterator[None]:
    """Turn an exporter's failure into one line that names the module it failed in (and keep
    torch's own warnings and the partial graph it prints on a failure quiet, unless ``--debug``)."""
    try:
        with contextlib.nullcontext() if debug else _torch_logs_quiet():
            yield
    except (CommandError, KeyboardInterrupt):
        raise
    except Exception as error:
        where = _failing_module(error, model)
        cache = re.search(r"<class '(?:[\w.]*\.)?(\w*Cache)'>", _chain_text(error))
        if cache is not None:  # the usual first failure of a transformers model
            article = "an" if cache[1][0] in "AEIOU" else "a"
            raise CommandError(
                f"cannot export {name}{where}: its output holds {article} {cache[1]}, and transformers' "
                "caches are not pytree nodes: export the forward without one (use_cache=False in the "
                "factory's keyword inputs)"
            ) from error
        raise CommandError(f"cannot export {name}{where}: {one_line(error)}") from error


def one_line(error: BaseException) -> str:
    """``Type: first line`` of the innermost error ``error`` was raised from (the ONNX exporter
    wraps what torch.export raised), without terminal colours, at most a few hundred characters."""
    while error.__cause__ is not None:
        error = error.__cause__
    reason = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split("\n", 1)[0].split())
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__


def _chain_text(error: BaseException) -> str:
    texts, current = [], error
    while current is not None and len(texts) < 10:
        texts.append(str(current))
        current = current.__cause__
    return "\n".join(texts)


@contextlib.contextmanager
def _torch_logs_quiet() -> Iterator[None]:
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _failing_module(error: BaseException, model: nn.Module) -> str:
    """`` in module 'path' (Class)`` for the innermost module of ``model`` whose code the
    traceback of ``error`` (or of the errors it was raised from) passes through, else ``""``."""
    names = {id(module): path for path, module in model.named_modules()}
    found: nn.Module | None = None
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for frame, _ in traceback.walk_tb(current.__traceback__):
            owner = frame.f_locals.get("self")
            if id(owner) in names:
                found = owner
        current = current.__cause__ or current.__context__
    if found is None or not names[id(found)]:
        return ""
    return f" in module {names[id(found)]!r} ({type(found).__name__})"


def tensors(output: Any) -> list[torch.Tensor]:
    """The tensors of a model's output, detached, in pytree order."""
    return [leaf.detach() for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor)]


def max_abs_error(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """The largest absolute difference over the output tensors (NaN where both are NaN counts as
    equal; a shape mismatch or a NaN on one side only is infinite)."""
    worst = 0.0
    for want, have in zip(expected, got):
        if want.shape != have.shape:
            return math.inf
        want, have = want.double(), have.double()
        both_nan = want.isnan() & have.isnan()
        difference = torch.where(both_nan, 0.0, (want - have).abs()).nan_to_num(nan=math.inf)
        if difference.numel():
            worst = max(worst, float(difference.max()))
    return worst


def require(packages: Sequence[str], what: str) -> None:
    """Refuse ``what`` (an option) when one of ``packages`` does not import, naming the extra that has them."""
    missing = []
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise CommandError(f"{what} needs {', '.join(missing)}: pip install \"fxpass[export]\"")


# -- output files ---------------------------------------------------------------------------------


def writable(path: Path) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    if path.is_dir():
        raise CommandError(f"cannot write {path}: it is a directory")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise CommandError(f"cannot write {path}: {parent} is not a directory")
    if not parent.is_dir():
        raise CommandError(f"cannot write {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CommandError(f"cannot write {path}: permission denied")


def save_file(save: Callable[[], object], path: Path) -> None:
    """Run ``save``, which writes ``path``; its failure to write is a one-line :class:`CommandError`."""
    try:
        save()
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror or error}") from error
    except RuntimeError as error:  # torch's archive writer
        reason = re.search(r"strerror: (.*)", str(error))
        raise CommandError(f"cannot write {path}: {reason[1] if reason else error}") from error


def file_size(path: Path) -> str:
    """The size of the file at ``path``, for people (``512 B``, ``1.5 MiB``)."""
    size = float(path.stat().st_size)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
