"""Run a benchmark module in a fresh Python process and read back the JSON it prints.

Memory and ``torch.compile`` cold starts are measured in processes of their own: a peak RSS or an
inductor cache must not carry what an earlier figure left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["REPO", "emit", "run_child"]

#: The checkout the benchmarks belong to; child processes import fxpass from here.
REPO = Path(__file__).resolve().parents[1]

_MARK = "BENCHMARK-RESULT "


def emit(payload: Mapping[str, Any]) -> None:
    """Print a child's result where :func:`run_child` finds it (the last marked stdout line)."""
    print(_MARK + json.dumps(payload), flush=True)


def run_child(
    module: str, args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float = 900
) -> dict[str, Any]:
    """Run ``python -m <module> <args>`` from the checkout and return the payload it emitted.

    Args:
        module: a module of this package with a command line (``benchmarks.memory``).
        args: its arguments.
        env: variables to set on top of this process's environment.
        timeout_s: give up after this long.

    Returns:
        The JSON object the child passed to :func:`emit`.

    Raises:
        RuntimeError: the child failed or emitted nothing; the message holds the end of its
            stderr.
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"python -m {module} {' '.join(args)} exited with {done.returncode} "
            f"and {'a' if lines else 'no'} result:\n{tail}"
        )
    return json.loads(lines[-1][len(_MARK) :])
