"""The ``fxpass`` command line: each command, its formats, its exit codes and its errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fxpass
from fxpass import zoo
from fxpass import cli
from fxpass.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parity_reports_each_step_of_a_slow_run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 1e9)  # a fast run (not timed: this machine is shared)
    code, _, err = run(capsys, "parity", "--model", "tests.cli_models:small", "--steps", "2")
    assert code == 0 and err.splitlines() == ["fxpass parity: tests.cli_models:small ..."]  # one line
    monkeypatch.setattr(cli, "PROGRESS_AFTER_S", 0.0)
    code, _, err = run(capsys, "parity", "--model", "tests.cli_models:small", "--steps", "2")
    assert code == 0
    assert err.splitlines() == ["fxpass parity: tests.cli_models:small ..."] + [
        f"fxpass parity: tests.cli_models:small: {step}"
        for step in ("train step 1/2", "train step 2/2", "eval step 1/2", "eval step 2/2", "save/load")
    ]


@pytest.mark.parametrize(
    ("factory", "scope", "used"),
    [("keywords", None, "model"), ("branchy", None, "module"), ("branchy", "module", "module"), ("keywords", "model", "model")],
)
def test_parity_takes_keyword_inputs_and_the_scope(
    factory: str, scope: str | None, used: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["parity", "--model", f"tests.cli_models:{factory}", "--format", "json", "--steps", "1"]
    code, out, _ = run(capsys, *argv, *(["--scope", scope] if scope else []))
    assert code == 0
    (row,) = json.loads(out)["models"]
    assert row["scope"] == used and row["ok"]
    assert row["report"]["candidate"] == f"fxpass.compile(scope={scope or 'auto'!r})"


def test_parity_scope_model_of_an_untraceable_model_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "parity", "--model", "tests.cli_models:branchy", "--scope", "model")
    assert code == 2 and "fxpass parity: torch.fx cannot trace the forward of the model (Branchy)" in err


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
    assert code == 0 and "at model scope (1 part(s): 2 inlined" in out
    model, (x,) = __import__("tests.cli_models", fromlist=["small"]).small()
    assert torch.equal(torch.load(path, weights_only=False)(x), model(x))
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0
    assert "halve" in out and "def forward" in out and "inlined" in out
    code, out, _ = run(capsys, "inspect", str(path), "--format", "json")
    data = json.loads(out)
    assert data["schema"] == 1 and data["scope"] == "model" and data["eager"] == []
    assert data["parts"][""]["rewrites"][0]["transform"] == "halve"
    assert data["parts"][""]["inlined_activations"] == []
    run(capsys, "compile", "tests.cli_models:small", "-o", str(path), "--inline-activations")
    code, out, _ = run(capsys, "inspect", str(path), "--format", "json")
    assert json.loads(out)["parts"][""]["inlined_activations"] == ["1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compile", "no_such_package.models:build", "-o", "x.pt"], "cannot import 'no_such_package.models'"),
        (["compile", "tests.cli_models", "-o", "x.pt"], "not of the form pkg.module:factory"),
        (["compile", "tests.cli_models:missing", "-o", "x.pt"], "has no attribute 'missing'"),
        (["compile", "tests.cli_models:raises", "-o", "x.pt"], "raised RuntimeError: no weights here"),
        (["compile", "tests.cli_models:not_a_pair", "-o", "x.pt"], "must return (model, example_inputs)"),
        (["compile", "tests.cli_models:multiline", "-o", "x.pt"], "raised ValueError: first line second line"),
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
    from fxpass.errors import CommandError

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


def test_the_json_schema_is_the_documented_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (REPO / "docs" / "reference" / "cli.md").read_text()
    section = text.split("## JSON output", 1)[1].split(":::", 1)[0]
    tables = [re.findall(r"^\| `(\w+)` \|", block, re.MULTILINE) for block in section.split("\n\n")]
    top, model_row, inspected = [keys for keys in tables if keys]

    code, out, _ = run(capsys, "parity", "--model", "tests.cli_models:small", "--format", "json", "--steps", "1")
    assert code == 0
    data = json.loads(out)
    assert list(data) == top and data["schema"] == cli.JSON_SCHEMA == 1
    assert list(data["models"][0]) == model_row
    documented = set(re.findall(r"`(\w+)`", section))
    report = data["models"][0]["report"]
    assert set(report) <= documented and set(report["rows"][0]) <= documented

    path = tmp_path / "small.pt"
    run(capsys, "compile", "tests.cli_models:small", "-o", str(path))
    code, out, _ = run(capsys, "inspect", str(path), "--format", "json")
    assert code == 0 and list(json.loads(out)) == inspected
