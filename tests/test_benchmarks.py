"""The benchmarks run: ``python -m benchmarks --quick`` yields every figure. No timing assertions."""

from __future__ import annotations

import doctest
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxpass
from fxpass._patches import find_patch_stack
from benchmarks import figures, models, real, real_models, run, timing
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
    done = _run_benchmarks("--quick", "--json", str(out))
    assert "figure" in done.stdout and "met" in done.stdout  # the table was printed
    return json.loads(out.read_text())


def _run_benchmarks(*args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks ARGS`` from the repository root; it must succeed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


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


@pytest.mark.parametrize("module", [timing, models, run, figures, real_models], ids=lambda m: m.__name__)
def test_doctests(module: object) -> None:
    # benchmarks/ is outside the doctest paths of pyproject.toml; run its examples here.
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0


# -- the real-model section (python -m benchmarks --real) -----------------------------------------


@pytest.fixture(scope="module")
def real_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("benchmarks") / "results-real.json"
    done = _run_benchmarks("--real", "--quick", "--json", str(out))
    assert "target" in done.stdout and "worst / over" in done.stdout  # both tables were printed
    return {"json": json.loads(out.read_text()), "stdout": done.stdout}


def test_real_quick_run_measures_every_model_and_figure(real_results: dict) -> None:
    found = real_results["json"]
    assert list(found["models"]) == [m.name for m in real_models.REAL_MODELS]
    assert found["figures"] == real.PER_MODEL
    for name, figures_ in found["models"].items():
        assert figures_["scope"] in {"model", "module"}, name
        assert set(figures_) == {"scope", *real.PER_MODEL}, name
        for key in real.PER_MODEL:
            value, notes = figures_[key]["ratio"], figures_[key]["notes"]
            if key == "compile" and figures_["scope"] == "module":
                assert value is None and notes.startswith("module scope"), (name, notes)
            else:
                assert isinstance(value, float) and value > 0, (name, key, notes)
        for key in real.FLOORS:  # the share of the reference's forward inside ATen operators
            # (a ratio of two timings: only its presence is checked here; quick rounds are noisy)
            assert math.isfinite(figures_[key]["detail"]["floor"]) and figures_[key]["detail"]["floor"] > 0, (name, key)
            assert figures_[key]["notes"].startswith("floor "), (name, key)
    # every hand-written model traces whole; the transformers ones do not
    assert {n for n, f in found["models"].items() if f["scope"] == "model"} >= {"resnet18", "densenet121", "efficientnet_b0"}
    for key in real.META_KEYS:
        assert isinstance(found["single"][key]["ratio"], float), found["single"][key]["notes"]
    for key in real.INDUCTOR_KEYS:
        assert found["single"][key]["ratio"] is None and "--inductor" in found["single"][key]["notes"]
    assert [t["figure"] for t in found["targets"]] == [t.label for t in real.TARGETS]
    assert {t["met"] for t in found["targets"]} <= {"yes", "no", "n/a"}
    assert found["meta"]["settings"]["quick"] is True and found["meta"]["threads"] == 1


def _measured(value: float | None) -> figures.Measured:
    return figures.Measured(value, "")


def test_real_targets_judge_the_worst_model_the_median_and_single_values() -> None:
    per_model = {
        name: {"scope": "model", **{key: _measured(value) for key in real.PER_MODEL}}
        for name, value in (("a", 0.9), ("b", 1.2), ("c", 0.92))
    }
    per_model["c"]["compile"] = _measured(None)  # (module scope: no value, not judged)
    single = {key: _measured(0.5) for key in (*real.META_KEYS, *real.INDUCTOR_KEYS)}
    single["inductor_cold_gpt2"] = _measured(None)
    rows = {(r["figure"]): r for r in real.targets({"models": per_model, "single": single})}
    train = rows["eager train step: compiled / runtime, every model"]
    assert (train["value"], train["met"], train["where"]) == (1.2, "no", "b")
    median = rows["eager eval forward: compiled / runtime, median"]
    assert (median["value"], median["met"], median["where"]) == (0.92, "yes", "over 3 models")
    compile_ = rows["fxpass.compile / symbolic_trace (model scope), every model"]
    assert (compile_["value"], compile_["met"]) == (1.2, "yes")
    assert rows["torch.compile cold start, GPT-2: compiled / runtime"]["met"] == "n/a"
    assert rows["module-scope compile, Llama-7B config on meta (s)"]["met"] == "yes"


def test_real_benchmarks_refuse_to_time_models_that_differ() -> None:
    spec = real_models.get("resnet18")
    runtime = spec.runtime(True)
    inputs = spec.example(True)
    other = spec.runtime(True)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    with pytest.raises(AssertionError, match="outputs differ"):
        real._same(runtime, other, spec, inputs)


def test_real_models_are_patched_throughout_and_plain_holds_the_transformed_weights() -> None:
    spec = real_models.get("gpt2")
    runtime = spec.runtime(True)
    patched = [name for name, m in runtime.named_modules() if find_patch_stack(m) is not None]
    patchable = [name for name, m in spec.unpatched(True).named_modules() if real_models._patchable(m)]
    assert patched == patchable and len(patched) >= 9  # (the tiny GPT-2: 2 blocks of 4, and the head)
    plain = spec.plain(runtime, True)
    runtime.eval()
    plain.eval()
    with torch.no_grad():
        args, kwargs = spec.example(True)
        torch.testing.assert_close(spec.loss(plain(*args, **kwargs)), spec.loss(runtime(*args, **kwargs)))
