"""A model whose own forward reads ``self.training`` is traced once per mode.

Its compiled model holds the graph of its current mode (``train()`` and ``eval()`` switch it), so
its mode stays live, whatever mode it was compiled in; outputs may differ in structure by mode;
a mix of modes its graphs do not cover raises; ``freeze`` and ``torch.export`` use the eval graph
(export reads the graph of the current mode). The zoo entries ``aux_head`` and ``drop_rate`` run
through every zoo-wide test too. Parity claims are bitwise.
"""

from __future__ import annotations

import collections
import copy
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fxpass
from fxpass import zoo
from imitation_runtime import imitate
from tests.support import forward, halve, steps_side_by_side

Outputs = collections.namedtuple("Outputs", ["logits", "aux_logits"])


class InceptionLike(nn.Module):
    """Returns a namedtuple with the auxiliary logits in training, the logits alone in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.body = imitate(nn.Linear(4, 4), "halve", halve)
        self.head = nn.Linear(4, 3)
        self.aux = imitate(nn.Linear(4, 3), "halve", halve)

    def forward(self, x: torch.Tensor) -> torch.Tensor | Outputs:
        h = torch.relu(self.body(x))
        if self.training:
            return Outputs(self.head(h), self.aux(h))
        return self.head(h)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return type(a) is type(b) and all(torch.equal(x, y) for x, y in zip(a, b))  # type: ignore[arg-type]


@pytest.mark.parametrize("compile_mode", [True, False], ids=["compiled-in-train", "compiled-in-eval"])
def test_the_mode_stays_live_and_outputs_may_differ_in_structure(compile_mode: bool) -> None:
    torch.manual_seed(0)
    model = InceptionLike().train(compile_mode)
    compiled = fxpass.compile(copy.deepcopy(model))
    assert fxpass.record_of(compiled).modes == ("train", "eval")
    x = torch.randn(2, 4)
    for mode in (True, False, True, False):
        model.train(mode)
        compiled.train(mode)
        out, got = model(x), compiled(x)
        assert _same(out, got), mode
        assert isinstance(got, Outputs) is mode
        # the model holds the graph of its mode: what reads its graph reads the right one
        reads_aux = any(n.op == "get_attr" and str(n.target).startswith("aux.") for n in compiled.graph.nodes)
        assert reads_aux is mode
        assert _same(torch.fx.Interpreter(compiled).run(x), out)
    loaded = pickle.loads(pickle.dumps(compiled))
    for mode in (False, True):
        model.train(mode)
        loaded.train(mode)
        assert _same(loaded(x), model(x))


def test_training_set_directly_still_runs_the_graph_of_the_mode() -> None:
    torch.manual_seed(0)
    model = InceptionLike()
    compiled = fxpass.compile(copy.deepcopy(model))
    compiled.training = False  # not through eval(): the held graph is still the training one
    model.training = False
    x = torch.randn(2, 4)
    assert _same(compiled(x), model(x))


def test_steps_side_by_side_in_every_mode_for_the_zoo_entries() -> None:
    for name in ("aux_head", "drop_rate"):
        model, inputs = zoo.get(name).build()
        compiled = fxpass.compile(copy.deepcopy(model))
        steps_side_by_side(model, compiled, inputs, ("train", "eval", "train", "eval", "train"))


class ReadsChildMode(nn.Module):
    """Reads the mode of a child (a block of its own) as well as its own."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(imitate(nn.Linear(4, 4), "halve", halve))
        self.drop = 0.25

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.dropout(self.block(x), self.drop, self.training)
        return y * 2 if self.block.training else y


def test_a_mix_of_modes_the_graphs_do_not_cover_raises_never_runs_the_other_graph() -> None:
    torch.manual_seed(0)
    model = ReadsChildMode()
    compiled = fxpass.compile(copy.deepcopy(model))
    x = torch.randn(2, 4)
    steps_side_by_side(model, compiled, (x,), ("train", "eval", "train"))
    compiled.train()
    compiled.block.eval()
    with pytest.raises(fxpass.UntraceableModelError, match=r"^block is in eval mode under a model in train mode"):
        compiled(x)
    compiled.eval()
    compiled.block.train()
    with pytest.raises(fxpass.UntraceableModelError, match=r"^block is in train mode under a model in eval mode"):
        compiled(x)


def test_freeze_and_export_use_the_eval_graph() -> None:
    torch.manual_seed(0)
    model = InceptionLike()  # in training mode
    frozen = fxpass.freeze(model)
    x = torch.randn(2, 4)
    model.eval()
    expected = model(x)
    assert torch.equal(frozen(x), expected)
    compiled = fxpass.compile(copy.deepcopy(model)).eval()
    for candidate in (frozen, compiled):
        program = torch.export.export(candidate, (x,))
        torch.testing.assert_close(program.module()(x), expected, atol=1e-6, rtol=0)
    with pytest.raises(fxpass.NotScriptableError, match="compiled once per mode"):
        torch.jit.script(compiled)
    assert torch.equal(torch.jit.script(frozen)(x), expected)


def test_a_traced_through_block_reading_its_mode_is_still_a_kept_call() -> None:
    """Only the model's own forward is traced per mode: a block reading its own mode stays a call
    (its mode is its own, live)."""
    model, inputs = zoo.get("mode_reading").build()
    compiled = fxpass.compile(copy.deepcopy(model))
    assert fxpass.record_of(compiled).modes == ()
    compiled.block.eval()
    model.block.eval()
    assert torch.equal(forward(compiled, inputs), forward(model, inputs))
