"""``python -m benchmarks --real``: the figures users feel, on real architectures.

For every model of :mod:`benchmarks.real_models` (runtime-patched throughout with the seed
runtime, one thread, batch 1), each a ratio with the method of :mod:`benchmarks.timing`
(interleaved calls, median of per-round ratios):

* ``train``: an eager train step (forward, ``sum`` of the logits, backward): compiled / runtime;
* ``eval``: an eager eval forward under ``no_grad``: compiled / runtime;
* ``frozen``: the eval forward of ``fxpass.freeze(runtime)`` / the plain model holding the
  transformed weights;
* ``compile``: ``fxpass.compile(runtime)`` / ``torch.fx.symbolic_trace(unpatched)``, for the models
  torch.fx traces whole (model scope);
* ``load``: ``torch.load`` of the whole compiled model / building the runtime model and
  ``load_state_dict`` of its saved state;
* ``parity``: ``fxpass.parity.check(steps=3)`` / the same steps run bare on both models (compile,
  copies, forward, loss, backward and optimizer step, without any comparison).

The eval and frozen figures also give their floor (:func:`aten_share`): the share of the
reference's forward spent inside ATen operators, which is the best ratio a compiled model running
the same operators could reach. The compile figure's notes give the node counts and the ratio per
node.

And once per run: the module-scope compile of a Llama-7B-shaped config on the meta device (seconds
and peak RSS growth, in a fresh process), and with ``--inductor`` the torch.compile cold start and
steady state of the ResNet and GPT-2 (compiled / runtime, fresh processes as in
:mod:`benchmarks.inductor`). Before a pair is timed its outputs are checked equal.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx
import torch.nn as nn

import fxpass
from benchmarks.figures import Measured
from benchmarks.real_models import REAL_MODELS, RealModel, get
from benchmarks.timing import compare

__all__ = ["FLOORS", "PER_MODEL", "RealSettings", "TARGETS", "main", "measure_model", "run", "table", "targets"]


@dataclasses.dataclass(frozen=True)
class RealSettings:
    """Sizes and repetitions of a real-model run.

    Attributes:
        quick: tiny models and few rounds, only to check that everything runs.
        inductor: also run the torch.compile figures.
        rounds: rounds of the eager timings.
        compile_rounds: rounds of the compile and load timings.
        parity_rounds: rounds of the parity-harness timing.
        floor_rounds: rounds of the ATen share of the eval forwards (their floor).
        min_block_s: shortest timed block.
        inductor_repetitions: cold starts per model and kind.
        models: the models to run (all when empty).
    """

    quick: bool = False
    inductor: bool = False
    rounds: int = 21
    compile_rounds: int = 11
    parity_rounds: int = 3
    floor_rounds: int = 5
    min_block_s: float = 0.05
    inductor_repetitions: int = 3
    models: tuple[str, ...] = ()

    @classmethod
    def quick_settings(cls, **overrides: Any) -> RealSettings:
        tiny: dict[str, Any] = dict(
            quick=True, rounds=3, compile_rounds=3, parity_rounds=1, floor_rounds=1, min_block_s=0.002, inductor_repetitions=1
        )
        tiny.update(overrides)
        return cls(**tiny)


#: The per-model figures: key -> what is compared.
PER_MODEL = {
    "train": "eager train step, batch 1: compiled / runtime",
    "eval": "eager eval forward, batch 1: compiled / runtime",
    "frozen": "frozen eval forward / plain model holding the transformed weights",
    "compile": "fxpass.compile / symbolic_trace of the unpatched model (model scope)",
    "load": "torch.load of the whole compiled model / build the runtime model + load_state_dict",
    "parity": "fxpass.parity.check(steps=3) / the same steps run bare on both models",
}


#: The figures that also report their floor (see :func:`aten_share`): the ratio against the
#: reference that a model computing the same operators with no Python overhead would reach.
FLOORS = ("eval", "frozen")


@dataclasses.dataclass(frozen=True)
class Target:
    """An upper bound on a statistic of a figure over the models (or on a single figure)."""

    key: str
    label: str
    statistic: str  # "max" (every model), "median", or "value"
    bound: float


TARGETS = (
    Target("train", "eager train step: compiled / runtime, every model", "max", 1.0),
    Target("eval", "eager eval forward: compiled / runtime, median", "median", 0.95),
    Target("eval", "eager eval forward: compiled / runtime, every model", "max", 1.0),
    Target("frozen", "frozen eval forward / plain model, median", "median", 0.95),
    Target("compile", "fxpass.compile / symbolic_trace (model scope), every model", "max", 1.5),
    Target("load", "torch.load of the compiled model / build + load_state_dict, every model", "max", 1.0),
    Target("parity", "parity.check(steps=3) / the bare steps, every model", "max", 1.5),
    Target("meta_llama_seconds", "module-scope compile, Llama-7B config on meta (s)", "value", 1.0),
    Target("meta_llama_rss_mb", "its peak RSS growth (MB)", "value", 100.0),
    Target("inductor_cold_resnet", "torch.compile cold start, ResNet: compiled / runtime", "value", 1.05),
    Target("inductor_steady_resnet", "torch.compile steady state, ResNet: compiled / runtime", "value", 1.05),
    Target("inductor_cold_gpt2", "torch.compile cold start, GPT-2: compiled / runtime", "value", 1.05),
    Target("inductor_steady_gpt2", "torch.compile steady state, GPT-2: compiled / runtime", "value", 1.05),
)


META_KEYS = ("meta_llama_seconds", "meta_llama_rss_mb")
INDUCTOR_KEYS = ("inductor_cold_resnet", "inductor_steady_resnet", "inductor_cold_gpt2", "inductor_steady_gpt2")

# -- one model ------------------------------------------------------------------------------------


def _call(model: nn.Module, inputs: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    args, kwargs = inputs
    return model(*args, **kwargs)


def _parameters(*models: nn.Module) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for model in models:
        for parameter in model.parameters():
            seen.setdefault(id(parameter), parameter)
    return list(seen.values())


def _same(a: nn.Module, b: nn.Module, spec: RealModel, inputs: Any, *, exact: bool = True) -> None:
    """Refuse to time two models that do not compute the same thing."""
    outputs = []
    for model in (a, b):
        torch.manual_seed(0)
        outputs.append(spec.loss(_call(model, inputs)))
    if exact:
        if not torch.equal(outputs[0], outputs[1]):
            raise AssertionError(f"{spec.name}: the two sides' outputs differ")
    else:
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)


def _train(a: nn.Module, b: nn.Module, spec: RealModel, inputs: Any, s: RealSettings) -> Measured:
    a.train()
    b.train()
    _same(a, b, spec, inputs)
    params = _parameters(a, b)

    def step(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            for parameter in params:
                parameter.grad = None
            spec.loss(_call(model, inputs)).sum().backward()

        return run

    return Measured.of(compare(step(a), step(b), rounds=s.rounds, min_block_s=s.min_block_s))


def _eval(a: nn.Module, b: nn.Module, spec: RealModel, inputs: Any, s: RealSettings, *, exact: bool = True) -> Measured:
    a.eval()
    b.eval()
    with torch.no_grad():
        _same(a, b, spec, inputs, exact=exact)
        comparison = compare(lambda: _call(a, inputs), lambda: _call(b, inputs), rounds=s.rounds, min_block_s=s.min_block_s)
        floor = aten_share(lambda: _call(b, inputs), rounds=s.floor_rounds, min_block_s=s.min_block_s if s.quick else 0.1)
    measured = Measured.of(comparison, f"floor {floor:.3f}")
    measured.detail["floor"] = floor
    return measured


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null within the block (the profiler's C++ side logs each start
    and stop there, whatever the log level)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def aten_share(fn: Callable[[], Any], *, rounds: int = 3, min_block_s: float = 0.1) -> float:
    """The share of ``fn``'s time spent inside ATen operators: the ratio a model computing the
    same operators with no Python around them would reach against it (its floor).

    Per round, a block of calls under ``torch.profiler`` (the summed self time of every
    ``aten::`` event) and the same block unprofiled (the wall time); the median over rounds of
    their ratio. Approximate: what the profiler costs per operator partly adds to the
    operators' self times, so the true floor may be a little lower.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()
    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    calls = max(1, int(min_block_s / max(once, 1e-9)))
    shares = []
    for _ in range(rounds):
        with _stderr_silenced(), profile(activities=[ProfilerActivity.CPU]) as profiled:
            for _ in range(calls):
                fn()
        inside = sum(e.self_cpu_time_total for e in profiled.key_averages() if e.key.startswith("aten::")) / 1e6
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        shares.append(inside / (time.perf_counter() - start))
    return statistics.median(shares)


def _compile_time(runtime: nn.Module, spec: RealModel, s: RealSettings, scope: str) -> Measured:
    if scope != "model":
        start = time.perf_counter()
        fxpass.compile(runtime, scope="module")
        seconds = time.perf_counter() - start
        return Measured(None, f"module scope ({seconds:.2f} s): symbolic_trace cannot trace the model")
    unpatched = spec.unpatched(s.quick)
    nodes = len(fxpass.compile(runtime).graph.nodes), len(torch.fx.symbolic_trace(unpatched).graph.nodes)
    comparison = compare(
        lambda: fxpass.compile(runtime),
        lambda: torch.fx.symbolic_trace(unpatched),
        rounds=s.compile_rounds,
        warmup=1,
        min_block_s=s.min_block_s,
    )
    per_node = comparison.ratio * nodes[1] / nodes[0]
    measured = Measured.of(comparison, f"nodes {nodes[0]} vs {nodes[1]}, per node {per_node:.2f}")
    measured.detail.update(nodes=nodes, per_node=per_node)
    return measured


def _load(compiled: nn.Module, runtime: nn.Module, spec: RealModel, s: RealSettings) -> Measured:
    whole, state = io.BytesIO(), io.BytesIO()
    torch.save(compiled, whole)
    torch.save(runtime.state_dict(), state)

    def load_whole() -> nn.Module:
        whole.seek(0)
        return torch.load(whole, weights_only=False)

    def build_and_load() -> nn.Module:
        state.seek(0)
        model = spec.runtime(s.quick)
        model.load_state_dict(torch.load(state))
        return model

    with torch.no_grad():
        _same(load_whole().eval(), build_and_load().eval(), spec, spec.example(s.quick))
    comparison = compare(load_whole, build_and_load, rounds=s.compile_rounds, warmup=1, min_block_s=s.min_block_s)
    return Measured.of(comparison, f"{whole.getbuffer().nbytes / 2**20:.1f} MB whole")


def _bare_steps(model: nn.Module, inputs: Any, steps: int = 3) -> None:
    """What ``check(steps=3)`` runs, without a comparison: per mode, copies of the runtime model
    and of its compile, ``steps`` optimizer steps of each on the default loss."""
    for mode in ("train", "eval"):
        reference = copy.deepcopy(model).train(mode == "train")
        candidate = fxpass.compile(copy.deepcopy(model), scope="auto").train(mode == "train")
        for module in (reference, candidate):
            optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
            for step in range(steps):
                torch.manual_seed(step)
                optimizer.zero_grad(set_to_none=True)
                fxpass.parity.default_loss(_call(module, inputs)).backward()
                optimizer.step()


def _parity(runtime: nn.Module, spec: RealModel, s: RealSettings) -> Measured:
    args, kwargs = spec.example(s.quick)
    report = fxpass.parity.check(runtime, args, example_kwargs=kwargs, steps=3, compile_options={"scope": "auto"})
    if not report.ok:
        raise AssertionError(f"{spec.name}: {report.summary()}")
    comparison = compare(
        lambda: fxpass.parity.check(runtime, args, example_kwargs=kwargs, steps=3, compile_options={"scope": "auto"}),
        lambda: _bare_steps(runtime, (args, kwargs)),
        rounds=s.parity_rounds,
        warmup=1,
        min_block_s=s.min_block_s,
    )
    return Measured.of(comparison)


def measure_model(spec: RealModel, s: RealSettings) -> dict[str, Any]:
    """Every per-model figure of ``spec``: key -> :class:`Measured` (a failing figure gets a
    value of None and the error in its notes), plus its ``scope``."""
    runtime = spec.runtime(s.quick)
    inputs = spec.example(s.quick)
    compiled = fxpass.compile(runtime, scope="auto")
    scope = "module" if fxpass.scope_record(compiled) is not None else "model"
    jobs: dict[str, Callable[[], Measured]] = {
        "train": lambda: _train(compiled, runtime, spec, inputs, s),
        "eval": lambda: _eval(compiled, runtime, spec, inputs, s),
        "frozen": lambda: _eval(fxpass.freeze(runtime), spec.plain(runtime, s.quick), spec, inputs, s, exact=False),
        "compile": lambda: _compile_time(runtime, spec, s, scope),
        "load": lambda: _load(compiled, runtime, spec, s),
        "parity": lambda: _parity(runtime, spec, s),
    }
    found: dict[str, Any] = {"scope": scope}
    for key, job in jobs.items():
        try:
            found[key] = job()
        except Exception as error:  # noqa: BLE001 - one failing figure must not hide the rest
            found[key] = Measured.failed(error)
    return found


# -- the whole run --------------------------------------------------------------------------------


def _meta_llama(s: RealSettings) -> dict[str, Measured]:
    from benchmarks.child import run_child

    found = run_child("benchmarks.real", ["meta-llama"] + (["--quick"] if s.quick else []))
    notes = f"{found['patched']} patched modules, {found['parts']} parts; tensor memory {found['tensor_mb']:.1f} MB"
    return {
        "meta_llama_seconds": Measured(found["seconds"], notes, found),
        "meta_llama_rss_mb": Measured(found["rss_mb"], "VmHWM reset before the compile", found),
    }


def _inductor(s: RealSettings) -> dict[str, Measured]:
    from benchmarks.child import run_child

    found: dict[str, Measured] = {}
    for name in ("resnet", "gpt2"):
        repeats = []
        for index in range(s.inductor_repetitions):
            seconds = {}
            for kind in ("compiled", "runtime") if index % 2 == 0 else ("runtime", "compiled"):
                with tempfile.TemporaryDirectory(prefix="fxpass-inductor-") as cache:
                    out = run_child(
                        "benchmarks.real",
                        ["inductor-cold", name, kind] + (["--quick"] if s.quick else []),
                        env={"TORCHINDUCTOR_CACHE_DIR": cache},
                    )
                seconds[kind] = out["seconds"]
            repeats.append(seconds)
        ratios = [r["compiled"] / r["runtime"] for r in repeats]
        shown = ", ".join(f"{r['compiled']:.1f}/{r['runtime']:.1f} s" for r in repeats)
        found[f"inductor_cold_{name}"] = Measured(
            statistics.median(ratios), f"{len(ratios)} pairs of fresh processes (compiled/runtime: {shown})",
            {"ratios": ratios, "seconds": repeats},
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="fxpass-inductor-") as cache:
            steady = run_child(
                "benchmarks.real",
                ["inductor-steady", name, "--rounds", str(s.rounds), "--min-block-s", str(s.min_block_s)]
                + (["--quick"] if s.quick else []),
                env={"TORCHINDUCTOR_CACHE_DIR": cache},
            )
        c = steady["comparison"]
        found[f"inductor_steady_{name}"] = Measured(
            c["ratio"],
            f"IQR {c['q1']:.3f}-{c['q3']:.3f}, {c['rounds']} rounds; graph breaks compiled "
            f"{steady['graph_breaks']['compiled']}, runtime {steady['graph_breaks']['runtime']}",
            steady,
        )
    return found


def run(s: RealSettings) -> dict[str, Any]:
    """Measure everything: ``{"models": {name: {"scope", figure: Measured}}, "single": {key: Measured}}``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        chosen = [get(name) for name in s.models] if s.models else list(REAL_MODELS)
        models = {}
        for index, spec in enumerate(chosen, 1):
            print(f"[{index}/{len(chosen)}] {spec.name} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            models[spec.name] = measure_model(spec, s)
            print(f"    {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        single: dict[str, Measured] = {}
        for name, job, keys in (("meta-llama", _meta_llama, META_KEYS), ("inductor", _inductor, INDUCTOR_KEYS)):
            if name == "inductor" and not s.inductor:
                single.update(dict.fromkeys(keys, Measured(None, "skipped (run with --inductor)")))
                continue
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            try:
                single.update(job(s))
            except Exception as error:  # noqa: BLE001
                single.update(dict.fromkeys(keys, Measured.failed(error)))
        return {"models": models, "single": single}
    finally:
        torch.set_num_threads(threads)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the value it is judged on and whether it is met."""
    rows = []
    for target in TARGETS:
        if target.statistic == "value":
            measured = results["single"].get(target.key)
            value = None if measured is None else measured.value
            which = ""
        else:
            values = {n: m[target.key].value for n, m in results["models"].items() if m[target.key].value is not None}
            if not values:
                value, which = None, ""
            elif target.statistic == "median":
                value, which = statistics.median(values.values()), f"over {len(values)} models"
            else:
                worst = max(values, key=lambda n: values[n])
                value, which = values[worst], f"{worst}"
        met = "n/a" if value is None else ("yes" if value <= target.bound else "no")
        rows.append({"figure": target.label, "value": value, "target": target.bound, "met": met, "where": which})
    return rows


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(results: dict[str, Any], fmt: str = "simple") -> str:
    """The per-model table, the single figures and the targets, as text."""
    from tabulate import tabulate

    per_model = [
        [name, next(m.size for m in REAL_MODELS if m.name == name), found["scope"]]
        + [_shown(found[key].value) for key in PER_MODEL]
        + [_shown(found[key].detail.get("floor")) for key in FLOORS]
        for name, found in results["models"].items()
    ]
    headers = ["model", "size", "scope", *PER_MODEL, *(f"{key} floor" for key in FLOORS)]
    text = tabulate(per_model, headers=headers, tablefmt=fmt, disable_numparse=True)
    rows = [[r["figure"], _shown(r["value"]), f"<= {r['target']:g}", r["met"], r["where"]] for r in targets(results)]
    text += "\n\n" + tabulate(rows, headers=["target", "value", "bound", "met", "worst / over"], tablefmt=fmt,
                               disable_numparse=True)  # fmt: skip
    failed = [
        f"{name} {key}: {m.notes}"
        for name, found in results["models"].items()
        for key, m in found.items()
        if key != "scope" and m.value is None and key != "compile"
    ]
    failed += [f"{key}: {m.notes}" for key, m in results["single"].items() if m.value is None]
    if failed:
        text += "\n\nwithout a value:\n" + "\n".join(f"  {line}" for line in failed)
    return text


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    """The results as JSON-ready data."""

    def plain(m: Measured) -> dict[str, Any]:
        return {"ratio": m.value, "notes": m.notes, "detail": m.detail}

    return {
        "figures": PER_MODEL,
        "models": {
            name: {"scope": found["scope"], **{k: plain(found[k]) for k in PER_MODEL}}
            for name, found in results["models"].items()
        },
        "single": {key: plain(m) for key, m in results["single"].items()},
        "targets": targets(results),
    }


# -- child processes ------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _meta_llama_child(quick: bool) -> dict[str, Any]:
    import gc

    import transformers

    from benchmarks.real_models import patch_throughout

    def build(**values: Any) -> nn.Module:
        config = transformers.LlamaConfig(**values)
        with torch.device("meta"):
            return patch_throughout(transformers.LlamaForCausalLM(config))

    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128)
    full = small if quick else dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
    )  # fmt: skip
    fxpass.compile(build(**small), scope="module")  # imports and first-use costs
    model = build(**full)
    gc.collect()
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    start = time.perf_counter()
    compiled = fxpass.compile(model, scope="module")
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM")
    record = fxpass.scope_record(compiled)
    tensors = sum(t.numel() * t.element_size() for t in compiled.state_dict().values() if t.device.type != "meta")
    return {
        "seconds": seconds,
        "rss_mb": peak - before,
        "patched": sum(len(r.patched_modules) for r in fxpass.records(compiled).values()),
        "parts": 0 if record is None else len(record.parts),
        "tensor_mb": tensors / 2**20,
    }


def _inductor_model(name: str, kind: str, quick: bool) -> tuple[nn.Module, Any]:
    spec = get(name)
    runtime = spec.runtime(quick).eval()
    model = fxpass.compile(runtime, scope="auto").eval() if kind == "compiled" else runtime
    return model, spec.example(quick)


def _inductor_cold_child(name: str, kind: str, quick: bool) -> dict[str, Any]:
    model, inputs = _inductor_model(name, kind, quick)
    torch.compile(lambda t: torch.sin(t) + 1)(torch.randn(3))  # inductor's imports and workers
    with torch.no_grad():
        start = time.perf_counter()
        optimized = torch.compile(model)
        _call(optimized, inputs)
        return {"seconds": time.perf_counter() - start}


def _inductor_steady_child(name: str, quick: bool, rounds: int, min_block_s: float) -> dict[str, Any]:
    import torch._dynamo

    models = {kind: _inductor_model(name, kind, quick) for kind in ("compiled", "runtime")}
    breaks = {}
    with torch.no_grad():
        for kind, (model, inputs) in models.items():
            torch._dynamo.reset()
            args, kwargs = inputs
            breaks[kind] = torch._dynamo.explain(model)(*args, **kwargs).graph_break_count
        torch._dynamo.reset()
        optimized = {kind: (torch.compile(model), inputs) for kind, (model, inputs) in models.items()}
        outputs = {kind: get(name).loss(_call(fn, inputs)) for kind, (fn, inputs) in optimized.items()}
        torch.testing.assert_close(outputs["compiled"], outputs["runtime"])
        comparison = compare(
            lambda: _call(*optimized["compiled"]),
            lambda: _call(*optimized["runtime"]),
            rounds=rounds,
            min_block_s=min_block_s,
        )
    return {"comparison": comparison.detail(), "graph_breaks": breaks}


def main(argv: Sequence[str] | None = None) -> int:
    """The children: ``meta-llama``, ``inductor-cold NAME KIND``, ``inductor-steady NAME``."""
    from benchmarks.child import emit

    parser = argparse.ArgumentParser(prog="python -m benchmarks.real")
    parser.add_argument("what", choices=("meta-llama", "inductor-cold", "inductor-steady"))
    parser.add_argument("name", nargs="?")
    parser.add_argument("kind", nargs="?", choices=("compiled", "runtime"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--min-block-s", type=float, default=0.05)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "meta-llama":
        emit(_meta_llama_child(args.quick))
    elif args.what == "inductor-cold":
        emit(_inductor_cold_child(args.name, args.kind, args.quick))
    else:
        emit(_inductor_steady_child(args.name, args.quick, args.rounds, args.min_block_s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
