"""fxpass.compile: every guarantee of the pass, each a test over the model zoo.

Parity claims here are bitwise (torch.equal) unless a test's name says otherwise.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn as nn

import fxpass
from fxpass import zoo
from fxpass._common import join_path
from imitation_runtime import imitate, is_imitated
from tests.support import (
    assert_grads_equal,
    assert_same_snapshot,
    assert_state_equal,
    compile_entry,
    forward,
    graph_modules,
    snapshot,
    steps_side_by_side,
    zoo_params,
)

REPO = Path(__file__).resolve().parents[1]


def _run_python(*args: str, cwd: Path) -> None:
    """Run Python in a fresh process that imports this checkout (installed or not)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, *args], check=True, cwd=cwd, env=env, timeout=300)
MODE_SEQUENCE = ("train", "eval", "train")


def _pair(entry: zoo.ZooEntry, compile_mode: str = "train"):
    """(runtime model, compiled model, inputs): independent models with equal state."""
    runtime, inputs = entry.build()
    runtime.train(compile_mode == "train")
    gm = compile_entry(entry, copy.deepcopy(runtime))
    return runtime, gm, inputs


@pytest.mark.parametrize("compile_mode", ["train", "eval"])
@pytest.mark.parametrize("entry", zoo_params())
def test_outputs_bitwise_in_every_mode(entry: zoo.ZooEntry, compile_mode: str) -> None:
    runtime, gm, inputs = _pair(entry, compile_mode)
    for mode in MODE_SEQUENCE:
        runtime.train(mode == "train")
        gm.train(mode == "train")
        assert torch.equal(forward(runtime, inputs), forward(gm, inputs)), mode


@pytest.mark.parametrize("entry", zoo_params())
def test_gradients_of_raw_parameters_bitwise(entry: zoo.ZooEntry) -> None:
    runtime, gm, inputs = _pair(entry)
    forward(runtime, inputs).float().square().sum().backward()
    forward(gm, inputs).float().square().sum().backward()
    assert any(p.grad is not None for p in runtime.parameters())
    assert_grads_equal(runtime, gm)


@pytest.mark.parametrize("entry", zoo_params())
def test_state_dict_and_parameter_names_match_raw(entry: zoo.ZooEntry) -> None:
    runtime, gm, inputs = _pair(entry)
    assert_state_equal(runtime, gm)
    names = [n for n, _ in runtime.named_parameters()]
    assert names == [n for n, _ in gm.named_parameters()]
    # the optimizer state of one loads into the other (after a forward each: lazy transforms
    # create their parameters on the first call)
    forward(gm, inputs)
    forward(runtime, inputs).float().sum().backward()
    opt = torch.optim.Adam(runtime.parameters())
    opt.step()
    torch.optim.Adam(gm.parameters()).load_state_dict(opt.state_dict())
    # and the runtime model's state_dict loads into the compiled one, strictly where it loads
    # strictly into the runtime model itself (torch.ao's FakeSparsity leaves its mask out of
    # state_dict() and expects it back)
    try:
        copy.deepcopy(runtime).load_state_dict(runtime.state_dict())
    except RuntimeError as error:
        with pytest.raises(RuntimeError, match=re.escape(str(error).splitlines()[1].strip())):
            gm.load_state_dict(runtime.state_dict())
        gm.load_state_dict(runtime.state_dict(), strict=False)
    else:
        gm.load_state_dict(runtime.state_dict())
    assert_state_equal(runtime, gm)


@pytest.mark.parametrize("warm_up", [False, True], ids=["fresh", "after_forward"])
@pytest.mark.parametrize("entry", zoo_params())
def test_optimizer_steps_side_by_side(entry: zoo.ZooEntry, warm_up: bool) -> None:
    runtime, inputs = entry.build()
    if warm_up:  # compile after the model ran: lazy transform state already exists
        forward(runtime, inputs)
    gm = compile_entry(entry, copy.deepcopy(runtime))
    steps_side_by_side(runtime, gm, inputs, ("train", "train", "eval", "train", "train"))



@pytest.mark.parametrize("entry", zoo_params())
def test_pickle_and_torch_save_round_trips(entry: zoo.ZooEntry) -> None:
    runtime, gm, inputs = _pair(entry)
    forward(runtime, inputs)
    forward(gm, inputs)
    buffer = io.BytesIO()
    torch.save(gm, buffer)
    buffer.seek(0)
    for loaded in (pickle.loads(pickle.dumps(gm)), torch.load(buffer, weights_only=False)):
        if entry.scope == "model":
            assert isinstance(loaded, torch.fx.GraphModule)
        else:
            assert type(loaded) is type(runtime)
        assert fxpass.records(loaded) == fxpass.records(gm)  # the record travels with the model
        assert_state_equal(gm, loaded)
        reference = copy.deepcopy(runtime)  # the state both had when gm was saved
        for mode in MODE_SEQUENCE:
            reference.train(mode == "train")
            loaded.train(mode == "train")
            assert torch.equal(forward(loaded, inputs), forward(reference, inputs)), mode
        assert_state_equal(reference, loaded)


def test_saved_models_load_in_a_fresh_process(tmp_path: Path) -> None:
    expected = {}
    for entry in zoo.entries():
        if entry.missing():
            continue
        runtime, gm, inputs = _pair(entry)
        runtime.eval()
        expected[entry.name] = runtime(*inputs)
        torch.save({"model": gm, "inputs": inputs}, tmp_path / f"{entry.name}.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from pathlib import Path
        torch.set_num_threads({torch.get_num_threads()})  # kernels split work by thread count
        out = {{}}
        for path in sorted(Path(sys.argv[1]).glob("*.pt")):
            saved = torch.load(path, weights_only=False)
            model = saved["model"].eval()
            out[path.stem] = model(*saved["inputs"])
        torch.save(out, Path(sys.argv[1]) / "outputs.bin")
        """
    )
    _run_python("-c", script, str(tmp_path), cwd=tmp_path)
    outputs = torch.load(tmp_path / "outputs.bin")
    assert set(outputs) == set(expected)
    for name, value in expected.items():
        assert torch.equal(outputs[name], value), name


@pytest.mark.parametrize("entry", zoo_params())
def test_graph_lints_and_holds_no_patched_class(entry: zoo.ZooEntry) -> None:
    runtime, compiled, _ = _pair(entry)
    for gm in graph_modules(compiled):
        gm.graph.lint()
        assert not [n for n in gm.graph.nodes if n.op == "get_attr" and "_tensor_constant" in n.target]
    for name, module in compiled.named_modules():
        if isinstance(module, torch.fx.GraphModule):
            continue  # (GraphModule makes a class per instance)
        # no class patch of any kind is left: imitate, qsparse, parametrize's Parametrized*
        assert fxpass._patches.find_patch_stack(module, name) is None, (name, type(module))
        assert not is_imitated(module) and "<locals>" not in type(module).__qualname__, name
        cls = type(module)
        assert not (cls.__module__ == "torch.nn.utils.parametrize" and cls.__name__.startswith("Parametrized")), name
    found = [
        join_path(prefix, path)
        for prefix, record in fxpass.records(compiled).items()
        for path in record.patched_modules
    ]
    patched = [n for n, m in runtime.named_modules() if fxpass._patches.find_patch_stack(m) is not None]
    assert sorted(found) == sorted(patched)  # (each part lists its own, in model order)


@pytest.mark.parametrize("entry", zoo_params())
def test_input_model_untouched(entry: zoo.ZooEntry) -> None:
    model, inputs = entry.build()
    before = snapshot(model)
    gm = compile_entry(entry, model)
    assert_same_snapshot(before, snapshot(model))
    # the compiled model shares the tensors, as torch.fx does
    runtime_ids = {id(p) for p in model.parameters()}
    assert all(id(p) in runtime_ids for p in gm.parameters())


# -- what each zoo model exercises ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "counts", "kept"),
    [
        ("mlp", {"inlined": 4, "module": 0, "opaque": 0}, []),
        # (a kept call's patched tensors are read inside it, not rewritten into the graph)
        ("cnn_bn", {"inlined": 4, "module": 0, "opaque": 0}, ["bn1"]),
        ("transformer", {"inlined": 6, "module": 0, "opaque": 0}, ["attn"]),
        ("two_reads", {"inlined": 1, "module": 2, "opaque": 0}, []),
        ("called_twice", {"inlined": 2, "module": 2, "opaque": 0}, []),
        ("untraceable", {"inlined": 2, "module": 0, "opaque": 2}, []),
        ("parametrized", {"inlined": 2, "module": 4, "opaque": 0}, []),
    ],
)
def test_record_says_how_each_transform_was_emitted(name: str, counts, kept) -> None:
    model, _ = zoo.get(name).build()
    record = fxpass.record_of(fxpass.compile(model))
    assert record.counts() == counts
    assert [k.module for k in record.kept_calls] == kept
    table = record.table().split("\n\n")
    rows = table[0].splitlines()[2:]  # (under the header and its rule: one row per rewrite, in order)
    assert len(rows) == len(record.rewrites) == sum(counts.values())
    for row, rewrite in zip(rows, record.rewrites):
        assert row.split()[:4] == [rewrite.module or "<model>", rewrite.attribute, rewrite.transform, rewrite.how]
    kept_rows = [t for t in table[1:] if t.startswith("kept as a call")]
    assert [line.split()[0] for t in kept_rows for line in t.splitlines()[2:]] == kept


def test_transformer_keeps_attention_as_a_call_reading_out_proj_inside() -> None:
    model, _ = zoo.get("transformer").build()
    gm = fxpass.compile(model)
    (kept,) = fxpass.record_of(gm).kept_calls
    assert kept.overrides == ("out_proj.weight", "out_proj.bias")
    assert "cannot be traced" in kept.reason
    # one plain call of the module, which reads its projection's patched tensors itself
    assert [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("attn")] == ["attn"]
    assert fxpass.reading.has_eager_forward(gm.get_submodule("attn"))
    assert fxpass.reading.reads_exactly(gm.get_submodule("attn.out_proj"))


def test_plain_symbolic_trace_freezes_the_weight_but_compile_keeps_the_parameter() -> None:
    model = nn.Sequential(imitate(nn.Linear(3, 3), "halve", lambda w: w / 2))
    traced = torch.fx.symbolic_trace(model)
    assert "0.weight" not in dict(traced.named_parameters())  # the silent constant
    gm = fxpass.compile(model)
    assert "0.weight" in dict(gm.named_parameters())
    targets = [n.target for n in gm.graph.nodes if n.op == "get_attr"]
    assert targets == ["0.weight", "0.bias"]


def test_opaque_closure_pickles_by_value_in_a_fresh_process(tmp_path: Path) -> None:
    threshold = 0.1

    def clip_or_keep(w: torch.Tensor) -> torch.Tensor:
        return w.clamp(-threshold, threshold) if w.abs().max() > threshold else w

    model = nn.Sequential(imitate(nn.Linear(4, 4), "clip", clip_or_keep))
    gm = fxpass.compile(model)
    assert fxpass.record_of(gm).counts()["opaque"] == 1
    x = torch.randn(2, 4)
    torch.save({"model": gm, "x": x}, tmp_path / "m.pt")
    script = (
        "import sys, torch; s = torch.load(sys.argv[1], weights_only=False); "
        "torch.save(s['model'](s['x']), sys.argv[2])"
    )
    _run_python("-c", script, str(tmp_path / "m.pt"), str(tmp_path / "y.pt"), cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "y.pt"), model(x))


def test_concrete_args_steer_control_flow() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = imitate(nn.Linear(3, 3), "halve", lambda w: w / 2)

        def forward(self, x: torch.Tensor, double: bool = False) -> torch.Tensor:
            y = self.fc(x)
            return y * 2 if double else y

    model = Gated()
    with pytest.raises(fxpass.UntraceableModelError):
        fxpass.compile(model)
    gm = fxpass.compile(model, concrete_args={"double": True})
    x = torch.randn(2, 3)
    assert torch.equal(gm(x, True), model(x, double=True))  # torch.fx keeps the argument, guarded


# -- errors (the bad-input table in test_bad_input.py has the rest) ------------------------------


def test_untraceable_submodule_without_patches_is_kept_as_a_call() -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else x - 1

    model = nn.Sequential(imitate(nn.Linear(3, 3), "halve", lambda w: w / 2), Branchy())
    gm = fxpass.compile(model)
    assert [k.module for k in fxpass.record_of(gm).kept_calls] == ["1"]
    for x in (torch.ones(2, 3) * 5, -torch.ones(2, 3) * 5):
        assert torch.equal(gm(x), model(x))


def test_unknown_class_patch_is_refused_not_frozen() -> None:
    layer = nn.Linear(2, 2)

    class Sneaky(nn.Linear):
        @property
        def weight(self) -> torch.Tensor:
            return self._parameters["weight"] * 3

    layer.__class__ = Sneaky
    model = nn.Sequential(layer)
    with pytest.raises(fxpass.UnsupportedPatchError, match=r"0 \(Sneaky\).*overrides 'weight'.*imitate"):
        fxpass.compile(model)


@pytest.mark.parametrize("entry", zoo_params())
def test_copies_and_pickles_keep_the_whole_tree_and_the_record(entry: zoo.ZooEntry) -> None:
    model, inputs = entry.build()
    compiled = compile_entry(entry, model)

    def layout(m: nn.Module):
        return [n for n, _ in m.named_modules()], list(m.state_dict()), fxpass.records(m)

    expected = layout(compiled)
    pickled = pickle.loads(pickle.dumps(compiled))
    variants = {
        "deepcopy": copy.deepcopy(compiled),
        "pickle": pickled,
        "pickle, deepcopy": copy.deepcopy(pickled),
        "deepcopy, pickle": pickle.loads(pickle.dumps(copy.deepcopy(compiled))),
    }
    for how, variant in variants.items():
        assert layout(variant) == expected, how
    compiled.eval()
    for how, variant in variants.items():
        assert torch.equal(variant.eval()(*inputs), compiled(*inputs)), how


def test_top_level_non_persistent_buffer_stays_out_of_state_dict_through_copies() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = imitate(nn.Linear(2, 2), "halve", lambda w: w / 2)
            self.register_buffer("scale", torch.tensor(3.0), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * self.scale

    model = Scaled()
    gm = fxpass.compile(model)
    for variant in (gm, copy.deepcopy(gm), pickle.loads(pickle.dumps(gm))):
        assert list(variant.state_dict()) == list(model.state_dict()) == ["fc.weight", "fc.bias"]


def test_closure_over_a_tensor_is_a_constant_attribute_not_state() -> None:
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    model = nn.Sequential(imitate(nn.Linear(2, 2), "mask", lambda w: w * mask))
    gm = fxpass.compile(model)
    x = torch.randn(3, 2)
    for variant in (gm, copy.deepcopy(gm), pickle.loads(pickle.dumps(gm))):
        variant.graph.lint()
        assert list(variant.state_dict()) == ["0.weight", "0.bias"]
        assert torch.equal(variant(x), model(x))


# -- compile(inline_activations=True) -------------------------------------------------------------


@pytest.mark.parametrize("entry", zoo_params())
def test_inlined_activations_keep_every_guarantee(entry: zoo.ZooEntry) -> None:
    runtime, inputs = entry.build()
    gm = fxpass.compile(copy.deepcopy(runtime), inline_activations=True, **entry.compile_options())  # type: ignore[arg-type]
    inlined = {
        (path, name) for path, record in fxpass.records(gm).items() for name in record.inlined_activations
    }
    for path, name in inlined:
        part = gm.get_submodule(path)
        assert type(part.get_submodule(name)) in fxpass.ACTIVATIONS
        assert name not in [n.target for n in part.graph.nodes if n.op == "call_module"]
    expected = [
        n for n, m in runtime.named_modules() if type(m) in fxpass.ACTIVATIONS and not n.startswith("block.attn")
    ]
    if entry.scope == "model":  # every activation the forward calls is inlined
        assert sorted(name for _, name in inlined) == sorted(expected), expected
    steps_side_by_side(runtime, gm, inputs, ("train", "eval", "train"))
    loaded = pickle.loads(pickle.dumps(gm))
    assert fxpass.records(loaded) == fxpass.records(gm)
    assert torch.equal(forward(loaded, inputs), forward(gm, inputs))


class _MyReLU(nn.ReLU):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1


def _activation_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        imitate(nn.Linear(3, 3), "halve", lambda w: w / 2),
        nn.ReLU(),
        _MyReLU(),
        nn.Tanh(),
        nn.Softmax(dim=-1),
    )


def test_only_exact_activation_classes_without_hooks_are_inlined() -> None:
    model = _activation_model()
    x = torch.randn(2, 3)
    calls: list[str] = []
    model[3].register_forward_hook(lambda *_: calls.append("tanh"))
    gm = fxpass.compile(model, inline_activations=True)
    assert fxpass.record_of(gm).inlined_activations == ("1", "4")
    # (a user subclass is traced through in any case, as torch.fx does)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["3"]
    assert torch.equal(gm(x), model(x)) and calls == ["tanh", "tanh"]
    assert fxpass.record_of(fxpass.compile(model)).inlined_activations == ()


def test_a_global_module_hook_keeps_activations_as_calls() -> None:
    model = _activation_model()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    try:
        gm = fxpass.compile(model, inline_activations=True)
    finally:
        handle.remove()
    assert fxpass.record_of(gm).inlined_activations == ()


class _ModeBlock(nn.Module):
    """Reads self.training, so it stays a call, with its ReLU inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(3, 3), "halve", lambda w: w / 2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.fc(x))
        return y * 2 if self.training else y


def test_activations_of_a_kept_call_are_not_recorded_as_inlined() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_ModeBlock(), nn.ReLU())
    gm = fxpass.compile(model, inline_activations=True)
    record = fxpass.record_of(gm)
    assert [k.module for k in record.kept_calls] == ["0"]
    assert record.inlined_activations == ("1",)
    x = torch.randn(2, 3)
    for mode in (True, False):
        model.train(mode)
        gm.train(mode)
        assert torch.equal(gm(x), model(x))


SAVED = sorted((Path(__file__).parent / "data").glob("saved-*.pt"))


@pytest.mark.parametrize("path", SAVED, ids=[p.stem for p in SAVED])
def test_models_saved_by_earlier_versions_still_load(path: Path) -> None:
    """Models saved whole by fxpass before its pickle carried the graph's nodes (359395c:
    torch.fx's code, re-traced on load) and before the compiled GraphModule moved to
    fxpass.compiled (1a1d486: the names were fxpass.ops.* and fxpass.codegen.*), and before the
    pickle format moved to fxpass.saved (be011f9: fxpass.compiled._NodeList, ...): each loads,
    computes what it computed when it was saved, switches mode, and saves again."""
    saved = torch.load(path, weights_only=False)
    model = saved["model"].eval()
    with torch.no_grad():
        assert torch.equal(model(*saved["inputs"]), saved["expected"])
        model.train()
        model.eval()
        again = pickle.loads(pickle.dumps(model))
        assert torch.equal(again(*saved["inputs"]), saved["expected"])
