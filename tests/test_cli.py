"""The ``fxpass`` command line: each command, its formats, its exit codes and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxpass
from fxpass import zoo
from fxpass.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parity_over_the_zoo_prints_one_row_per_model(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "parity", "--format", "json", "--steps", "2")
    assert code == 0
    data = json.loads(out)
    names = [row["model"] for row in data["models"]]
    expected = [e.name for e in zoo.entries() if not e.missing()]
    assert names == expected
    assert all(row["ok"] and row["grads"] == "ok" and row["save/load"] == "ok" for row in data["models"])
    assert "fxpass parity: mlp" in err  # progress goes to stderr


def test_parity_of_a_user_model_as_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "parity", "--model", "tests.cli_models:small", "--format", "markdown")
    assert code == 0
    assert out.startswith("| model")
    assert "tests.cli_models:small" in out


def test_parity_failure_exits_1_with_the_failing_rows(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "parity", "--model", "tests.cli_models:drifting")
    assert code == 1
    assert "parity FAILED" in out
    assert "train/step2/output" in out


def test_compile_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    code, out, _ = run(capsys, "compile", "tests.cli_models:small", "-o", str(path))
    assert code == 0 and "2 inlined" in out
    model, (x,) = __import__("tests.cli_models", fromlist=["small"]).small()
    assert torch.equal(torch.load(path, weights_only=False)(x), model(x))
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0
    assert "halve" in out and "def forward" in out and "inlined" in out
    code, out, _ = run(capsys, "inspect", str(path), "--format", "json")
    assert json.loads(out)[""]["rewrites"][0]["transform"] == "halve"
    assert json.loads(out)[""]["inlined_activations"] == []
    run(capsys, "compile", "tests.cli_models:small", "-o", str(path), "--inline-activations")
    code, out, _ = run(capsys, "inspect", str(path), "--format", "json")
    assert json.loads(out)[""]["inlined_activations"] == ["1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compile", "no_such_package.models:build", "-o", "x.pt"], "cannot import 'no_such_package.models'"),
        (["compile", "tests.cli_models", "-o", "x.pt"], "not of the form pkg.module:factory"),
        (["compile", "tests.cli_models:missing", "-o", "x.pt"], "has no attribute 'missing'"),
        (["compile", "tests.cli_models:raises", "-o", "x.pt"], "raised RuntimeError: no weights here"),
        (["compile", "tests.cli_models:not_a_pair", "-o", "x.pt"], "must return (model, example_inputs)"),
        (["parity", "--model", "tests.cli_models:wrong_inputs"], "Sequential"),
        (["inspect", "missing.pt"], "no such file"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv)
    assert code == 2
    error_line = err.splitlines()[-1]  # progress lines may come before it
    assert error_line.startswith(f"fxpass {argv[0]}: ") and message in error_line
    assert "Traceback" not in err


@pytest.mark.parametrize("content", ["foreign", "truncated", "state_dict", "plain"])
def test_inspect_refuses_files_that_are_not_compiled_models(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "file.pt"
    if content == "foreign":
        path.write_bytes(b"this is not a checkpoint")
    elif content == "truncated":
        torch.save(zoo.get("mlp").build()[0].state_dict(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "state_dict":
        torch.save(zoo.get("mlp").build()[0].state_dict(), path)
    else:
        torch.save(torch.nn.Linear(2, 2), path)
    code, _, err = run(capsys, "inspect", str(path))
    assert code == 2
    assert err.startswith(f"fxpass inspect: {path}") and "Traceback" not in err


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from fxpass.cli import CommandError

    with pytest.raises(CommandError):
        main(["--debug", "inspect", "missing.pt"])


def test_python_dash_m_and_example(tmp_path: Path) -> None:
    env_path = str(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "fxpass", "example", "-o", str(tmp_path / "e.pt")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "parity OK" in result.stdout and "reloaded output equal: True" in result.stdout


def test_inspect_shows_the_boundaries_and_the_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, words in (("blocks", "boundaries (compiled on their own): blocks.0, blocks.1, blocks.2"),
                        ("aux_head", "traced once per mode: train, eval")):
        model, _ = zoo.get(name).build()
        path = tmp_path / f"{name}.pt"
        torch.save(fxpass.compile(model, **zoo.get(name).compile_options()), path)  # type: ignore[arg-type]
        code, out, _ = run(capsys, "inspect", str(path))
        assert code == 0 and words in out
