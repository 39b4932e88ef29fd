"""Before export and inside torch.compile: freeze, torch.export, ONNX, TorchScript, dynamo, and
module scope. Each target is a test over the model zoo; the entries a target cannot support are
listed with the exact error users get."""

from __future__ import annotations

import copy
import importlib.util
import io
import pickle

import pytest
import torch
import torch.fx
import torch.nn as nn

import fxpass
from fxpass import zoo
from fxpass.ops import call_with_overrides
from imitation_runtime import imitate
from fxpass import reading
from tests.support import assert_same_snapshot, compile_entry, graph_modules, snapshot, zoo_params

# Each entry's known limits (what fails, and why) are on the entry: ZooEntry.limits.


def _skip_unexportable(entry: zoo.ZooEntry) -> None:
    reason = entry.limit("export")
    if reason is not None:
        pytest.skip("not exportable: " + reason)


def _eval_pair(entry: zoo.ZooEntry):
    model, inputs = entry.build()
    return model.eval(), inputs


# -- freeze --------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", zoo_params())
def test_freeze_matches_runtime_eval_output_bitwise(entry: zoo.ZooEntry) -> None:
    model, inputs = entry.build()  # in train mode: freeze computes the eval-mode transforms
    before = snapshot(model)
    frozen = fxpass.freeze(model)
    assert_same_snapshot(before, snapshot(model))
    assert not any(m.training for m in frozen.modules())
    assert torch.equal(frozen(*inputs), model.eval()(*inputs))
    # no transform remains: no kept call, no transform module, no raw tensor of a patched read
    parts = graph_modules(frozen)
    assert parts
    for part in parts:
        for node in part.graph.nodes:
            assert node.target is not call_with_overrides
            if node.op == "call_module":
                assert not isinstance(part.get_submodule(node.target), (zoo.LearnedScale, fxpass.ops.Opaque))
        assert part._fxpass_frozen
    assert not any(reading.reads_exactly(m) or reading.has_eager_forward(m) for m in frozen.modules())


def test_freeze_accepts_a_compiled_model_and_is_a_snapshot() -> None:
    model, (x,) = zoo.get("stateful").build()
    gm = fxpass.compile(copy.deepcopy(model))
    gm(x)  # lazily creates the transforms' parameters
    model(x)
    frozen = fxpass.freeze(gm)
    model.eval()
    expected = model(x)
    assert torch.equal(frozen(x), expected)
    with torch.no_grad():  # training the source later does not reach the snapshot
        for p in gm.parameters():
            p.add_(1.0)
    assert torch.equal(frozen(x), expected)


# -- torch.export ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", zoo_params())
def test_export_of_the_frozen_graph_round_trips(entry: zoo.ZooEntry) -> None:
    _skip_unexportable(entry)
    model, inputs = _eval_pair(entry)
    program = torch.export.export(fxpass.freeze(model), inputs)
    expected = model(*inputs)
    torch.testing.assert_close(program.module()(*inputs), expected, atol=1e-6, rtol=0)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.export.load(buffer).module()(*inputs), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("entry", zoo_params())
def test_export_of_the_compiled_graph(entry: zoo.ZooEntry) -> None:
    _skip_unexportable(entry)
    model, inputs = _eval_pair(entry)
    gm = compile_entry(entry, copy.deepcopy(model)).eval()
    failure = entry.limit("export_compiled")
    if failure is not None:  # data-dependent transforms: the frozen graph exports instead
        with pytest.raises(Exception, match=failure):
            torch.export.export(gm, inputs)
        return
    program = torch.export.export(gm, inputs)
    torch.testing.assert_close(program.module()(*inputs), model(*inputs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("entry", [e for e in zoo_params() if e.id in ("mlp", "cnn_bn", "branchy")])
def test_a_model_exported_once_still_copies_and_pickles(entry: zoo.ZooEntry) -> None:
    """torch.export snapshots a module's plain containers while its tensors are fake and writes
    the snapshot back: the state a compiled model keeps for copies must survive that."""
    model, inputs = _eval_pair(entry)
    for candidate in (compile_entry(entry, copy.deepcopy(model)).eval(), fxpass.freeze(model)):
        if entry.limit("export") is not None:
            try:
                torch.export.export(candidate, inputs)
            except Exception:  # noqa: BLE001 - the export fails; what it left behind must not
                pass
        else:
            torch.export.export(candidate, inputs)
        for copied in (copy.deepcopy(candidate), pickle.loads(pickle.dumps(candidate))):
            assert torch.equal(copied(*inputs), model(*inputs))


# -- ONNX ----------------------------------------------------------------------------------------

_ONNX_MISSING = [p for p in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(p) is None]


@pytest.mark.skipif(bool(_ONNX_MISSING), reason=f"the [export] extra is not installed ({_ONNX_MISSING})")
@pytest.mark.parametrize("entry", zoo_params())
def test_onnx_of_the_frozen_graph_runs_in_onnxruntime(entry: zoo.ZooEntry) -> None:
    import onnxruntime

    _skip_unexportable(entry)
    model, inputs = _eval_pair(entry)
    program = torch.onnx.export(fxpass.freeze(model), inputs, dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    (out,) = session.run(None, feeds)
    torch.testing.assert_close(torch.from_numpy(out), model(*inputs).detach(), atol=1e-5, rtol=0)


# -- TorchScript ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", zoo_params())
def test_torchscript_of_the_compiled_graph(entry: zoo.ZooEntry) -> None:
    model, inputs = _eval_pair(entry)
    gm = compile_entry(entry, copy.deepcopy(model)).eval()
    failure = entry.limit("script")
    if failure is not None:
        with pytest.raises(Exception, match=failure):
            torch.jit.script(gm)
        return
    assert torch.equal(torch.jit.script(gm)(*inputs), model(*inputs))


@pytest.mark.parametrize("entry", zoo_params())
def test_torchscript_of_the_frozen_graph(entry: zoo.ZooEntry) -> None:
    model, inputs = _eval_pair(entry)
    frozen = fxpass.freeze(model)
    failure = entry.limit("script_frozen")
    if failure is not None:
        with pytest.raises(Exception, match=failure):
            torch.jit.script(frozen)
        return
    assert torch.equal(torch.jit.script(frozen)(*inputs), model(*inputs))


# -- torch.compile -------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", zoo_params())
def test_dynamo_graph_breaks(entry: zoo.ZooEntry) -> None:
    model, inputs = _eval_pair(entry)
    gm = compile_entry(entry, copy.deepcopy(model)).eval()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(gm)(*inputs)
    expected = entry.limit("graph_breaks")
    if expected is not None:
        assert explanation.graph_break_count > 0
        reasons = " ".join(str(b.reason) for b in explanation.break_reasons)
        assert expected in reasons
    else:
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("entry", zoo_params())
def test_torch_compile_output_equals_runtime(entry: zoo.ZooEntry, backend: str) -> None:
    model, inputs = _eval_pair(entry)
    gm = compile_entry(entry, copy.deepcopy(model)).eval()
    torch._dynamo.reset()
    compiled = torch.compile(gm, backend=backend)
    assert torch.equal(compiled(*inputs), model(*inputs))


def test_inductor_smoke() -> None:
    model, inputs = _eval_pair(zoo.get("mlp"))
    torch._dynamo.reset()
    compiled = torch.compile(fxpass.compile(copy.deepcopy(model)).eval())
    # inductor fuses and reorders floating-point work: close, not bitwise
    torch.testing.assert_close(compiled(*inputs), model(*inputs), atol=1e-5, rtol=1e-5)


# -- module scope --------------------------------------------------------------------------------


def test_module_scope_compiles_each_patched_part_of_an_untraceable_model() -> None:
    model, (x,) = zoo.get("branchy").build()
    with pytest.raises(fxpass.UntraceableModelError, match="scope='module'"):
        fxpass.compile(model)
    compiled = fxpass.compile(copy.deepcopy(model), scope="module")
    assert type(compiled) is zoo.Branchy
    assert sorted(fxpass.records(compiled)) == ["gate", "other", "stem"]
    for inputs in (x, -x):  # both branches
        assert torch.equal(compiled(inputs), model(inputs))


def test_bad_scope_is_rejected() -> None:
    with pytest.raises(fxpass.InvalidModelError, match="scope must be"):
        fxpass.compile(nn.Linear(2, 2), scope="layer")  # type: ignore[arg-type]


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the [hf] extra is not installed")
def test_module_scope_on_a_transformers_model_from_a_config() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)  # random weights, nothing downloaded
    assert model.lm_head.weight is model.transformer.wte.weight
    for module in list(model.modules()):
        if isinstance(module, (Conv1D, nn.Linear, nn.Embedding)):
            imitate(module, "halve", lambda w: w * 0.5)
    ids = torch.randint(0, 64, (2, 8))
    with pytest.raises(fxpass.UntraceableModelError):
        fxpass.compile(model)
    compiled = fxpass.compile(copy.deepcopy(model), scope="module")
    assert list(compiled.state_dict()) == list(model.state_dict())
    buffer = io.BytesIO()
    torch.save(compiled, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still one tensor
    for candidate in (compiled, loaded):
        for mode in (True, False):
            model.train(mode)
            candidate.train(mode)
            torch.manual_seed(1)
            expected = model(ids).logits
            torch.manual_seed(1)
            assert torch.equal(candidate(ids).logits, expected)
    model.zero_grad()
    model.train()
    compiled.train()
    torch.manual_seed(2)
    model(ids).logits.square().mean().backward()
    torch.manual_seed(2)
    compiled(ids).logits.square().mean().backward()
    for (name, p), (_, q) in zip(model.named_parameters(), compiled.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
