"""Bad input, across the whole public surface: each case raises an error of a fitting type (one
base class per package, deriving from a builtin), whose message says what is wrong, where, and
what to do; and nothing is mutated. docs/bad-input.md lists the same cases."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import threading
import pickle
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import fxpass
from fxpass.cli import main
from imitation_runtime import errors as runtime_errors
from imitation_runtime import imitate, unimitate
from tests.support import assert_same_snapshot, snapshot

DOCS = Path(__file__).resolve().parents[1] / "docs" / "bad-input.md"


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(3, 3), "halve", lambda w: w / 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else x


class ReadsHeadMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(3, 3), "halve", lambda w: w / 2)
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.dropout(self.fc(x), 0.5, self.training)
        return y if self.head.training else self.head(y)


def _mixed_modes(model: nn.Module) -> None:
    compiled = fxpass.compile(model)
    compiled.head.eval()  # a mode neither graph was traced in
    compiled(torch.ones(2, 3))


class FailsInEval(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise ValueError("no calibration data")
        return w


class Sneaky(nn.Linear):
    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self._parameters["weight"] * 3


def _sneaky() -> nn.Module:
    layer = nn.Linear(2, 2)
    layer.__class__ = Sneaky
    return nn.Sequential(layer)


# A class made at run time (pickle cannot find it by name): a class patch fxpass does not know.
Doubling = type("Linear", (nn.Linear,), {"weight": property(lambda self: self._parameters["weight"] * 2)})


def _unknown_patch() -> nn.Module:
    layer = nn.Linear(2, 2)
    layer.weight.requires_grad_(False)  # no gradient: only its origin shows the tensor is state
    layer.__class__ = Doubling
    return nn.Sequential(layer)


class FromBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("raw", torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self._buffers["raw"] * 2)


class CachesItself(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = parametrize.register_parametrization(nn.Linear(2, 2), "weight", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with parametrize.cached():
            return self.fc(self.fc(x))


class Locked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w


def _patched_on_top() -> nn.Module:
    layer = imitate(nn.Linear(3, 3), "halve", lambda w: w / 2)
    parametrize.register_parametrization(layer, "bias", nn.Identity())
    return layer


def _cli(*argv: str) -> Callable[[Any], Any]:
    def run(_: Any) -> None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(list(argv))
        if code != 2:
            raise AssertionError(f"exit {code}")
        raise SystemExit(err.getvalue().strip().splitlines()[-1])  # the error line, after any progress

    return run


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], Any]  # the object the call receives (snapshotted when a module)
    call: Callable[[Any], Any]
    error: type[BaseException]
    words: tuple[str, ...]
    base: type[BaseException] = fxpass.FxpassError


R = runtime_errors.ImitationError
CASES = [
    Case("imitate-not-a-module", lambda: torch.ones(2), lambda t: imitate(t, "halve", abs),
         TypeError, ("imitate", "Tensor", "nn.Module"), R),
    Case("imitate-no-weight", nn.ReLU, lambda m: imitate(m, "halve", abs),
         ValueError, ("ReLU", "weight"), R),
    Case("imitate-dotted-name", lambda: nn.Linear(2, 2), lambda m: imitate(m, "a.b", abs),
         ValueError, ("'a.b'", "dotted", "'a_b'"), R),
    Case("imitate-name-collides", lambda: nn.Linear(2, 2), lambda m: imitate(m, "forward", abs),
         ValueError, ("forward", "choose another name"), R),
    Case("imitate-not-callable", lambda: nn.Linear(2, 2), lambda m: imitate(m, "halve", 0.5),
         TypeError, ("halve", "callable"), R),
    Case("imitate-bias-thing-without-bias", lambda: nn.Embedding(3, 2),
         lambda m: imitate(m, "halve", abs, abs), ValueError, ("Embedding", "bias"), R),
    Case("unimitate-not-imitated", lambda: nn.Linear(2, 2), unimitate,
         ValueError, ("Linear", "not imitated"), R),
    Case("unimitate-foreign-patch-on-top", _patched_on_top, unimitate,
         ValueError, ("Parametrized", "remove"), R),
    Case("pickle-runtime-model", lambda: nn.Sequential(imitate(nn.Linear(2, 2), "halve", abs)), pickle.dumps,
         pickle.PicklingError, ("halve", "fxpass.compile", "state_dict"), R),
    Case("compile-not-a-module", lambda: {"weight": torch.ones(1)}, fxpass.compile,
         TypeError, ("nn.Module", "dict")),
    Case("compile-untraceable-forward", Branching, fxpass.compile,
         RuntimeError, ("Branching", "TraceError", "concrete_args", "scope='module'")),
    Case("run-compiled-model-in-mixed-modes", ReadsHeadMode, _mixed_modes,
         RuntimeError, ("head is in eval mode under a model in train mode", "set the modes alike")),
    Case("compile-class-patch-reading-parameters-directly", _sneaky, fxpass.compile,
         ValueError, ("0 (Sneaky)", "module._parameters", "constant", "imitation_runtime.imitate")),
    Case("compile-unknown-class-patch", _unknown_patch, fxpass.compile,
         ValueError, ("0 (Linear)", "overrides 'weight'", "pickle cannot find it by name", "imitation_runtime.imitate")),
    Case("compile-tensor-computed-from-a-buffer-while-tracing", lambda: nn.Sequential(FromBuffer()), fxpass.compile,
         ValueError, ("0 (FromBuffer)", "computed while tracing", "constant")),
    Case("compile-lazy-module-before-its-first-forward", lambda: nn.Sequential(nn.LazyLinear(2)), fxpass.compile,
         TypeError, ("0 (LazyLinear)", "uninitialized parameters", "run the model once")),
    Case("compile-model-enters-parametrize-cached", CachesItself, fxpass.compile,
         RuntimeError, ("the model (CachesItself)", "parametrize.cached()", "scope='module'")),
    Case("compile-bad-scope", lambda: nn.Linear(2, 2), lambda m: fxpass.compile(m, scope="layer"),
         TypeError, ("scope", "'layer'")),
    Case("pickle-compiled-model-with-unpicklable-transform",
         lambda: fxpass.compile(nn.Sequential(imitate(nn.Linear(2, 2), "locked", Locked()))), pickle.dumps,
         pickle.PicklingError, ("0.locked (Locked)", "cannot be pickled"), pickle.PicklingError),
    Case("freeze-not-a-module", lambda: "model.pt", fxpass.freeze, TypeError, ("freeze", "str")),
    Case("freeze-transform-fails", lambda: nn.Sequential(imitate(nn.Linear(2, 2), "calibrate", FailsInEval())),
         fxpass.freeze, RuntimeError, ("'calibrate' of 0", "FailsInEval", "weight", "no calibration data")),
    Case("record-of-plain-graph-module", lambda: torch.fx.symbolic_trace(nn.Linear(2, 2)), fxpass.record_of,
         ValueError, ("fxpass.compile",)),
    Case("parity-inputs-do-not-fit", lambda: nn.Sequential(imitate(nn.Linear(2, 2), "halve", abs)),
         lambda m: fxpass.parity.check(m, (torch.ones(3, 5),)), ValueError, ("Sequential", "Tensor[3, 5]")),
    Case("parity-no-steps", lambda: nn.Sequential(imitate(nn.Linear(2, 2), "halve", abs)),
         lambda m: fxpass.parity.check(m, (torch.ones(3, 2),), steps=0), ValueError, ("steps",)),
    Case("cli-factory-does-not-import", lambda: None, _cli("compile", "no_such.models:build", "-o", "x.pt"),
         SystemExit, ("fxpass compile: cannot import 'no_such.models'",), SystemExit),
    Case("cli-inspect-missing-file", lambda: None, _cli("inspect", "missing.pt"),
         SystemExit, ("fxpass inspect: missing.pt: no such file",), SystemExit),
    Case("cli-boundaries-not-a-class", lambda: None,
         _cli("compile", "tests.cli_models:small", "-o", "x.pt", "--boundaries", "torch.relu"),
         SystemExit, ("--boundaries: torch.relu", "not an nn.Module class"), SystemExit),
    Case("cli-export-unwritable-path", lambda: None, _cli("export", "tests.cli_models:small", "-o", "out/x.pt2"),
         SystemExit, ("fxpass export: cannot write out/x.pt2", "does not exist"), SystemExit),
    Case("cli-export-not-exportable", lambda: None, _cli("export", "tests.cli_models:branchy", "-o", "x.pt2"),
         SystemExit, ("fxpass export: cannot export Branchy", "GuardOnDataDependentSymNode"), SystemExit),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = case.build()
    before = snapshot(target) if isinstance(target, nn.Module) else None
    with pytest.raises(case.error) as info:
        case.call(target)
    assert isinstance(info.value, case.base)
    for word in case.words:
        assert word in str(info.value), (word, str(info.value))
    # docs/bad-input.md shows the message as raised, word for word
    assert _documented_messages()[case.id] == str(info.value).replace("|", "\\|"), (case.id, str(info.value))
    assert not isinstance(info.value, (KeyError, AttributeError, IndexError))
    if before is not None:
        assert_same_snapshot(before, snapshot(target))


def test_the_docs_list_every_case() -> None:
    text = DOCS.read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing
    assert len(CASES) >= 15


def _documented_messages() -> dict[str, str]:
    """Case id -> the message column of its row in docs/bad-input.md."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[2]
    return rows
