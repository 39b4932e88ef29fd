"""Memory of ``fxpass.compile`` on a deep stack, each number measured in a fresh process.

Every child process builds the seed-runtime stack and first compiles (or traces) a two-layer stack,
so that imports and caches stay out of the numbers, then measures one thing:

* ``rss``: the peak RSS growth during the compile (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``, minus ``VmRSS`` before; ``ru_maxrss`` where that is not possible),
  the RSS growth from before to after (allocator-dependent), whether the compiled model's
  parameters are the model's own tensor objects, and the bytes of any tensor storage it holds
  that the model does not;
* ``heap``: the Python heap the compiled model keeps alive (``tracemalloc``, after a
  collection): graph nodes, generated code, copied module dictionaries. Tensor storage is not on
  the Python heap, which is why ``rss`` counts it separately;
* ``fx-floor``: the same for ``torch.fx.symbolic_trace`` of the functional twin (same nodes), the
  floor of any fx pass.

Run as ``python -m benchmarks.memory rss --layers 1000``; the parent side is :func:`measure`.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tracemalloc
from typing import Any, Callable, Sequence

__all__ = ["main", "measure"]

#: The measurements, one fresh process each: RSS, Python heap of the compiled model, Python heap of
#: ``symbolic_trace`` of the functional twin.
_WHAT = ("rss", "heap", "fx-floor")


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _storages(tensors: Any) -> dict[int, int]:
    """data_ptr -> bytes of the storages behind ``tensors``."""
    found = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        found[storage.data_ptr()] = storage.nbytes()
    return found


def _python_heap(build: Callable[[], Any]) -> tuple[int, int]:
    """Bytes of Python heap that what ``build`` returns keeps alive, and the peak while building."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return current - base, peak - base


def _rss(model: Any, compile_fn: Callable[[Any], Any]) -> dict[str, Any]:
    params = dict(model.named_parameters())
    gc.collect()
    rss_before = _status_bytes("VmRSS")
    reset = _reset_peak()
    gm = compile_fn(model)
    peak = _status_bytes("VmHWM") if reset else _maxrss_bytes()
    gc.collect()
    rss_after = _status_bytes("VmRSS")
    compiled = dict(gm.named_parameters())
    own = _storages([*model.parameters(), *model.buffers()])
    held = _storages([*gm.parameters(), *gm.buffers(), *gm.state_dict().values()])
    return {
        "rss_before": rss_before,
        "rss_peak": peak,
        "peak_is_reset_hwm": reset,
        "rss_after": rss_after,
        "parameters_shared": list(compiled) == list(params) and all(compiled[k] is params[k] for k in params),
        "parameter_count": len(params),
        "unshared_tensor_bytes": sum(n for ptr, n in held.items() if ptr not in own),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The child: one measurement of one compile (or of the fx floor), emitted as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("what", choices=_WHAT)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--transform", default="fakequant")
    args = parser.parse_args(argv)

    import torch
    import torch.fx

    import fxpass
    from benchmarks.child import emit
    from benchmarks.models import TRANSFORMS, FunctionalTwin, seed_stack

    torch.set_num_threads(1)
    transform = TRANSFORMS[args.transform]
    model = seed_stack(args.layers, args.width, transform)
    small = seed_stack(2, args.width, transform)
    out: dict[str, Any] = {
        "layers": args.layers,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    if args.what == "fx-floor":
        torch.fx.symbolic_trace(FunctionalTwin(small, transform))  # first-use costs
        twin = FunctionalTwin(model, transform)
        out["fx_trace_retained_bytes"], _ = _python_heap(lambda: torch.fx.symbolic_trace(twin))
    else:
        fxpass.compile(small)  # first-use costs: imports, caches
        if args.what == "rss":
            out.update(_rss(model, fxpass.compile))
        else:
            out["python_retained_bytes"], out["python_peak_bytes"] = _python_heap(lambda: fxpass.compile(model))
    emit(out)
    return 0


def measure(layers: int, width: int, transform: str) -> dict[str, Any]:
    """Run :func:`main` once for each measurement, each in a fresh process, and merge the results."""
    from benchmarks.child import run_child

    found: dict[str, Any] = {}
    for what in _WHAT:
        found.update(
            run_child(
                "benchmarks.memory",
                [what, "--layers", str(layers), "--width", str(width), "--transform", transform],
            )
        )
    return found


if __name__ == "__main__":
    raise SystemExit(main())
