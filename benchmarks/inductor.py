"""``torch.compile`` (inductor) of the compiled model against the seed runtime.

Cold start: each repetition runs two fresh processes, one per model, each with an empty
``TORCHINDUCTOR_CACHE_DIR`` of its own; the order alternates between repetitions. A process first
compiles a tiny unrelated function, so that importing inductor and starting its workers stay out
of the timed region, then times ``torch.compile(model)`` plus the first call (which is when
compilation happens). The figure is the median over repetitions of the per-repetition ratio.

Steady state: one process compiles both models, then times their calls with
:func:`benchmarks.timing.compare`. Graph breaks come from ``torch._dynamo.explain``.

Every call is the eval-mode forward of the overhead-bound stack under ``torch.no_grad()``.
Run as ``python -m benchmarks.inductor cold --model compiled``; the parent side is :func:`measure`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any, Sequence

__all__ = ["main", "measure"]

_KINDS = ("compiled", "seed")


def _build(kind: str, layers: int, width: int, transform: str) -> Any:
    import fxpass
    from benchmarks.models import TRANSFORMS, seed_stack

    model = seed_stack(layers, width, TRANSFORMS[transform]).eval()
    return fxpass.compile(model).eval() if kind == "compiled" else model


def _warm_inductor() -> None:
    import torch

    torch.compile(lambda t: torch.sin(t) + 1)(torch.randn(3))


def _cold(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    model = _build(args.model, args.layers, args.width, args.transform)
    x = torch.randn(1, args.width)
    _warm_inductor()
    with torch.no_grad():
        start = time.perf_counter()
        optimized = torch.compile(model)
        optimized(x)
        seconds = time.perf_counter() - start
    return {"model": args.model, "seconds": seconds}


def _steady(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch._dynamo

    from benchmarks.timing import compare

    models = {kind: _build(kind, args.layers, args.width, args.transform) for kind in _KINDS}
    x = torch.randn(1, args.width)
    breaks = {}
    graphs = {}
    with torch.no_grad():
        for kind, model in models.items():
            torch._dynamo.reset()
            explanation = torch._dynamo.explain(model)(x)
            breaks[kind] = explanation.graph_break_count
            graphs[kind] = explanation.graph_count
        torch._dynamo.reset()
        optimized = {kind: torch.compile(model) for kind, model in models.items()}
        outputs = {kind: fn(x) for kind, fn in optimized.items()}
        torch.testing.assert_close(outputs["compiled"], outputs["seed"])
        comparison = compare(
            lambda: optimized["compiled"](x),
            lambda: optimized["seed"](x),
            rounds=args.rounds,
            min_block_s=args.min_block_s,
        )
    return {"comparison": comparison.detail(), "graph_breaks": breaks, "graphs": graphs}


def main(argv: Sequence[str] | None = None) -> int:
    """The child: one cold start, or the steady state and graph breaks."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inductor")
    parser.add_argument("what", choices=("cold", "steady"))
    parser.add_argument("--model", choices=_KINDS, default="compiled")
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--transform", default="fakequant")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--min-block-s", type=float, default=0.05)
    args = parser.parse_args(argv)

    import torch

    from benchmarks.child import emit

    torch.set_num_threads(1)
    emit(_cold(args) if args.what == "cold" else _steady(args))
    return 0


def measure(
    *, layers: int, width: int, transform: str, repetitions: int, rounds: int, min_block_s: float
) -> dict[str, Any]:
    """Run the cold starts and the steady state in fresh processes.

    Returns:
        ``cold``: per-repetition seconds of each model and their ratios (compiled / seed);
        ``steady``: what the steady-state child measured.
    """
    from benchmarks.child import run_child

    common = ["--layers", str(layers), "--width", str(width), "--transform", transform]
    repeats: list[dict[str, float]] = []
    for index in range(repetitions):
        order = _KINDS if index % 2 == 0 else tuple(reversed(_KINDS))
        seconds = {}
        for kind in order:
            with tempfile.TemporaryDirectory(prefix="fxpass-inductor-") as cache:
                out = run_child(
                    "benchmarks.inductor",
                    ["cold", "--model", kind, *common],
                    env={"TORCHINDUCTOR_CACHE_DIR": cache},
                )
            seconds[kind] = out["seconds"]
        repeats.append(seconds)
    ratios = [r["compiled"] / r["seed"] for r in repeats]
    with tempfile.TemporaryDirectory(prefix="fxpass-inductor-") as cache:
        steady = run_child(
            "benchmarks.inductor",
            ["steady", *common, "--rounds", str(rounds), "--min-block-s", str(min_block_s)],
            env={"TORCHINDUCTOR_CACHE_DIR": cache},
        )
    return {
        "cold": {"ratio": statistics.median(ratios), "ratios": ratios, "seconds": repeats},
        "steady": steady,
    }


if __name__ == "__main__":
    raise SystemExit(main())
