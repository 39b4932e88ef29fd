"""The installed ``fxpass`` console script, run in a subprocess as a user runs it: over the zoo,
over transformers models from tiny configs and a CNN in a factory module this file writes, and
every way ``parity``, ``compile``, ``export`` and ``inspect`` refuse bad input (one line on
stderr, exit 2)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import fxpass
import imitation_runtime
from fxpass import zoo
from fxpass._freeze import frozen_tensors

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the [hf] extra")

FXPASS = Path(sys.executable).with_name("fxpass")
HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript", "onnxruntime"))

MYMODELS = '''
    import random

    import torch
    import torch.nn as nn
    import transformers
    from transformers.pytorch_utils import Conv1D

    from imitation_runtime import imitate


    def fake_quant(w):
        return w + (torch.round(w * 16) / 16 - w).detach()


    def patch(model, kinds):
        for module in list(model.modules()):
            if isinstance(module, kinds):
                imitate(module, "fake_quant", fake_quant)
        return model


    TEXT = dict(vocab_size=96, pad_token_id=0, bos_token_id=1, eos_token_id=2)


    def gpt2():
        torch.manual_seed(0)
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=32, **TEXT)
        model = patch(transformers.GPT2LMHeadModel(config), Conv1D)
        return model, {"input_ids": torch.randint(3, 96, (2, 8)), "use_cache": False}


    def gpt2_cached():
        model, inputs = gpt2()
        return model, {"input_ids": inputs["input_ids"]}


    def bert():
        torch.manual_seed(0)
        config = transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32, **TEXT,
        )
        model = patch(transformers.BertModel(config), nn.Linear)
        ids = torch.randint(3, 96, (2, 8))
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


    def cnn():
        torch.manual_seed(0)
        model = nn.Sequential(
            imitate(nn.Conv2d(3, 8, 3), "fake_quant", fake_quant),
            nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
            imitate(nn.Linear(8 * 6 * 6, 10), "fake_quant", fake_quant),
        )
        return model, (torch.randn(2, 3, 8, 8),)


    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = imitate(nn.Linear(4, 4), "fake_quant", fake_quant)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -x  # a branch on a value: not exportable


    def gate():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), Gate()), (torch.randn(2, 4),)


    class Jitter(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = imitate(nn.Linear(4, 4), "fake_quant", fake_quant)

        def forward(self, x):
            return self.fc(x) + random.random()  # traced once: the export keeps the first draw


    def jitter():
        random.seed(0)
        return Jitter(), (torch.randn(2, 4),)


    def broken():
        model, _ = cnn()
        return model, (torch.randn(2, 5),)
'''


@pytest.fixture(scope="module")
def factories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``mymodels.py`` (and a fake onnxruntime under ``no_onnxruntime/``)."""
    root = tmp_path_factory.mktemp("factories")
    (root / "mymodels.py").write_text(textwrap.dedent(MYMODELS), encoding="utf-8")
    fake = root / "no_onnxruntime" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("onnxruntime is not installed here")\n', encoding="utf-8")
    return root


def fxpass_run(cwd: Path, *argv: str, pythonpath: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the console script in ``cwd`` (which is where ``mymodels`` is found, as for a user)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(FXPASS), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def mymodels(factories: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(factories))
    return importlib.import_module("mymodels")


def assert_one_line_error(result: subprocess.CompletedProcess[str], command: str, *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("fxpass ") for line in lines), result.stderr  # progress, then the error
    assert lines[-1].startswith(f"fxpass {command}: "), lines[-1]
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    assert result.stdout == ""


def test_console_script_is_installed() -> None:
    assert FXPASS.is_file(), f"{FXPASS}: pip install the package (it installs the fxpass command)"


# -- parity ---------------------------------------------------------------------------------------


def test_parity_over_the_zoo_as_json(factories: Path) -> None:
    result = fxpass_run(factories, "parity", "--format", "json", "--steps", "2")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == 1 and data["ok"] is True and data["steps"] == 2
    entries = [e for e in zoo.entries() if not e.missing()]
    assert [row["model"] for row in data["models"]] == [e.name for e in entries]
    assert [s["model"] for s in data["skipped"]] == [e.name for e in zoo.entries() if e.missing()]
    checks = ("train_forward", "eval_forward", "grads", "trajectory", "state_dict", "save_load")
    for entry, row in zip(entries, data["models"]):
        assert row["ok"] is True and row["report"]["ok"] is True
        assert all(row[key] == "ok" for key in checks), row
        # a zoo model keeps its own scope; the others get scope="auto", which traces them whole
        assert row["scope"] == entry.compile_options().get("scope", "model")
        assert row["report"]["scope"] == row["scope"]
        assert f"scope={entry.compile_options().get('scope', 'auto')!r}" in row["report"]["candidate"]
        assert row["patched"] == row["report"]["patched_modules"] > 0
    assert "fxpass parity: mlp ..." in result.stderr  # progress on stderr, stdout stays JSON


@pytest.mark.parametrize("factory", ["gpt2", "bert"])
def test_parity_of_a_transformers_model_compiles_it_at_module_scope(factory: str, factories: Path) -> None:
    result = fxpass_run(factories, "parity", "--model", f"mymodels:{factory}", "--format", "json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)["models"]
    assert row["scope"] == "module" and row["ok"] is True
    assert row["trajectory"] == row["grads"] == row["save_load"] == "ok"
    assert row["inlined"] == 2 * row["patched"] > 0  # weight and bias of every patched module
    assert row["report"]["scope"] == "module" and row["report"]["bitwise"] is True


def test_parity_table_has_a_scope_column(factories: Path) -> None:
    result = fxpass_run(factories, "parity", "--model", "mymodels:gpt2", "--steps", "1")
    assert result.returncode == 0, result.stderr
    header, _, row = result.stdout.splitlines()[:3]
    assert header.split()[:2] == ["model", "scope"]
    assert row.split()[:2] == ["mymodels:gpt2", "module"]
    assert "1-step trajectory" in header


# -- export ---------------------------------------------------------------------------------------


def table_row(stdout: str) -> dict[str, str]:
    header, rule, row = stdout.splitlines()[:3]
    # columns are separated by two spaces or more; the rule line gives their extents
    spans = [m.span() for m in re.finditer(r"-+", rule)]
    return {header[a:b].strip(): row[a:b].strip() for a, b in spans}


EXPORTS = [
    ("gpt2", "pt2", ["--format", "pt2"], "g.pt2"),
    ("gpt2", "onnx", [], "g.onnx"),  # the format follows the suffix
    ("bert", "pt2", [], "b.pt2"),
    ("cnn", "pt2", [], "c.pt2"),
    ("cnn", "onnx", ["--format", "onnx"], "c.bin"),
]


@pytest.mark.parametrize(("factory", "target", "flags", "name"), EXPORTS, ids=[f"{e[0]}-{e[1]}" for e in EXPORTS])
def test_export_writes_a_file_that_matches_the_runtime_model(
    factory: str, target: str, flags: list[str], name: str, factories: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if target == "onnx" and not HAS_ONNX:
        pytest.skip("the [export] extra is not installed")
    path = tmp_path / name
    result = fxpass_run(factories, "export", f"mymodels:{factory}", "-o", str(path), *flags)
    assert result.returncode == 0, result.stderr
    row = table_row(result.stdout)
    model, inputs = getattr(mymodels(factories, monkeypatch), factory)()
    compiled = fxpass.compile(model, scope="auto")
    parts = fxpass.scope_record(compiled)
    assert row["scope"] == ("module" if parts is not None else "model")
    assert int(row["parts"]) == (len(parts.parts) if parts is not None else 1)
    assert int(row["frozen tensors"]) == len(frozen_tensors(fxpass.freeze(compiled))) >= len(patched_modules(model))
    assert row["format"] == target and row["file size"].endswith("KiB")
    assert float(row["max abs error"]) <= 1e-5
    assert f"ok: {path} matches the runtime model's eval output within --atol 1e-05" in result.stdout

    # What was written runs here too, and agrees with the runtime model (checked independently).
    args, kwargs = ((), inputs) if isinstance(inputs, dict) else (inputs, {})
    with torch.no_grad():
        expected = tensor_leaves(model.eval()(*args, **kwargs))
        if target == "pt2":
            got = tensor_leaves(torch.export.load(path).module()(*args, **kwargs))
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            by_name = kwargs or {"input": args[0]}  # the ONNX inputs are named after the forward's arguments
            feeds = {i.name: by_name[i.name].numpy() for i in session.get_inputs()}
            got = [torch.from_numpy(output) for output in session.run(None, feeds)]
    assert len(got) == len(expected)
    worst = max((g - e).abs().max().item() for g, e in zip(got, expected))
    assert worst <= 1e-5
    assert f"{worst:.3g}" == row["max abs error"]


def tensor_leaves(tree: Any) -> list[torch.Tensor]:
    return [leaf for leaf in torch.utils._pytree.tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def patched_modules(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if imitation_runtime.is_imitated(module)]


def test_export_beyond_atol_exits_1(factories: Path, tmp_path: Path) -> None:
    result = fxpass_run(factories, "export", "mymodels:jitter", "-o", str(tmp_path / "j.pt2"))
    assert result.returncode == 1, result.stderr
    error = float(table_row(result.stdout)["max abs error"])
    assert error > 1e-5
    assert f"FAILED: the max abs error {error:.3g} exceeds --atol 1e-05" in result.stdout
    assert fxpass_run(factories, "export", "mymodels:jitter", "-o", str(tmp_path / "j.pt2"), "--atol", "1").returncode == 0


# -- compile and inspect --------------------------------------------------------------------------


def test_compile_then_inspect_a_module_scope_save(factories: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gpt2.pt"
    result = fxpass_run(factories, "compile", "mymodels:gpt2", "-o", str(path))
    assert result.returncode == 0, result.stderr
    assert "compiled GPT2LMHeadModel at module scope (6 part(s): 16 inlined, 0 module, 0 opaque)" in result.stdout
    model, _ = mymodels(factories, monkeypatch).gpt2()
    compiled = fxpass.compile(model, scope="auto")
    expected = fxpass.scope_record(compiled)
    assert expected is not None and len(expected.parts) == 6

    result = fxpass_run(factories, "inspect", str(path))
    assert result.returncode == 0, result.stderr
    assert "# GPT2LMHeadModel, compiled at module scope" in result.stdout
    assert "scope='auto': module scope, since torch.fx cannot trace it" in result.stdout
    for part, record in fxpass.records(compiled).items():
        counts = ", ".join(f"{n} {kind}" for kind, n in record.counts().items())
        assert f"# {part} ({type(compiled.get_submodule(part)).__name__}): {counts}" in result.stdout
        assert record.table() in result.stdout
    for eager in expected.eager:
        assert re.search(rf"^{re.escape(eager.module or '<model>')}\s", result.stdout, re.MULTILINE)

    data = json.loads(fxpass_run(factories, "inspect", str(path), "--format", "json").stdout)
    assert data["schema"] == 1 and data["scope"] == "module" and data["model"] == "GPT2LMHeadModel"
    assert list(data["parts"]) == list(expected.parts)
    assert [e["module"] for e in data["eager"]] == [e.module for e in expected.eager]
    assert data["scope_reason"] == expected.reason


def test_compile_with_boundaries_by_dotted_name(factories: Path, tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    result = fxpass_run(factories, "compile", "mymodels:cnn", "-o", str(path), "--boundaries", "torch.nn.Conv2d")
    assert result.returncode == 0, result.stderr
    data = json.loads(fxpass_run(factories, "inspect", str(path), "--format", "json").stdout)
    assert data["scope"] == "model" and list(data["parts"]) == ["", "0"]  # the convolution compiled on its own
    assert data["parts"][""]["boundaries"] == ["0"]
    assert data["scope_reason"] == "scope='auto': model scope, since torch.fx traces the model's own forward"


def test_inspect_refuses_an_exported_program(factories: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.pt2"
    assert fxpass_run(factories, "export", "mymodels:cnn", "-o", str(path)).returncode == 0
    result = fxpass_run(factories, "inspect", str(path))
    assert_one_line_error(result, "inspect", f"{path}: a torch.export archive (load it with torch.export.load)")


# -- errors ---------------------------------------------------------------------------------------

ERRORS = {
    "export-data-dependent-branch": (
        ["export", "mymodels:gate", "-o", "{tmp}/g.pt2"],
        ("cannot export Sequential in module '1' (Gate): GuardOnDataDependentSymNode",),
    ),
    "export-transformers-cache": (
        ["export", "mymodels:gpt2_cached", "-o", "{tmp}/g.pt2"],
        ("cannot export GPT2LMHeadModel", "DynamicCache", "use_cache=False"),
    ),
    "export-missing-directory": (
        ["export", "mymodels:cnn", "-o", "{tmp}/missing/c.pt2"],
        ("cannot write", "missing/c.pt2", "does not exist"),
    ),
    "export-to-a-directory": (["export", "mymodels:cnn", "-o", "{tmp}"], ("cannot write", "is a directory")),
    "export-under-a-file": (
        ["export", "mymodels:cnn", "-o", "mymodels.py/c.pt2"],
        ("cannot write mymodels.py/c.pt2: mymodels.py is not a directory",),
    ),
    "export-write-fails": (["export", "mymodels:cnn", "-o", "/proc/fxpass-test.pt2"], ("cannot write /proc/fxpass-test.pt2",)),
    "export-model-raises": (
        ["export", "mymodels:broken", "-o", "{tmp}/b.pt2"],
        ("the runtime model Sequential raised RuntimeError on the example inputs of mymodels:broken",),
    ),
    "export-model-scope-untraceable": (
        ["export", "mymodels:gpt2", "-o", "{tmp}/g.pt2", "--scope", "model"],
        ("torch.fx cannot trace the forward of the model (GPT2LMHeadModel)",),
    ),
    "parity-boundaries-not-a-class": (
        ["parity", "--model", "mymodels:cnn", "--boundaries", "torch.relu"],
        ("--boundaries: torch.relu is not an nn.Module class",),
    ),
    "compile-boundaries-missing": (
        ["compile", "mymodels:cnn", "-o", "{tmp}/c.pt", "--boundaries", "torch.nn.NoSuchBlock"],
        ("module 'torch.nn' has no attribute 'NoSuchBlock'",),
    ),
    "compile-boundaries-not-dotted": (
        ["compile", "mymodels:cnn", "-o", "{tmp}/c.pt", "--boundaries", "Block"],
        ("--boundaries: 'Block' is not a dotted class name",),
    ),
    "parity-factory-missing": (["parity", "--model", "mymodels:nope"], ("module 'mymodels' has no attribute 'nope'",)),
    "inspect-missing-file": (["inspect", "{tmp}/none.pt"], ("{tmp}/none.pt: no such file",)),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_exit_2(case: str, factories: Path, tmp_path: Path) -> None:
    argv, words = ERRORS[case]
    result = fxpass_run(factories, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert_one_line_error(result, argv[0], *(w.replace("{tmp}", str(tmp_path)) for w in words))
    assert not any(tmp_path.iterdir())  # nothing written


def test_export_onnx_without_the_extra_says_what_to_install(factories: Path, tmp_path: Path) -> None:
    result = fxpass_run(factories, "export", "mymodels:cnn", "-o", str(tmp_path / "c.onnx"),
                        pythonpath=factories / "no_onnxruntime")  # fmt: skip
    assert_one_line_error(result, "export", "--format onnx needs onnxruntime", 'pip install "fxpass[export]"')
    assert not any(tmp_path.iterdir())


def test_argparse_errors_exit_2(factories: Path) -> None:
    result = fxpass_run(factories, "export", "mymodels:cnn", "-o", "x", "--format", "tflite")
    assert result.returncode == 2 and "invalid choice: 'tflite'" in result.stderr
