"""Every figure of the benchmark: what it compares, its target, and the code that measures it.

A figure is a ratio (or, for graph breaks, a count) with an upper-bound target or none. Figures
come from *benchmarks*: one function measures one or more figures and returns a
:class:`Measured` for each key it declares. The runner gives every declared key a row even when
its benchmark is skipped or fails, so the table and the JSON always hold every figure.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.fx
import torch.nn as nn

import fxpass
from benchmarks import inductor, memory
from benchmarks.models import (
    TRANSFORMS,
    FunctionalTwin,
    parametrized_stack,
    plain_stack,
    seed_stack,
    seed_zoo,
)
from benchmarks.timing import Comparison, compare

__all__ = ["BENCHMARKS", "FIGURES", "Benchmark", "Figure", "Measured", "Settings"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one run.

    Attributes:
        quick: tiny sizes, to check that everything runs.
        inductor: run the torch.compile figures (minutes).
        transform: key of :data:`benchmarks.models.TRANSFORMS`, applied to every weight.
        rounds: rounds of an eager timing.
        compile_rounds: rounds of a compile-time comparison at ``layers``.
        scaling_rounds: rounds of the ``big_layers`` against ``layers`` compile comparison.
        min_block_s: shortest timed block.
        layers: blocks of the overhead-bound stack.
        width: its width.
        big_layers: blocks of the deep stack (compile scaling, memory).
        compute_layers: blocks of the compute-bound stack.
        compute_width: its width.
        compute_batch: its batch.
        zoo_batch: batch of the zoo models' inputs.
        inductor_repetitions: cold starts per model.
    """

    quick: bool = False
    inductor: bool = False
    transform: str = "fakequant"
    rounds: int = 41
    compile_rounds: int = 21
    scaling_rounds: int = 11
    min_block_s: float = 0.05
    layers: int = 100
    width: int = 64
    big_layers: int = 1000
    compute_layers: int = 20
    compute_width: int = 512
    compute_batch: int = 64
    zoo_batch: int = 8
    inductor_repetitions: int = 3

    @classmethod
    def quick_settings(cls, **overrides: Any) -> Settings:
        """Tiny sizes and few rounds: every figure runs, none means anything."""
        tiny: dict[str, Any] = dict(
            quick=True,
            rounds=3,
            compile_rounds=3,
            scaling_rounds=3,
            min_block_s=0.002,
            layers=4,
            big_layers=20,
            compute_layers=2,
            compute_width=32,
            compute_batch=4,
            inductor_repetitions=1,
        )
        tiny.update(overrides)
        return cls(**tiny)

    def fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The weight transform."""
        return TRANSFORMS[self.transform]


@dataclasses.dataclass(frozen=True)
class Figure:
    """One row of the table.

    Attributes:
        key: stable identifier (the JSON key).
        label: what is compared; ``{field}`` is filled from :class:`Settings`.
        target: upper bound the value should meet, or None when the figure is only reported.
    """

    key: str
    label: str
    target: float | None = None


@dataclasses.dataclass(frozen=True)
class Measured:
    """What a benchmark found for one figure.

    Attributes:
        value: the ratio (or count); None when there is none.
        notes: what the reader needs besides the value.
        detail: raw numbers for the JSON.
    """

    value: float | None
    notes: str = ""
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, comparison: Comparison, notes: str = "", scale: float = 1.0) -> Measured:
        """A ratio from :func:`benchmarks.timing.compare`, times ``scale``."""
        detail = comparison.detail()
        detail["scale"] = scale
        text = "; ".join(filter(None, [notes, comparison.spread(scale)]))
        return cls(comparison.ratio * scale, text, detail)

    @classmethod
    def failed(cls, error: BaseException) -> Measured:
        """No value: the figure's measurement raised ``error`` (its last line in the notes).

        Example:
            >>> Measured.failed(RuntimeError("tracing failed\\nboom")).notes
            'failed: RuntimeError: boom'
        """
        lines = str(error).strip().splitlines()
        return cls(None, f"failed: {type(error).__name__}: {lines[-1] if lines else ''}")


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """A function measuring some figures.

    Attributes:
        name: for progress messages and ``--only``.
        keys: the figures it measures.
        run: returns a :class:`Measured` for each key.
        needs_inductor: skipped unless ``Settings.inductor``.
    """

    name: str
    keys: tuple[str, ...]
    run: Callable[[Settings], dict[str, Measured]]
    needs_inductor: bool = False


_OVERHEAD = "{layers} x Linear({width})+ReLU, batch 1"

FIGURES: dict[str, Figure] = {
    f.key: f
    for f in (
        Figure("compile_vs_fx_trace", "compile / symbolic_trace of the functional twin, {layers} layers", 0.8),
        Figure("compile_scaling", "compile time per layer, {big_layers} / {layers} layers", 1.1),
        Figure("forward_vs_seed", f"forward ({_OVERHEAD}, eval, no_grad): compiled / seed", 0.85),
        Figure("forward_vs_twin", "forward (same): compiled / functional twin", 1.1),
        Figure("train_vs_seed", "train step (same model): compiled / seed", 0.95),
        Figure("inline_forward_vs_seed", "forward (same), compiled with inline_activations=True / seed", 0.85),
        Figure("inline_forward_vs_twin", "forward (same), compiled with inline_activations=True / twin", 1.1),
        Figure("inline_train_vs_seed", "train step (same), compiled with inline_activations=True / seed", 0.95),
        Figure(
            "compute_forward_vs_seed",
            "forward ({compute_layers} x Linear({compute_width}), batch {compute_batch}, eval): compiled / seed",
            1.02,
        ),
        Figure("frozen_vs_plain", f"frozen forward / plain eager model ({_OVERHEAD}, eval)", 0.8),
        Figure("cnn_train_vs_seed", "CNN, zoo cnn_bn (batch {zoo_batch}), train step: compiled / seed"),
        Figure("cnn_eval_vs_seed", "CNN, zoo cnn_bn (batch {zoo_batch}), eval forward: compiled / seed"),
        Figure("transformer_train_vs_seed", "zoo transformer (batch {zoo_batch}), train step: compiled / seed"),
        Figure("transformer_eval_vs_seed", "zoo transformer (batch {zoo_batch}), eval forward: compiled / seed"),
        Figure("parametrize_forward_vs_seed", f"forward ({_OVERHEAD}, eval): parametrize / seed"),
        Figure("parametrize_train_vs_seed", "train step (same model): parametrize / seed"),
        Figure(
            "compiled_parametrize_forward_vs_parametrize",
            "forward (same, eval): compiled from parametrize / parametrize",
        ),
        Figure(
            "compiled_parametrize_train_vs_parametrize",
            "train step (same): compiled from parametrize / parametrize",
        ),
        Figure("memory_compile_peak", "peak RSS growth compiling {big_layers} layers / parameter bytes"),
        Figure("memory_tensors", "tensor memory added by the compiled model / parameter bytes", 0.05),
        Figure("memory_retained", "all memory added by the compiled model / parameter bytes", 0.05),
        Figure("inductor_cold_vs_seed", f"torch.compile cold start ({_OVERHEAD}, eval): compiled / seed", 1.05),
        Figure("inductor_steady_vs_seed", "torch.compile steady state (same): compiled / seed", 1.05),
        Figure("inductor_graph_breaks", "torch.compile graph breaks of the compiled model (count)", 0),
    )
}


# -- helpers -------------------------------------------------------------------------------------


def _parameters(*models: nn.Module) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for model in models:
        for p in model.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def _train_step(model: nn.Module, x: torch.Tensor, params: list[nn.Parameter]) -> Callable[[], None]:
    def step() -> None:
        for p in params:
            p.grad = None
        model(x).sum().backward()

    return step


def _same_output(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    """Refuse to time two models that do not compute the same thing."""
    torch.manual_seed(0)
    out_a = a(x)
    torch.manual_seed(0)
    out_b = b(x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-6)


def _eager(a: nn.Module, b: nn.Module, x: torch.Tensor, s: Settings, *, train: bool) -> Comparison:
    """Compare ``a`` with ``b``: a train step (forward + backward), or an eval forward under
    no_grad."""
    for model in (a, b):
        model.train(train)
    if train:
        _same_output(a, b, x)
        params = _parameters(a, b)
        return compare(_train_step(a, x, params), _train_step(b, x, params), rounds=s.rounds, min_block_s=s.min_block_s)
    with torch.no_grad():
        _same_output(a, b, x)
        return compare(lambda: a(x), lambda: b(x), rounds=s.rounds, min_block_s=s.min_block_s)


def _compile(model: nn.Module, **options: Any) -> torch.fx.GraphModule:
    gm = fxpass.compile(model, **options)
    assert isinstance(gm, torch.fx.GraphModule)  # model scope, the default
    return gm


def _input(width: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, width, generator=torch.Generator().manual_seed(1))


# -- benchmarks ----------------------------------------------------------------------------------


def _compile_time(s: Settings) -> dict[str, Measured]:
    fn = s.fn()
    model = seed_stack(s.layers, s.width, fn)
    twin = FunctionalTwin(model, fn)
    nodes = len(_compile(model).graph.nodes), len(torch.fx.symbolic_trace(twin).graph.nodes)
    vs_trace = compare(
        lambda: fxpass.compile(model),
        lambda: torch.fx.symbolic_trace(twin),
        rounds=s.compile_rounds,
        warmup=2,
        min_block_s=s.min_block_s,
    )
    big = seed_stack(s.big_layers, s.width, fn)
    scaling = compare(
        lambda: fxpass.compile(big),
        lambda: fxpass.compile(model),
        rounds=s.scaling_rounds,
        warmup=1,
        min_block_s=s.min_block_s,
    )
    return {
        "compile_vs_fx_trace": Measured.of(vs_trace, f"nodes {nodes[0]} vs {nodes[1]}"),
        "compile_scaling": Measured.of(scaling, scale=s.layers / s.big_layers),
    }


def _overhead(s: Settings) -> dict[str, Measured]:
    fn = s.fn()
    model = seed_stack(s.layers, s.width, fn)
    gm = _compile(model)
    inlined = _compile(model, inline_activations=True)
    twin = FunctionalTwin(model, fn)
    x = _input(s.width)
    return {
        "forward_vs_seed": Measured.of(_eager(gm, model, x, s, train=False)),
        "forward_vs_twin": Measured.of(_eager(gm, twin, x, s, train=False)),
        "train_vs_seed": Measured.of(_eager(gm, model, x, s, train=True)),
        "inline_forward_vs_seed": Measured.of(_eager(inlined, model, x, s, train=False)),
        "inline_forward_vs_twin": Measured.of(_eager(inlined, twin, x, s, train=False)),
        "inline_train_vs_seed": Measured.of(_eager(inlined, model, x, s, train=True)),
    }


def _compute(s: Settings) -> dict[str, Measured]:
    model = seed_stack(s.compute_layers, s.compute_width, s.fn())
    gm = _compile(model)
    x = _input(s.compute_width, s.compute_batch)
    return {"compute_forward_vs_seed": Measured.of(_eager(gm, model, x, s, train=False))}


def _frozen(s: Settings) -> dict[str, Measured]:
    if not hasattr(fxpass, "freeze"):
        return {"frozen_vs_plain": Measured(None, "n/a (fxpass.freeze missing)")}
    fn = s.fn()
    frozen = fxpass.freeze(seed_stack(s.layers, s.width, fn))
    plain = plain_stack(s.layers, s.width, fn)
    x = _input(s.width)
    return {"frozen_vs_plain": Measured.of(_eager(frozen, plain, x, s, train=False))}


def _zoo(s: Settings) -> dict[str, Measured]:
    found = {}
    for name, prefix in (("cnn_bn", "cnn"), ("transformer", "transformer")):
        model, x = seed_zoo(name, s.zoo_batch)
        gm = _compile(model)
        kept = len(fxpass.record_of(gm).kept_calls)
        note = f"{kept} kept call(s)"
        found[f"{prefix}_train_vs_seed"] = Measured.of(_eager(gm, model, x, s, train=True), note)
        found[f"{prefix}_eval_vs_seed"] = Measured.of(_eager(gm, model, x, s, train=False), note)
    return found


def _parametrize(s: Settings) -> dict[str, Measured]:
    fn = s.fn()
    seed = seed_stack(s.layers, s.width, fn)
    param = parametrized_stack(s.layers, s.width, fn)
    gm = _compile(param)
    x = _input(s.width)
    return {
        "parametrize_forward_vs_seed": Measured.of(_eager(param, seed, x, s, train=False)),
        "parametrize_train_vs_seed": Measured.of(_eager(param, seed, x, s, train=True)),
        "compiled_parametrize_forward_vs_parametrize": Measured.of(_eager(gm, param, x, s, train=False)),
        "compiled_parametrize_train_vs_parametrize": Measured.of(_eager(gm, param, x, s, train=True)),
    }


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _memory(s: Settings) -> dict[str, Measured]:
    m = memory.measure(s.big_layers, s.width, s.transform)
    params = m["parameter_bytes"]
    peak = m["rss_peak"] - m["rss_before"]
    extra = m["python_retained_bytes"] + m["unshared_tensor_bytes"]
    how = "VmHWM" if m["peak_is_reset_hwm"] else "ru_maxrss (includes start-up)"
    shared = "yes" if m["parameters_shared"] else "NO"
    heap, floor = m["python_retained_bytes"], m["fx_trace_retained_bytes"]
    per_layer = m["layers"] * 1024
    return {
        "memory_compile_peak": Measured(
            peak / params, f"{_mb(peak)} over {_mb(params)} of parameters ({how})", m
        ),
        "memory_tensors": Measured(
            m["unshared_tensor_bytes"] / params,
            f"parameters and buffers are the model's own objects: {shared} ({m['parameter_count']} parameters)",
            m,
        ),
        "memory_retained": Measured(
            extra / params,
            f"Python heap {_mb(heap)} ({heap / per_layer:.1f} KB/layer; symbolic_trace of the twin keeps "
            f"{floor / per_layer:.1f} KB/layer) + unshared tensors {_mb(m['unshared_tensor_bytes'])}; "
            f"RSS +{_mb(m['rss_after'] - m['rss_before'])}",
            m,
        ),
    }


def _inductor(s: Settings) -> dict[str, Measured]:
    m = inductor.measure(
        layers=s.layers,
        width=s.width,
        transform=s.transform,
        repetitions=s.inductor_repetitions,
        rounds=s.rounds,
        min_block_s=s.min_block_s,
    )
    cold, steady = m["cold"], m["steady"]
    seconds = ", ".join(f"{r['compiled']:.1f}/{r['seed']:.1f} s" for r in cold["seconds"])
    ratios = steady["comparison"]
    breaks = steady["graph_breaks"]
    return {
        "inductor_cold_vs_seed": Measured(
            cold["ratio"], f"{len(cold['ratios'])} pairs of fresh processes (compiled/seed: {seconds})", cold
        ),
        "inductor_steady_vs_seed": Measured(
            ratios["ratio"], f"IQR {ratios['q1']:.3f}-{ratios['q3']:.3f}, {ratios['rounds']} rounds", steady
        ),
        "inductor_graph_breaks": Measured(
            breaks["compiled"],
            f"graphs: compiled {steady['graphs']['compiled']}, seed {steady['graphs']['seed']}; "
            f"seed breaks {breaks['seed']}",
            steady,
        ),
    }


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("compile", ("compile_vs_fx_trace", "compile_scaling"), _compile_time),
    Benchmark(
        "overhead",
        ("forward_vs_seed", "forward_vs_twin", "train_vs_seed", "inline_forward_vs_seed", "inline_forward_vs_twin", "inline_train_vs_seed"),
        _overhead,
    ),
    Benchmark("compute", ("compute_forward_vs_seed",), _compute),
    Benchmark("frozen", ("frozen_vs_plain",), _frozen),
    Benchmark(
        "zoo",
        ("cnn_train_vs_seed", "cnn_eval_vs_seed", "transformer_train_vs_seed", "transformer_eval_vs_seed"),
        _zoo,
    ),
    Benchmark(
        "parametrize",
        (
            "parametrize_forward_vs_seed",
            "parametrize_train_vs_seed",
            "compiled_parametrize_forward_vs_parametrize",
            "compiled_parametrize_train_vs_parametrize",
        ),
        _parametrize,
    ),
    Benchmark("memory", ("memory_compile_peak", "memory_tensors", "memory_retained"), _memory),
    Benchmark(
        "inductor",
        ("inductor_cold_vs_seed", "inductor_steady_vs_seed", "inductor_graph_breaks"),
        _inductor,
        needs_inductor=True,
    ),
)
