"""Module scope on real architectures: the corpus (fxpass.corpus) of transformers models from tiny
configs, every Linear imitated. Each guarantee is a test over the corpus, against the runtime
model: eval outputs (every tensor, KV caches included) and one training step with dropout
bitwise, generate() identical, pickle / torch.save / a fresh process, save_pretrained +
from_pretrained of the unpatched class, freeze + torch.export, ONNX for four of them, and
fxpass.parity.check with the cache on. The corpus table in docs/guides/module-scope.md is
checked against what the compile and the export do."""

from __future__ import annotations

import copy
import functools
import importlib.util
import io
import pickle
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

import fxpass
from fxpass import corpus
from fxpass.compiled import CompiledGraphModule
from fxpass.parity import side_by_side
from fxpass.testing import assert_outputs_equal
from imitation_runtime import is_imitated
from tests.support import assert_state_equal

pytestmark = pytest.mark.skipif(not corpus.available(), reason="the [hf] extra is not installed")

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guides" / "module-scope.md"
ONNX = ("gpt2", "bert", "llama", "vit")
EXPORT_ATOL = 1e-5


def entries(only: tuple[str, ...] | None = None, generating: bool = False) -> list[Any]:
    chosen = [e for e in corpus.entries() if (only is None or e.name in only) and (e.generates or not generating)]
    return [pytest.param(e, id=e.name) for e in chosen]


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@functools.cache
def _built(name: str) -> tuple[nn.Module, dict[str, Any], nn.Module]:
    model, inputs = corpus.get(name).build()
    return model, inputs, fxpass.compile(copy.deepcopy(model), scope="module")


def pair(entry: corpus.CorpusEntry) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(runtime model, its module-scope compile, inputs): fresh, independent copies."""
    model, inputs, compiled = _built(entry.name)
    return copy.deepcopy(model), copy.deepcopy(compiled), inputs


def seeded(model: nn.Module, inputs: dict[str, Any], seed: int = 0) -> Any:
    torch.manual_seed(seed)
    np.random.seed(seed)  # wav2vec2 draws its time masks with numpy
    random.seed(seed)
    return model(**inputs)


def no_cache(entry: corpus.CorpusEntry, inputs: dict[str, Any]) -> dict[str, Any]:
    # transformers' cache classes are not pytree nodes: export the forward without the cache
    return {**inputs, "use_cache": False} if entry.generates else dict(inputs)


@pytest.mark.parametrize("entry", entries())
def test_eval_outputs_bitwise_caches_included(entry: corpus.CorpusEntry) -> None:
    model, compiled, inputs = pair(entry)
    model.eval()
    compiled.eval()
    with torch.no_grad():
        expected, got = seeded(model, inputs), seeded(compiled, inputs)
    if entry.generates:
        assert got.past_key_values is not None  # the cache is on, and compared tensor by tensor
    assert_outputs_equal(expected, got)
    assert fxpass.scope_record(compiled).parts  # a real compile: some parts are graphs


@pytest.mark.parametrize("entry", entries())
def test_a_training_step_with_dropout_is_bitwise(entry: corpus.CorpusEntry) -> None:
    model, compiled, inputs = pair(entry)
    # two steps: the second forward runs on the stepped parameters (the trainer of fxpass.parity)
    report = side_by_side(model, compiled, example_kwargs=inputs, modes=("train", "train"))
    assert report.ok and report.bitwise, report.table(failures_only=True)


@pytest.mark.parametrize("entry", entries(generating=True))
def test_generate_with_the_cache_is_identical(entry: corpus.CorpusEntry) -> None:
    model, compiled, inputs = pair(entry)
    prompt = {k: v for k, v in inputs.items() if not k.startswith("decoder_")}
    for module in (model, compiled):
        module.eval()
    expected = model.generate(**prompt, max_new_tokens=5, do_sample=False, use_cache=True)
    assert torch.equal(compiled.generate(**prompt, max_new_tokens=5, do_sample=False, use_cache=True), expected)


@pytest.mark.parametrize("entry", entries())
def test_pickle_and_torch_save_round_trips(entry: corpus.CorpusEntry) -> None:
    model, compiled, inputs = pair(entry)
    buffer = io.BytesIO()
    torch.save(compiled, buffer)
    buffer.seek(0)
    for loaded in (pickle.loads(pickle.dumps(compiled)), torch.load(buffer, weights_only=False)):
        assert type(loaded) is type(model)
        reference = copy.deepcopy(model)  # the state both had when the compiled model was saved
        assert_state_equal(reference, loaded)
        for mode in (True, False):
            reference.train(mode)
            loaded.train(mode)
            assert_outputs_equal(seeded(reference, inputs, 3), seeded(loaded, inputs, 3))


def test_saved_models_load_in_a_fresh_process(tmp_path: Path) -> None:
    for entry in corpus.entries():
        model, compiled, inputs = pair(entry)
        model.eval()
        with torch.no_grad():
            expected = seeded(model, inputs)
        torch.save({"model": compiled, "inputs": inputs, "expected": expected}, tmp_path / f"{entry.name}.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        from pathlib import Path
        from fxpass.testing import assert_outputs_equal
        names = []
        for path in sorted(Path(sys.argv[1]).glob("*.pt")):
            saved = torch.load(path, weights_only=False)
            model = saved["model"].eval()
            torch.manual_seed(0)
            with torch.no_grad():
                assert_outputs_equal(saved["expected"], model(**saved["inputs"]))
            names.append(path.stem)
        print(len(names), "loaded")
        """
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{len(corpus.entries())} loaded"


@pytest.mark.parametrize("entry", entries())
def test_save_pretrained_loads_the_raw_weights_into_the_unpatched_class(
    entry: corpus.CorpusEntry, tmp_path: Path
) -> None:
    model, compiled, _ = pair(entry)
    compiled.save_pretrained(tmp_path)
    plain = entry.model_class().from_pretrained(tmp_path)
    assert not any(fxpass.reading.reads_exactly(m) for m in plain.modules())
    assert_state_equal(model, plain)  # raw values, every key


def frozen_and_exported(entry: corpus.CorpusEntry) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
    """(frozen model, runtime eval output, exported program, export inputs)."""
    model, _, inputs = pair(entry)
    frozen = fxpass.freeze(model)  # a runtime model that only module scope compiles
    model.eval()
    kwargs = no_cache(entry, inputs)
    with torch.no_grad():
        expected = model(**kwargs)
        assert_outputs_equal(expected, frozen(**kwargs))  # bitwise
    return frozen, expected, torch.export.export(frozen, (), kwargs), kwargs


@pytest.mark.parametrize("entry", entries())
def test_freeze_and_torch_export(entry: corpus.CorpusEntry) -> None:
    frozen, expected, program, kwargs = frozen_and_exported(entry)
    assert not any(fxpass.reading.reads_exactly(m) or fxpass.reading.has_eager_forward(m) for m in frozen.modules())
    with torch.no_grad():
        assert_outputs_equal(expected, program.module()(**kwargs), atol=EXPORT_ATOL)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the [export] extra is not installed")
@pytest.mark.parametrize("entry", entries(ONNX))
def test_onnx_of_the_frozen_model_runs_in_onnxruntime(entry: corpus.CorpusEntry) -> None:
    import onnxruntime

    model, _, inputs = pair(entry)
    model.eval()
    kwargs = no_cache(entry, inputs)
    with torch.no_grad():
        expected = model(**kwargs)
    program = torch.onnx.export(fxpass.freeze(model), (), kwargs=kwargs, dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = {i.name: kwargs[i.name].numpy() for i in session.get_inputs()}
    first = session.run(None, feeds)[0]
    reference = expected.logits if "logits" in expected else expected.last_hidden_state
    torch.testing.assert_close(torch.from_numpy(first), reference, atol=EXPORT_ATOL, rtol=0)


@pytest.mark.parametrize("entry", entries(("gpt2", "bert", "mamba", "vit")))
def test_torch_compile_traces_it_as_it_traces_the_runtime_model(entry: corpus.CorpusEntry) -> None:
    model, compiled, inputs = pair(entry)
    kwargs = no_cache(entry, inputs)
    explained = []
    for module in (model, compiled):
        module.eval()
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(module)(**kwargs)
        explained.append((explanation.graph_count, explanation.graph_break_count))
    assert explained[1] == explained[0]
    torch._dynamo.reset()
    with torch.no_grad():
        assert_outputs_equal(model(**kwargs), torch.compile(compiled, backend="eager")(**kwargs))


@pytest.mark.parametrize("entry", entries())
def test_parity_check_passes_with_the_cache_on(entry: corpus.CorpusEntry) -> None:
    model, _, inputs = pair(entry)
    kwargs = {**inputs, "use_cache": True} if entry.generates else inputs
    report = fxpass.parity.check(model, example_kwargs=kwargs, steps=1, compile_options={"scope": "module"})
    assert report.ok and report.bitwise, report.table(failures_only=True)


# -- the corpus table of the module-scope guide -----------------------------------------------------


def parts_called_eagerly(compiled: nn.Module, inputs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The compiled parts whose graph the example call does not run: they are called with
    arguments their graph was not traced for, and run their own forward eagerly instead."""
    paths = {id(m): name for name, m in compiled.named_modules()}
    called: set[str] = set()
    eager = CompiledGraphModule._fxpass_eager

    def spy(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        called.add(paths[id(self)])
        return eager(self, *args, **kwargs)

    monkeypatch.setattr(CompiledGraphModule, "_fxpass_eager", spy)
    compiled.eval()
    with torch.no_grad():
        compiled(**inputs)
    monkeypatch.undo()
    return called


def corpus_row(entry: corpus.CorpusEntry, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """The guide's row for ``entry``: what the compile made of it, and whether it exported."""
    model, compiled, inputs = pair(entry)
    record = fxpass.scope_record(compiled)
    patched = sum(1 for m in model.modules() if is_imitated(m))
    eager = sorted({type(compiled.get_submodule(e.module)).__name__ for e in record.eager})
    graphs = len(record.parts) - len(parts_called_eagerly(compiled, inputs, monkeypatch))
    exported = "torch.export, ONNX" if entry.name in ONNX else "torch.export"
    return (entry.name, entry.kind, str(patched), f"{len(record.parts)} ({graphs})", ", ".join(eager), exported)


def test_the_corpus_table_of_the_guide_is_what_the_compile_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row: architecture, kind, patched modules, compiled parts (and how many of their
    graphs the example call runs), the classes that run eagerly, and the export targets the
    tests above check."""
    text = GUIDE.read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([\w-]+) \| (\d+) \| (\d+ \(\d+\)) \| ([^|]*) \| ([^|]*) \|$", text, re.M)
    shown = {row[0]: tuple(cell.strip() for cell in row) for row in rows}
    expected = {entry.name: corpus_row(entry, monkeypatch) for entry in corpus.entries()}
    assert shown == expected


@pytest.mark.parametrize("entry", entries(only=("bert", "gpt2", "llama", "mixtral", "mamba", "t5", "vit", "resnet", "whisper")))
def test_parity_with_torch_fx_code(entry: corpus.CorpusEntry) -> None:
    """compile(..., code="fx") on real architectures: the compiled parts read tensors with
    torch.fx's attribute lookups while the eager code around them reads patched tensors as at
    run time; the trajectories stay bitwise in both modes."""
    model, _, inputs = pair(entry)
    options = {"scope": "module", "code": "fx"}
    compiled = fxpass.compile(copy.deepcopy(model), **options)
    parts = [m for m in compiled.modules() if isinstance(m, CompiledGraphModule)]
    assert parts and not any("_parameters[" in p.code for p in parts)
    report = fxpass.parity.check(model, example_kwargs=inputs, steps=2, compile_options=options)
    assert report.ok and report.bitwise, report.table(failures_only=True)
