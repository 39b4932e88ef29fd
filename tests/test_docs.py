"""The documentation works: every guide's code runs, and the site builds with ``mkdocs build --strict``.

Code blocks. Each page under ``docs/`` runs as one script: its fenced blocks, in page order, in a
fresh namespace named ``__main__`` (so pickling what a page defines works as in a script), with a
fresh temporary directory as the working directory and on ``sys.path``. An HTML comment on the
last non-blank line before a fence changes what happens to the block:

* ```` ```python ````: executed.
* ```` ```python title="my_models.py" ````: a file of the example; written to that name in the
  working directory (so later blocks import it), not executed.
* ``<!-- no-run: why -->`` before a block: not executed (a python block is still compiled, to
  catch syntax errors); the comment says which test backs the code instead.
* ``<!-- requires: pkg ... -->`` before a block: when one of the packages is not installed, this
  block and every later block of the page are skipped, and so is the rest of the test, with the
  reason (the blocks before it still run).
* ``<!-- output -->`` before a ```` ```text ```` block: it must equal what the last executed python
  block printed (lines right-stripped, runs of blank lines taken as one, blank lines at either
  end ignored).
* ``<!-- run -->`` or ``<!-- run: exit N -->`` before a ```` ```bash ```` block: each line is an
  ``fxpass ...`` command, run in process through :func:`fxpass.cli.main`, which must return 0 (or
  ``N``). Other ``bash`` blocks (installation commands) are shown, not run.

A comment that is none of these is ignored, so ordinary comments stay possible; one that starts
with a marker word but is malformed fails the test.

The site. ``mkdocs build --strict`` runs in a subprocess into a temporary directory (skipped when
mkdocs, mkdocs-material or mkdocstrings are not installed: ``pip install ".[docs]"``), and every
public name of ``fxpass`` and ``imitation_runtime`` must have an anchor in the built reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import os
import pkgutil
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
_COMMENT = re.compile(r"^\s*<!--\s*(?P<body>.*?)\s*-->\s*$")
_MARKER = re.compile(r"^(?P<word>no-run|requires|output|run)\b(?P<rest>.*)$")
_TITLE = re.compile(r"""\btitle=["'](?P<title>[^"']+)["']""")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # line number of the first line of code (1-based)
    language: str
    title: str | None
    marker: str | None  # the marker word of the comment before the fence, if any
    argument: str  # what follows the marker word
    code: str


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order; nested fences inside a block are its content."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        closing = re.compile(rf"^{re.escape(indent)}{fence[0]}{{{len(fence)},}}\s*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page}:{index + 1}: the fence {fence} is never closed")
        code = "\n".join(line[len(indent) :] for line in lines[index + 1 : end]) + "\n"
        marker, argument = _marker_before(page, lines, index)
        language = info.split()[0].lstrip("{.").rstrip("}") if info else ""
        title = _TITLE.search(info)
        blocks.append(
            Block(page, index + 2, language, title["title"] if title else None, marker, argument, code)
        )
        index = end + 1
    return blocks


def _marker_before(page: Path, lines: list[str], fence: int) -> tuple[str | None, str]:
    previous = fence - 1
    while previous >= 0 and not lines[previous].strip():
        previous -= 1
    comment = _COMMENT.match(lines[previous]) if previous >= 0 else None
    if comment is None:
        return None, ""
    marker = _MARKER.match(comment["body"])
    if marker is None:
        return None, ""
    word, rest = marker["word"], marker["rest"].strip()
    valid = {
        "no-run": rest.startswith(":") and len(rest) > 1,
        "requires": rest.startswith(":") and bool(rest[1:].split()),
        "output": not rest,
        "run": not rest or re.fullmatch(r":\s*exit\s+\d+", rest) is not None,
    }[word]
    if not valid:
        raise AssertionError(
            f"{page}:{previous + 1}: malformed marker <!-- {comment['body']} -->; use "
            "<!-- no-run: why -->, <!-- requires: pkg ... -->, <!-- output --> or "
            "<!-- run --> / <!-- run: exit N -->"
        )
    return word, rest.lstrip(":").strip()


def _missing(packages: Iterable[str]) -> list[str]:
    """The packages (dotted names allowed) that cannot be imported."""
    missing = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _runnable(page: Path) -> bool:
    return any(
        (b.language in ("python", "py") and b.marker != "no-run") or (b.language == "bash" and b.marker == "run")
        for b in read_blocks(page)
    )


def _page_params() -> list[object]:
    return [pytest.param(p, id=str(p.relative_to(DOCS))) for p in _pages() if _runnable(p)]


class _Page:
    """Runs the blocks of one page as one script."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.module = types.ModuleType("__main__")
        self.module.__dict__["__builtins__"] = __builtins__
        self.printed: str | None = None  # stdout of the last executed python block

    def python(self, block: Block) -> None:
        where = f"{block.page.relative_to(REPO)}:{block.line}"
        # Padding keeps traceback line numbers those of the page.
        source = "\n" * (block.line - 1) + block.code
        code = compile(source, str(block.page), "exec")
        if block.marker == "no-run":
            return
        if block.title is not None:
            (self.workdir / block.title).write_text(block.code, encoding="utf-8")
            return
        out = io.StringIO()
        main = sys.modules["__main__"]
        sys.modules["__main__"] = self.module
        try:
            with contextlib.redirect_stdout(out):
                exec(code, self.module.__dict__)
        except BaseException as error:
            raise AssertionError(
                f"{where}: the block raised {type(error).__name__}: {error}\n"
                f"--- its output ---\n{out.getvalue()}"
            ) from error
        finally:
            sys.modules["__main__"] = main
        self.printed = out.getvalue()

    def shell(self, block: Block) -> None:
        from fxpass.cli import main as fxpass_main

        expected = int(block.argument.split()[-1]) if block.argument else 0
        for offset, line in enumerate(block.code.splitlines()):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{block.page.relative_to(REPO)}:{block.line + offset}"
            argv = shlex.split(line)
            assert argv[0] == "fxpass", f"{where}: a run block holds fxpass commands only, got {line!r}"
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = fxpass_main(argv[1:])
            assert code == expected, (
                f"{where}: {line!r} exited {code}, expected {expected}\n"
                f"--- stdout ---\n{out.getvalue()}--- stderr ---\n{err.getvalue()}"
            )
            self.printed = out.getvalue()

    def output(self, block: Block) -> None:
        where = f"{block.page.relative_to(REPO)}:{block.line}"
        assert self.printed is not None, f"{where}: an output block with no executed block before it"
        assert _normalized(self.printed) == _normalized(block.code), (
            f"{where}: the page shows an output that the code above it no longer prints\n"
            f"--- printed ---\n{self.printed}--- shown ---\n{block.code}"
        )


def _normalized(text: str) -> str:
    """Lines right-stripped, runs of blank lines as one, no blank lines at either end."""
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A working directory on sys.path; modules imported from it are forgotten afterwards, and
    torch's RNG state and dynamo's caches are as before."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    try:
        with torch.random.fork_rng():  # pages seed torch: leave the suite's RNG as it was
            yield tmp_path
    finally:
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(str(tmp_path)):
                del sys.modules[name]
        if "torch._dynamo" in sys.modules:
            sys.modules["torch._dynamo"].reset()


@pytest.mark.parametrize("page", _page_params())
def test_page_code_runs(page: Path, isolated: Path) -> None:
    runner = _Page(isolated)
    for block in read_blocks(page):
        if block.marker == "requires":
            missing = _missing(block.argument.replace(",", " ").split())
            if missing:
                pytest.skip(
                    f"{page.relative_to(REPO)}:{block.line} and later blocks need "
                    f"{', '.join(missing)} (not installed)"
                )
        if block.language in ("python", "py"):
            runner.python(block)
        elif block.language == "bash" and block.marker == "run":
            runner.shell(block)
        elif block.marker == "output":
            runner.output(block)


def test_markers_are_where_they_apply() -> None:
    """A marker on a block it does not apply to is a mistake (it would silently do nothing)."""
    applies = {
        "no-run": ("python", "py", "bash"),
        "requires": ("python", "py", "bash"),
        "output": ("text",),
        "run": ("bash",),
    }
    wrong = [
        f"{b.page.relative_to(REPO)}:{b.line - 1}: <!-- {b.marker} --> before a {b.language or 'plain'} block"
        for page in _pages()
        for b in read_blocks(page)
        if b.marker is not None and b.language not in applies[b.marker]
    ]
    assert not wrong, "\n".join(wrong)


# -- the site ------------------------------------------------------------------------------------

_DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
def _modules(*packages: str) -> tuple[str, ...]:
    """Each package and every module in it (but ``__main__``, which runs the command line)."""
    found = []
    for name in packages:
        found.append(name)
        inside = pkgutil.iter_modules(importlib.import_module(name).__path__)
        found += sorted(f"{name}.{m.name}" for m in inside if m.name != "__main__")
    return tuple(found)


_MODULES = _modules("fxpass", "imitation_runtime")
#: The modules whose names do not start with an underscore: every name in their __all__ is documented.
_PUBLIC_MODULES = tuple(m for m in _MODULES if not m.rpartition(".")[2].startswith("_"))


def _docs_missing() -> list[str]:
    return _missing(_DOCS_PACKAGES)


def _anchors(site: Path) -> set[str]:
    found: set[str] = set()
    for page in site.rglob("*.html"):
        found.update(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))
    return found


_BUILD_TEST = "test_mkdocs_build_is_strict_clean_and_documents_every_public_name"


class _Build:
    """``mkdocs build --strict`` in a subprocess, started before the pages run, so that the build
    and the pages' code share the wall-clock time."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self.log = site.parent / "mkdocs.log"
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
            cwd=REPO,
            env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            self._log_file.close()
        return code, self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


@pytest.fixture(scope="module", autouse=True)
def site_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The site build, started as soon as this module's first test runs, when the build test is
    among the selected tests and mkdocs is installed; None otherwise."""
    selected = any(item.name == _BUILD_TEST for item in request.session.items)
    if not selected or _docs_missing():
        yield None
        return
    build = _Build(tmp_path_factory.mktemp("docs") / "site")
    try:
        yield build
    finally:
        build.stop()


@pytest.mark.skipif(
    bool(_docs_missing()),
    reason=f"the [docs] extra is not installed (missing {', '.join(_docs_missing())})",
)
def test_mkdocs_build_is_strict_clean_and_documents_every_public_name(site_build: _Build | None) -> None:
    assert site_build is not None
    code, log = site_build.wait()
    assert code == 0, log
    assert "WARNING" not in log, log
    anchors = _anchors(site_build.site)
    # Every path a public module exports an object under (fxpass.CompileRecord is
    # fxpass.record.CompileRecord), and its canonical name: one anchor among them documents it.
    # (internal modules count as paths too: a constant re-exported from one is documented there)
    paths: dict[int, set[str]] = {}
    exported: list[tuple[str, object]] = []
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            canonical = getattr(obj, "__name__", "") if isinstance(obj, types.ModuleType) else (
                f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
            )
            paths.setdefault(id(obj), {canonical}).add(f"{module_name}.{name}")
            if module_name in _PUBLIC_MODULES:
                exported.append((f"{module_name}.{name}", obj))
    undocumented = [path for path, obj in exported if not paths[id(obj)] & anchors]
    assert not undocumented, f"public names without an entry in the API reference: {undocumented}"
