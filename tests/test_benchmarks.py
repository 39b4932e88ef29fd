"""The benchmarks run: ``python -m benchmarks --quick`` yields every figure. No timing assertions."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fxpass
from benchmarks import figures, models, run, timing
from benchmarks.figures import BENCHMARKS, FIGURES, Settings

REPO = Path(__file__).resolve().parents[1]

EXPECTED_KEYS = (
    "compile_vs_fx_trace",
    "compile_scaling",
    "forward_vs_seed",
    "forward_vs_twin",
    "train_vs_seed",
    "inline_forward_vs_seed",
    "inline_forward_vs_twin",
    "inline_train_vs_seed",
    "compute_forward_vs_seed",
    "frozen_vs_plain",
    "cnn_train_vs_seed",
    "cnn_eval_vs_seed",
    "transformer_train_vs_seed",
    "transformer_eval_vs_seed",
    "parametrize_forward_vs_seed",
    "parametrize_train_vs_seed",
    "compiled_parametrize_forward_vs_parametrize",
    "compiled_parametrize_train_vs_parametrize",
    "memory_compile_peak",
    "memory_tensors",
    "memory_retained",
    "inductor_cold_vs_seed",
    "inductor_steady_vs_seed",
    "inductor_graph_breaks",
)
#: Figures the quick run leaves without a value: torch.compile needs --inductor.
WITHOUT_VALUE = {"inductor_cold_vs_seed", "inductor_steady_vs_seed", "inductor_graph_breaks"}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("benchmarks") / "results.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "figure" in done.stdout and "met" in done.stdout  # the table was printed
    return json.loads(out.read_text())


def test_every_benchmark_declares_known_figures() -> None:
    declared = [key for bench in BENCHMARKS for key in bench.keys]
    assert sorted(declared) == sorted(FIGURES)
    assert tuple(FIGURES) == EXPECTED_KEYS


def test_quick_run_writes_every_figure(quick_results: dict) -> None:
    found = quick_results["figures"]
    assert tuple(found) == EXPECTED_KEYS
    for key, figure in found.items():
        assert set(figure) >= {"figure", "ratio", "target", "met", "notes", "detail"}, key
        assert figure["met"] in {"yes", "no", "n/a"}, key


def test_quick_run_measures_every_eager_figure(quick_results: dict) -> None:
    found = quick_results["figures"]
    frozen_missing = not hasattr(fxpass, "freeze")
    for key, figure in found.items():
        if key in WITHOUT_VALUE or (key == "frozen_vs_plain" and frozen_missing):
            assert figure["ratio"] is None and figure["met"] == "n/a", key
            assert figure["notes"], key  # says why
        else:
            assert isinstance(figure["ratio"], float) and figure["ratio"] >= 0, (key, figure["notes"])
            assert not figure["notes"].startswith("failed"), (key, figure["notes"])


def test_quick_run_records_its_settings(quick_results: dict) -> None:
    meta = quick_results["meta"]
    assert meta["settings"]["quick"] is True
    assert meta["threads"] == 1


def test_frozen_figure_says_why_when_freeze_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(fxpass, "freeze", raising=False)
    found = figures._frozen(Settings.quick_settings())
    assert found["frozen_vs_plain"].value is None
    assert found["frozen_vs_plain"].notes == "n/a (fxpass.freeze missing)"


def test_failing_benchmark_still_yields_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(settings: Settings) -> dict:
        raise RuntimeError("boom")

    bench = figures.Benchmark("compute", ("compute_forward_vs_seed",), broken)
    monkeypatch.setattr(run, "BENCHMARKS", tuple(bench if b.name == "compute" else b for b in BENCHMARKS))
    results = run.run(Settings.quick_settings(), only=("compute",))
    assert tuple(results) == EXPECTED_KEYS
    assert results["compute_forward_vs_seed"]["notes"].startswith("failed: RuntimeError")
    assert results["compute_forward_vs_seed"]["met"] == "n/a"


@pytest.mark.parametrize("module", [timing, models, run], ids=lambda m: m.__name__)
def test_doctests(module: object) -> None:
    # benchmarks/ is outside the doctest paths of pyproject.toml; run its examples here.
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0
