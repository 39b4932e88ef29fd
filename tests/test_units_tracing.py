"""Unit tests of the tracer's rollback and of transform emission (fxpass._tracer, fxpass._transforms).

The rest of the suite reaches these through ``fxpass.compile``; here each is driven directly, on
a tracer with an empty graph, so a failure names the unit.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn

import fxpass
from fxpass._shells import build_shells
from fxpass._tracer import PatchTracer
from fxpass._transforms import TransformEmitter
from fxpass.ops import Opaque
from fxpass.record import KeptCall, Rewrite
from imitation_runtime import imitate
from imitation_runtime.patch import identity


def _tracer() -> PatchTracer:
    """A tracer over a one-layer tree, with an empty graph holding one placeholder."""
    tracer = PatchTracer(build_shells(nn.Sequential(nn.Linear(3, 2))))
    tracer.graph = torch.fx.Graph()
    tracer.root = tracer.tree.root
    return tracer


def _placeholder(tracer: PatchTracer) -> torch.fx.Proxy:
    return tracer.proxy(tracer.graph.placeholder("w"))


def _ops(graph: torch.fx.Graph) -> list[tuple[str, object]]:
    return [(node.op, node.target) for node in graph.nodes]


class _Calls:
    """A transform function counting its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0
        self.__qualname__ = self.__name__ = "calls"

    def __call__(self, w):
        self.calls += 1
        return self.fn(w)


def _data_dependent(w: torch.Tensor) -> torch.Tensor:
    return w * 2 if w.sum() > 0 else w  # torch.fx cannot branch on a proxy


# -- rollback -------------------------------------------------------------------------------------


def test_rollback_restores_graph_and_record():
    tracer = _tracer()
    w = _placeholder(tracer)
    kept = w * 3
    tracer.rewrites.append(Rewrite("0", "weight", "quantize", "inlined", "f", ()))
    before_nodes, before_record = _ops(tracer.graph), (list(tracer.rewrites), list(tracer.kept))
    mark = tracer.mark()
    assert not tracer.recorded_since(mark) and tracer.nodes_since(mark) == []

    added = (kept + 1).relu()
    tracer.rewrites.append(Rewrite("0", "bias", "quantize_bias", "inlined", "g", ()))
    tracer.kept.append(KeptCall("0", "reads self.training", ()))
    tracer.inlined.append("1")
    assert tracer.recorded_since(mark)
    assert [n.target for n in tracer.nodes_since(mark)] == [n.target for n in (added.node.args[0], added.node)]

    tracer.rollback(mark)
    assert _ops(tracer.graph) == before_nodes
    assert (tracer.rewrites, tracer.kept, tracer.inlined) == (*before_record, [])
    assert not tracer.recorded_since(mark)
    kept.node.graph.lint()


def test_each_record_list_counts_as_recorded():
    for name in ("rewrites", "kept", "inlined", "eager_calls"):
        tracer = _tracer()
        mark = tracer.mark()
        getattr(tracer, name).append(object())
        assert tracer.recorded_since(mark), name


# -- emission -------------------------------------------------------------------------------------


def test_module_transform_is_a_call_of_its_path():
    tracer = _tracer()
    out, how = TransformEmitter(tracer).emit("0", "quantize", nn.ReLU(), _placeholder(tracer))
    assert how == "module"
    assert (out.node.op, out.node.target) == ("call_module", "0.quantize")


def test_identity_adds_nothing():
    tracer = _tracer()
    w = _placeholder(tracer)
    before = _ops(tracer.graph)
    out, how = TransformEmitter(tracer).emit("0", "quantize", identity, w)
    assert (out, how) == (w, "inlined") and _ops(tracer.graph) == before


def test_traceable_function_is_traced_once_and_replayed():
    tracer = _tracer()
    emitter = TransformEmitter(tracer)
    fn = _Calls(lambda w: (w * 0.5).clamp(-1, 1))
    first, how = emitter.emit("0", "quantize", fn, _placeholder(tracer))
    w = _placeholder(tracer)
    second, how2 = emitter.emit("1", "quantize", fn, w)
    assert (how, how2, fn.calls) == ("inlined", "inlined", 1)
    ops = [(n.op, n.target) for n in tracer.graph.nodes if n.op != "placeholder"]
    assert ops[:2] == ops[2:] and len(ops) == 4
    assert second.node.args[0].args[0] is w.node  # the replay reads the second tensor


def test_untraceable_function_is_opaque_without_leftovers():
    tracer = _tracer()
    emitter = TransformEmitter(tracer)
    fn = _Calls(_data_dependent)
    for path in ("0", "1"):
        w = _placeholder(tracer)
        out, how = emitter.emit(path, "quantize", fn, w)
        assert how == "opaque"
        assert (out.node.op, out.node.target, out.node.args) == ("call_module", f"{path}.quantize", (w.node,))
    assert fn.calls == 1  # a function that failed once is not traced again
    assert [n.op for n in tracer.graph.nodes] == ["placeholder", "call_module", "placeholder", "call_module"]
    assert not any(isinstance(m, Opaque) for m in tracer.tree.root.modules())  # installed by finish()


def test_function_that_records_is_traced_at_every_read():
    tracer = _tracer()
    emitter = TransformEmitter(tracer)

    def reads_other(w):
        tracer.rewrites.append(Rewrite("1", "weight", "quantize", "inlined", "h", ()))
        return w + 1

    fn = _Calls(reads_other)
    emitter.emit("0", "quantize", fn, _placeholder(tracer))
    emitter.emit("0", "quantize", fn, _placeholder(tracer))
    assert fn.calls == 2


# -- the tree after tracing -----------------------------------------------------------------------


class _ModeBlock(nn.Module):
    """Reads self.training, so it is kept as a call: its nodes are rolled back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(3, 3), "q", _data_dependent)

    def forward(self, x):
        return self.fc(x) if self.training else -self.fc(x)


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = _ModeBlock()
        self.head = imitate(nn.Linear(3, 2), "q", _data_dependent)

    def forward(self, x):
        return self.head(self.block(x))


def test_opaque_modules_are_those_of_the_record():
    """A rolled-back opaque read (inside a kept call) leaves no Opaque module in the tree."""
    model = _Model()
    compiled = fxpass.compile(model)
    record = fxpass.record_of(compiled)
    opaque = {f"{r.module}.{r.transform}" for r in record.rewrites if r.how == "opaque"}
    assert opaque == {"head.q"}
    assert {name for name, m in compiled.named_modules() if isinstance(m, Opaque)} == opaque
    x = torch.randn(4, 3)
    for mode in (True, False):
        model.train(mode), compiled.train(mode)
        assert torch.equal(compiled(x), model(x))
