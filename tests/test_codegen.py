"""The code compiled models run: dictionary walks (fxpass._codegen), and transforms traced once.

Parity claims are bitwise (torch.equal).
"""

from __future__ import annotations

import copy
import io
import operator
import pickle

import pytest
import torch
import torch.fx
import torch.nn as nn

import fxpass
from fxpass import compiled, saved
from fxpass._codegen import attribute_chain, dict_walk
from imitation_runtime import imitate
from tests.support import zoo_params


def quantize(w: torch.Tensor) -> torch.Tensor:
    return torch.round(w * 16) / 16


def _stack(n: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        *[nn.Sequential(imitate(nn.Linear(4, 4), "quantize", quantize), nn.ReLU()) for _ in range(n)]
    )


def _tree_reads(gm: torch.fx.GraphModule) -> list[str]:
    return [
        line.strip()
        for line in gm.code.splitlines()
        if any(node in line for node in ("_weight =", "_bias =", "_1 = "))
    ]


def test_generated_code_walks_the_tree_dictionaries() -> None:
    gm = fxpass.compile(_stack())
    reads = _tree_reads(gm)
    assert reads and not [line for line in reads if "getattr(" in line]
    # each dictionary read on the way to two targets or more is looked up once per call
    assert (
        "self_modules = self._modules;  _0_modules = self_modules['0']._modules;  "
        "_0_0_parameters = _0_modules['0']._parameters;  _0_0_weight = _0_0_parameters['weight']"
    ) in gm.code
    assert "_0_0_bias = _0_0_parameters['bias']" in gm.code
    assert "_0_1 = _0_modules['1'](linear)" in gm.code
    assert gm.code.count("self._modules") == 1 and gm.code.count("_0_modules = ") == 1


@pytest.mark.parametrize("entry", zoo_params())
def test_code_reads_the_same_objects_as_torch_fx_spelling(entry) -> None:
    """Every target, however the code spells it, names the object torch.fx's chain names."""
    model, _ = entry.build()
    compiled = fxpass.compile(model, **entry.compile_options())  # type: ignore[arg-type]
    for gm in [m for m in compiled.modules() if isinstance(m, torch.fx.GraphModule)]:
        for node in gm.graph.nodes:
            if node.op in ("get_attr", "call_module"):
                walk = dict_walk(gm, "gm", node.target)
                chain = attribute_chain("gm", node.target)
                assert eval(walk) is eval(chain), node.format_node()  # noqa: S307 - our own strings


def test_reassigned_parameters_are_read_at_call_time() -> None:
    model = _stack()
    gm = fxpass.compile(model)
    x = torch.randn(2, 4)
    new = nn.Parameter(torch.randn(4, 4))
    gm.get_submodule("1.0").weight = new  # the compiled model's own tree (a copy of the shell)
    reference = copy.deepcopy(_stack())
    reference.load_state_dict(gm.state_dict())
    assert gm.get_parameter("1.0.weight") is new
    assert torch.equal(gm(x), reference(x))


def test_load_state_dict_and_to_are_seen() -> None:
    model = _stack()
    gm = fxpass.compile(copy.deepcopy(model))
    other = _stack()
    for p in other.parameters():
        p.data.mul_(-1.5)
    gm.load_state_dict(other.state_dict())
    x = torch.randn(2, 4)
    assert torch.equal(gm(x), other(x))
    gm.to(torch.float64)
    other.to(torch.float64)
    assert torch.equal(gm(x.double()), other(x.double()))


def test_swapped_submodule_is_called() -> None:
    gm = fxpass.compile(_stack())
    x = torch.randn(2, 4)
    gm.get_submodule("2")._modules["1"] = nn.Tanh()  # what `gm[2][1] = nn.Tanh()` would do
    assert torch.all(gm(x).abs() < 1)  # a ReLU would leave values above 1 or at 0
    assert (gm(x) < 0).any()


class _Property(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)

    @property
    def shortcut(self) -> nn.Module:
        return self.inner


class _Lookup(nn.Module):
    """A module whose attribute lookup is its own."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def __getattr__(self, name: str):
        return super().__getattr__(name)


def test_walk_keeps_torch_fx_spelling_where_dictionaries_are_not_what_lookup_reads() -> None:
    root = nn.Module()
    root.prop = _Property()
    root.lookup = _Lookup()
    root.plain = nn.Linear(2, 2)
    root.plain.__dict__["scale"] = torch.ones(1)  # an instance attribute
    assert dict_walk(root, "self", "prop.shortcut.weight") == "self._modules['prop'].shortcut.weight"
    assert dict_walk(root, "self", "lookup.inner") == "self._modules['lookup'].inner"
    assert dict_walk(root, "self", "plain.scale") == "self._modules['plain'].scale"
    assert dict_walk(root, "self", "plain.weight") == "self._modules['plain']._parameters['weight']"
    assert dict_walk(root, "self", "plain.forward") == "self._modules['plain'].forward"
    root.plain.register_buffer("step", torch.zeros(()))
    assert dict_walk(root, "self", "plain.step") == "self._modules['plain']._buffers['step']"
    # a class property over a registered parameter (a runtime patch) ...
    root.patched = imitate(nn.Linear(2, 2), "halve", lambda w: w / 2)
    assert dict_walk(root, "self", "patched.weight") == "self._modules['patched'].weight"
    # ... and an instance attribute over one (fxpass.ops.call_with_overrides during a call)
    root.plain.__dict__["bias"] = torch.zeros(2)
    assert dict_walk(root, "self", "plain.bias") == "self._modules['plain'].bias"


def test_pickles_carry_the_nodes_and_load_without_a_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled model pickles as its graph's nodes: loading rebuilds the same graph under the
    same names, with one code generation and no re-trace of its code."""
    model = _stack()
    gm = fxpass.compile(model)
    _new, _args, state = gm.__reduce__()
    assert not {"_graph", "_code"} & set(state)
    pickled = [(op, name) for op, name, *_ in state[saved.NODES].nodes]
    assert pickled == [(n.op, n.name) for n in gm.graph.nodes]

    def no_trace(*args: object, **kwargs: object) -> None:
        raise AssertionError("loading a compiled model re-traced its code")

    payload = pickle.dumps(gm)
    buffer = io.BytesIO()
    torch.save(fxpass.freeze(model), buffer)
    monkeypatch.setattr(torch.fx.Tracer, "trace", no_trace)
    loaded = pickle.loads(payload)
    assert loaded.code == gm.code and "_modules[" in loaded.code
    assert [_node_key(n) for n in loaded.graph.nodes] == [_node_key(n) for n in gm.graph.nodes]
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))
    buffer.seek(0)
    frozen = torch.load(buffer, weights_only=False)
    assert "_buffers[" in frozen.code
    assert torch.equal(frozen(x), model.eval()(x))


def _node_key(node: torch.fx.Node) -> tuple[object, ...]:
    names = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: n.name)
    return node.op, node.name, node.target, names, node.type


def test_a_graph_with_pytree_code_pickles_as_torch_fx_code_and_loads_with_the_fast_code() -> None:
    """concrete_args give a pytree code generator, which the node list does not carry: such a
    model pickles as torch.fx does, its code re-traced on load (attribute reads, not dict walks,
    so each tensor read becomes a get_attr node again)."""
    torch.manual_seed(0)
    model = _Dict()
    PH = torch.fx._symbolic_trace.PH
    gm = fxpass.compile(model, concrete_args={"inputs": {"a": PH, "b": PH}})
    assert saved.NodeList.of(gm.graph, compiled.PLAIN_CODEGENS) is None
    assert saved.NodeList.of(fxpass.compile(_Dict(), code="fx").graph, compiled.PLAIN_CODEGENS) is not None
    _rebuild, (_reduce, (body, _imports), *_rest) = gm.__reduce__()
    assert "self.lin.weight" in body["_code"]
    assert "_modules[" not in body["_code"]
    loaded = pickle.loads(pickle.dumps(gm))
    assert "_modules[" in loaded.code

    def reads(g: torch.fx.GraphModule) -> list[object]:
        return [n.target for n in g.graph.nodes if n.op == "get_attr"]

    assert reads(loaded) == reads(gm) == ["lin.weight", "lin.bias"]
    inputs = {"a": torch.randn(2, 4), "b": torch.randn(2, 4)}
    assert torch.equal(loaded(inputs), model(inputs))


def test_a_node_list_keeps_names_types_and_nested_arguments() -> None:
    graph = torch.fx.Graph()
    x = graph.placeholder("x", type_expr=torch.Tensor)
    pair = graph.create_node("call_function", torch.chunk, (x, 2), {"dim": -1}, name="halves")
    first = graph.create_node("call_function", operator.getitem, (pair, 0), name="left")
    joined = graph.create_node("call_function", torch.cat, ([first, x],), {"dim": 1}, name="joined")
    graph.output({"out": joined, "both": (first, [x])})
    rebuilt = pickle.loads(pickle.dumps(saved.NodeList.of(graph))).graph()
    assert [_node_key(n) for n in rebuilt.nodes] == [_node_key(n) for n in graph.nodes]
    assert rebuilt.python_code("self").src == graph.python_code("self").src


def test_a_node_target_pickle_cannot_find_by_name_keeps_torch_fx_pickle() -> None:
    def local_relu(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    graph = torch.fx.symbolic_trace(nn.ReLU()).graph
    assert saved.NodeList.of(graph) is not None
    node = next(n for n in graph.nodes if n.op == "call_function")
    node.target = local_relu
    assert saved.NodeList.of(graph) is None


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lookup = _Lookup()
        self.lookup.inner = imitate(nn.Linear(2, 4), "quantize", quantize)
        self.stack = _stack()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(self.lookup.inner(x))


def test_deepcopy_generates_code_for_the_copied_tree() -> None:
    model = _Outer()  # code spelled after the classes of the copy, not of torch.fx's stand-ins
    gm = fxpass.compile(model)
    assert "self_modules['lookup'].inner.weight" in gm.code
    copied = copy.deepcopy(gm)
    assert copied.code == gm.code
    x = torch.randn(2, 2)
    assert torch.equal(copied(x), gm(x))


def test_torchscript_compiles_torch_fx_code_and_shares_the_tensors() -> None:
    model = _stack()
    gm = fxpass.compile(model)
    scripted = torch.jit.script(gm)
    assert "_modules[" in gm.code  # scripting does not change the model
    assert dict(scripted.named_parameters())["0.0.weight"] is gm.get_parameter("0.0.weight")
    assert list(scripted.state_dict()) == list(gm.state_dict())
    x = torch.randn(2, 4)
    assert torch.equal(scripted(x), model(x))


def test_a_transform_function_is_traced_once_per_compile() -> None:
    calls: list[int] = []

    def halve(w: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.round(w * 0.5)

    torch.manual_seed(0)
    model = nn.Sequential(*[imitate(nn.Linear(3, 3), "halve", halve) for _ in range(4)])
    gm = fxpass.compile(model)
    assert len(calls) == 1
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(torch.round) == 4 and len([n for n in gm.graph.nodes if n.op == "get_attr"]) == 8
    rewrites = fxpass.record_of(gm).rewrites
    assert [r.nodes for r in rewrites if r.attribute == "weight"][1] == ("mul_1", "round_2")
    x = torch.randn(2, 3)
    assert torch.equal(gm(x), model(x))
    model(x).sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    gm(x).sum().backward()
    assert all(torch.equal(p.grad, e) for p, e in zip(gm.parameters(), expected))


def test_an_untraceable_transform_is_tried_once_and_opaque_everywhere() -> None:
    calls: list[int] = []

    def flip(w: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return w if w.sum() > 0 else -w

    torch.manual_seed(0)
    model = nn.Sequential(*[imitate(nn.Linear(3, 3), "flip", flip) for _ in range(3)])
    gm = fxpass.compile(model)
    assert len(calls) == 1
    assert [r.how for r in fxpass.record_of(gm).rewrites if r.attribute == "weight"] == ["opaque"] * 3
    x = torch.randn(2, 3)
    assert torch.equal(gm(x), model(x))


def test_a_plain_graph_module_around_the_graph_gets_torch_fx_code_and_pickles_faithfully() -> None:
    """A torch.fx pass (Transformer) builds a plain GraphModule carrying the graph's code
    generator: its pickles must re-trace to get_attr + transform nodes, not constants."""
    model = _stack()
    gm = fxpass.compile(model)
    passed = torch.fx.Transformer(gm).transform()
    assert type(passed.graph._codegen).__name__ == "DictWalkCodeGen"
    assert "_modules[" not in passed.code
    loaded = pickle.loads(pickle.dumps(passed))
    assert not [n for n in loaded.graph.nodes if n.op == "get_attr" and "constant" in n.target]
    assert [n.op for n in loaded.graph.nodes] == [n.op for n in gm.graph.nodes]
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))


def test_torch_fx_tracing_the_compiled_model_sees_attribute_reads() -> None:
    """symbolic_trace of a compiled model (or of a model around it) re-traces its forward: the
    transforms must stay nodes on get_attr of the raw tensors, not constants."""
    model = _stack()
    gm = fxpass.compile(model)
    traced = torch.fx.symbolic_trace(nn.Sequential(gm))
    assert not [n for n in traced.graph.nodes if n.op == "get_attr" and "constant" in n.target]
    x = torch.randn(2, 4)
    assert torch.equal(traced(x), model(x))
    with torch.no_grad():
        gm.get_parameter("0.0.weight").mul_(-1)
    assert torch.equal(traced(x), model(x))  # the traced graph reads the parameter, as gm does
    assert "_modules[" in gm.code


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_torch_package_round_trip_keeps_transforms_as_nodes(tmp_path) -> None:
    from torch.package import PackageExporter, PackageImporter

    model = _stack()
    gm = fxpass.compile(model)
    path = tmp_path / "model.pt"
    with PackageExporter(path) as exporter:
        exporter.extern(["fxpass.**", "imitation_runtime.**", "tests.**"])
        exporter.intern("**")
        exporter.save_pickle("model", "model.pkl", gm)
    loaded = PackageImporter(path).load_pickle("model", "model.pkl")
    assert not [n for n in loaded.graph.nodes if n.op == "get_attr" and "constant" in n.target]
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))
    assert "_modules[" in gm.code


class _Dict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = imitate(nn.Linear(4, 4), "quantize", quantize)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.lin(inputs["a"]) + inputs["b"]


def test_pytree_concrete_args_keep_torch_fx_pytree_code() -> None:
    torch.manual_seed(0)
    model = _Dict()
    PH = torch.fx._symbolic_trace.PH
    gm = fxpass.compile(model, concrete_args={"inputs": {"a": PH, "b": PH}})
    inputs = {"a": torch.randn(2, 4), "b": torch.randn(2, 4)}
    assert torch.equal(gm(inputs), model(inputs))
    assert torch.equal(pickle.loads(pickle.dumps(gm))(inputs), model(inputs))


# -- one class for compiled modules whose code is the same ---------------------------------------


def _identical_pair() -> tuple[nn.Module, torch.fx.GraphModule, torch.fx.GraphModule]:
    torch.manual_seed(0)
    model = nn.Sequential(imitate(nn.Linear(3, 3), "halve", lambda w: w / 2), nn.ReLU())
    return model, fxpass.compile(copy.deepcopy(model)), fxpass.compile(copy.deepcopy(model))


def test_compiled_modules_with_the_same_code_share_one_class() -> None:
    _, first, second = _identical_pair()
    assert type(first) is type(second) and first.code == second.code


def test_recompiling_one_of_them_gives_it_a_class_of_its_own() -> None:
    model, first, second = _identical_pair()
    x = torch.randn(2, 3)
    relu = next(n for n in first.graph.nodes if n.op == "call_module")
    with first.graph.inserting_after(relu):
        doubled = first.graph.call_function(torch.mul, (relu, 2.0))
    relu.replace_all_uses_with(doubled, delete_user_cb=lambda user: user is not doubled)
    first.recompile()
    assert type(first) is not type(second)
    assert torch.equal(first(x), model(x) * 2)
    assert torch.equal(second(x), model(x))  # its code is as it was
    third = fxpass.compile(copy.deepcopy(model))  # the old code: it must not get first's forward
    assert torch.equal(third(x), model(x))


# -- code="fx": torch.fx's own code, the same semantics --------------------------------------------


def _graph_codes(model: nn.Module) -> list[str]:
    return [m.code for m in model.modules() if isinstance(m, torch.fx.GraphModule)]


@pytest.mark.parametrize("entry", zoo_params())
def test_code_fx_keeps_parity_with_the_runtime_model(entry) -> None:
    """compile(..., code="fx") gives every compiled graph torch.fx's attribute reads instead of
    the dictionary walks: the same trajectories, bitwise, in both modes (parts of module-scope
    models included, whose eager callers read patched tensors as at run time)."""
    model, inputs = entry.build()
    options = {**entry.compile_options(), "code": "fx"}
    compiled_model = fxpass.compile(copy.deepcopy(model), **options)
    codes = _graph_codes(compiled_model)
    assert codes and not any("_modules[" in c or "_parameters[" in c for c in codes)
    loaded = pickle.loads(pickle.dumps(compiled_model))
    assert _graph_codes(loaded) == codes
    report = fxpass.parity.check(model, inputs, steps=2, compile_options=options)
    assert report.ok and report.bitwise, report.table(failures_only=True)


def test_code_must_be_walks_or_fx() -> None:
    model = _stack()
    with pytest.raises(fxpass.InvalidModelError, match="code must be 'walks' or 'fx', got 'python'"):
        fxpass.compile(model, code="python")


def test_fxpass_codegen_still_exports_its_names() -> None:
    # (its code moved to the internal fxpass._codegen; code written against it keeps working)
    import fxpass.codegen as old
    from fxpass import _codegen

    exported = [
        "ENTRY_ATTRIBUTE", "FX_FORWARD", "GRAPH_MODE_ATTRIBUTE", "MODES_ATTRIBUTE",
        "attribute_chain", "dict_walk", "fx_forward", "walk_code",
    ]  # fmt: skip
    assert all(getattr(old, name) is getattr(_codegen, name) for name in exported)
    assert old.DictWalkCodeGen is compiled.DictWalkCodeGen
    assert sorted(old.__all__) == sorted([*exported, "DictWalkCodeGen"])
