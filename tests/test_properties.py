"""Property-based tests of fxpass.compile: random architectures x random transform stacks x random
mode sequences; the compiled model is bitwise equal (torch.equal) to the runtime one at every step.

Hypothesis draws a :class:`Spec` (plain data, printed as the falsifying example) and :func:`build`
turns it into a runtime model and its inputs. Every model class and transform lives at module
level so that compiled models pickle by reference.

Profiles: ``FXPASS_HYPOTHESIS_PROFILE=ci`` (the default: 200 derandomized examples, the same on
every run) or ``nightly`` (2000 new examples a run; a failure prints a ``@reproduce_failure``
blob). The profile applies to this module's property only; other modules keep their settings.

Every failure the property found is kept at the end as a ``test_regression_*`` with its minimal
example, fixed or not.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
from typing import Callable, Iterator

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch.nn.utils import parametrize

import fxpass
from fxpass import zoo
from imitation_runtime import imitate
from tests.support import (
    assert_same_snapshot,
    assert_state_equal,
    forward,
    same,
    snapshot,
)

SGD_LR = 0.1  # larger steps than the zoo tests: state moves further in few steps

# -- hypothesis profiles -------------------------------------------------------------------------

PROFILE_VARIABLE = "FXPASS_HYPOTHESIS_PROFILE"

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "nightly",
    max_examples=2000,
    deadline=None,
    derandomize=False,  # new examples every night; a failure prints a reproduce blob
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = settings.get_profile(os.environ.get(PROFILE_VARIABLE, "ci"))

BATCH = 2
IMAGE_SIZE = 3  # height and width of image inputs
SIGNAL_LENGTH = 4  # length of Conv1d inputs and of token sequences


# -- transforms ----------------------------------------------------------------------------------


def offset(amount: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A pure closure over a tensor constant: inlined, the tensor becomes a graph constant."""
    delta = torch.tensor(amount)
    return lambda w: w + delta


def sign_of_mean(w: torch.Tensor) -> torch.Tensor:
    """Data-dependent control flow in an importable function: opaque, pickled by reference."""
    if w.mean() < 0:
        return -w
    return w


class CountingShift(nn.Module):
    """A stateful transform whose state moves in every mode: a call counter drives the shift; its
    trainable parameter exists from the start (LearnedScale creates its own lazily)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.shift = nn.Parameter(torch.full((), 0.05))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return w + self.shift * (self.calls % 3).to(w.dtype)


#: Transforms given to imitate: inlined (scaled, clip, offset), modules with state (learned,
#: counting) and untraceable (branch and sign: data-dependent ifs; ste: an autograd.Function).
IMITATE_KINDS = ("scaled", "clip", "offset", "learned", "counting", "branch", "sign", "ste")
#: qsparse's patches, on a Linear or a Conv only.
QSPARSE_KINDS = ("prune", "quantize")
#: Transforms that are modules: fxpass calls them, and their state moves when they run.
STATEFUL_KINDS = frozenset({"learned", "counting", "prune", "quantize"})


def make_transform(kind: str, arg: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A fresh transform of ``kind`` (one of :data:`IMITATE_KINDS`)."""
    if kind == "scaled":
        return zoo.scaled(arg)
    if kind == "clip":
        return zoo.soft_clip
    if kind == "offset":
        return offset(arg)
    if kind == "learned":
        return zoo.LearnedScale()
    if kind == "counting":
        return CountingShift()
    if kind == "branch":
        return zoo.normalized_or_doubled(arg)
    if kind == "sign":
        return sign_of_mean
    if kind == "ste":
        return zoo.round_ste
    raise ValueError(f"unknown transform kind {kind!r}")


# -- modules the architectures are made of -------------------------------------------------------


class Pool(nn.Module):
    """Mean over every dimension after the channel one: (B, C, ...) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).mean(dim=2)


class Transpose(nn.Module):
    """(B, L, D) -> (B, D, L): token features to a Conv1d signal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class ModeBlock(nn.Module):
    """A block whose forward reads ``self.training``: fxpass keeps it as a call and passes the
    transformed tensors of the layers inside in."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.inner(x), 0.25, self.training)


class BranchBlock(nn.Module):
    """A block with data-dependent control flow: torch.fx cannot trace it, so fxpass keeps it as
    a call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() < 0:
            x = -x
        return self.inner(x)


class PeekBlock(nn.Module):
    """A block that torch.fx cannot trace and that reads the tensors of the layers inside it
    itself, as transformers' Mamba mixer reads ``self.dt_proj.weight``: at model scope it is
    refused like a BranchBlock; at module scope it runs eagerly and each of its reads must be
    evaluated as at run time (stateful transforms move once per read)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if x.sum() > float("-inf"):  # always true, but data-dependent
            for module in self.inner.modules():
                weight = getattr(module, "weight", None) if not isinstance(module, nn.Sequential) else None
                if isinstance(weight, torch.Tensor) and weight.is_floating_point():
                    y = y + 0.01 * weight.mean()
        return y


BLOCKS = {"modeblock": ModeBlock, "branchblock": BranchBlock, "peekblock": PeekBlock}


class Net(nn.Module):
    """A generic model: its groups run in order; a ModuleList group is iterated in forward, any
    other group is called. A layer marked ``twice`` is called twice in a row: by ``forward`` for a
    single layer and in a ModuleList, by sitting twice in its Sequential otherwise (one object
    under two paths).

    Args:
        groups: ``(container, module, twice)`` per group, ``twice`` one flag per layer.
    """

    def __init__(self, groups: list[tuple[str, nn.Module, tuple[bool, ...]]]) -> None:
        super().__init__()
        self.groups = nn.ModuleList(module for _, module, _ in groups)
        self.containers = tuple(container for container, _, _ in groups)
        self.twice = tuple(twice for _, _, twice in groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for container, twice, group in zip(self.containers, self.twice, self.groups):
            if container == "modulelist":
                for again, layer in zip(twice, group):
                    x = layer(x)
                    if again:
                        x = layer(x)
            elif container == "layer":
                x = group(x)
                if twice[0]:
                    x = group(x)
            else:
                x = group(x)
        return x


# -- specs: what hypothesis draws ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Patch:
    """One class patch of a layer.

    Attributes:
        kind: an imitate kind (:data:`IMITATE_KINDS`), ``"prune"``/``"quantize"`` (qsparse) or
            ``"parametrize"`` (zoo.Symmetric, bottom of the stack only).
        arg: the transform's factor, offset or threshold; the bits of ``quantize``.
        bias: the imitate kind of the bias transform, or None for none.
    """

    kind: str
    arg: float = 1.0
    bias: str | None = None


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer.

    Attributes:
        kind: ``linear``, ``conv1d``, ``conv2d``, ``batchnorm1d``, ``batchnorm2d``, ``layernorm``,
            ``embedding``, ``relu``, ``tanh``, ``dropout``, ``pool``, ``transpose``, or ``reuse``:
            the very module of an earlier layer, called again.
        sizes: the constructor's sizes: (in, out[, kernel]), (features,), (vocabulary, dim); for
            ``reuse``, (the earlier layer's number in model order,).
        bias: a bias (Linear, Conv, LayerNorm); the affine flag of a BatchNorm.
        extra: depthwise (Conv, in == out), no running statistics (BatchNorm), padding_idx=0
            (Embedding).
        twice: called twice in a row.
        patches: class patches, bottom first.
    """

    kind: str
    sizes: tuple[int, ...] = ()
    bias: bool = True
    extra: bool = False
    twice: bool = False
    patches: tuple[Patch, ...] = ()


@dataclasses.dataclass(frozen=True)
class Group:
    """Consecutive layers in one container: ``layer`` (one layer, a direct child),
    ``sequential``, ``nested`` (a Sequential in a Sequential), ``modulelist``, ``modeblock`` or
    ``branchblock`` (a Sequential in a :class:`ModeBlock` / :class:`BranchBlock`)."""

    container: str
    layers: tuple[Layer, ...]


@dataclasses.dataclass(frozen=True)
class Spec:
    """A model and its inputs.

    Attributes:
        inputs: ``("features", F)``, ``("image", C)``, ``("signal", C)`` or ``("tokens", V)``.
        groups: the model's groups, in forward order.
        seed: seeds the parameters and the inputs.
    """

    inputs: tuple[str, int]
    groups: tuple[Group, ...]
    seed: int = 0

    def layers(self) -> list[Layer]:
        """Every layer, in model order."""
        return [layer for group in self.groups for layer in group.layers]


WEIGHTED = ("linear", "conv1d", "conv2d", "batchnorm1d", "batchnorm2d", "layernorm", "embedding")
CONTAINERS = ("sequential", "nested", "modulelist", "modeblock", "branchblock", "peekblock")
OPTIONS = {
    "features": ("linear", "linear", "layernorm", "batchnorm1d", "relu", "tanh", "dropout"),
    "image": ("conv2d", "conv2d", "batchnorm2d", "relu", "dropout", "pool"),
    "signal": ("conv1d", "conv1d", "batchnorm1d", "relu", "pool"),
    "tokens": ("linear", "linear", "layernorm", "tanh", "transpose"),
}
widths = st.integers(2, 6)
modes = st.lists(st.sampled_from(["train", "eval"]), min_size=2, max_size=4)


def has_weight(layer: Layer) -> bool:
    if layer.kind.startswith("batchnorm"):
        return layer.bias  # the affine flag
    return layer.kind in WEIGHTED


def has_bias(layer: Layer) -> bool:
    return has_weight(layer) and layer.kind != "embedding" and layer.bias


def is_stateful(layer: Layer) -> bool:
    """Whether a transform of the layer's weight or bias is a module."""
    return any(p.kind in STATEFUL_KINDS or p.bias in STATEFUL_KINDS for p in layer.patches)


def shape_preserving(layer: Layer) -> bool:
    if layer.kind in ("linear", "conv1d", "conv2d"):
        return layer.sizes[0] == layer.sizes[1]
    return layer.kind in ("batchnorm1d", "batchnorm2d", "layernorm", "relu", "tanh", "dropout")


@st.composite
def patch_stacks(draw: st.DrawFn, layer: Layer) -> tuple[Patch, ...]:
    """0-3 patches for ``layer``, each kind valid where it sits."""
    if not has_weight(layer) or draw(st.integers(0, 3)) == 0:
        return ()
    prunable = layer.kind in ("linear", "conv1d", "conv2d")
    square = layer.kind == "conv2d" or (layer.kind == "linear" and layer.sizes[0] == layer.sizes[1])
    patches: list[Patch] = []
    for index in range(draw(st.integers(1, 3))):
        kinds = list(IMITATE_KINDS)
        if prunable:  # qsparse names its transforms "prune" and "quantize": one of each
            kinds += [k for k in QSPARSE_KINDS if k not in {p.kind for p in patches}]
        if index == 0 and square:
            kinds += ["parametrize"] * 2
        kind = draw(st.sampled_from(kinds))
        if kind == "quantize":
            patches.append(Patch(kind, float(draw(st.integers(4, 8)))))
        elif kind in ("prune", "parametrize"):
            patches.append(Patch(kind))
        else:
            arg = draw(st.sampled_from((0.1, 0.5, 3.0) if kind == "branch" else (0.5, 2.0)))
            bias = draw(st.none() | st.sampled_from(IMITATE_KINDS)) if has_bias(layer) else None
            patches.append(Patch(kind, arg, bias))
    return tuple(patches)


@st.composite
def new_layer(draw: st.DrawFn, state: tuple[str, int]) -> tuple[Layer, tuple[str, int]]:
    """A new layer taking the tensors of ``state`` (what flows, its channel or feature size),
    and the state after it."""
    flow, size = state
    kind = draw(st.sampled_from(OPTIONS[flow]))
    after = state
    if kind in ("linear", "conv1d", "conv2d"):
        out = draw(st.sampled_from([size, size, 2, 3, 4, 5, 6]))
        sizes: tuple[int, ...] = (size, out)
        extra = False
        if kind != "linear":
            sizes += (draw(st.sampled_from([1, 3])),)
            extra = out == size and draw(st.integers(0, 3)) == 0
        layer = Layer(kind, sizes, bias=draw(st.booleans()), extra=extra)
        after = (flow, out)
    elif kind in ("layernorm", "batchnorm1d", "batchnorm2d"):
        extra = kind != "layernorm" and draw(st.integers(0, 3)) == 0
        layer = Layer(kind, (size,), bias=draw(st.booleans()), extra=extra)
    elif kind == "pool":
        layer, after = Layer(kind), ("features", size)
    elif kind == "transpose":
        layer, after = Layer(kind), ("signal", size)
    else:
        layer = Layer(kind)
    twice = shape_preserving(layer) and draw(st.integers(0, 3)) == 0
    layer = dataclasses.replace(layer, twice=twice)
    return dataclasses.replace(layer, patches=draw(patch_stacks(layer))), after


def calls_per_layer(chunk: tuple[Layer, ...], start: int) -> dict[int, int]:
    """How often one call of a group runs each layer it holds, by the layer's number in model
    order (a reuse counts for its original); ``start`` is the number of the group's first layer."""
    calls: dict[int, int] = {}
    for position, layer in enumerate(chunk):
        number = layer.sizes[0] if layer.kind == "reuse" else start + position
        calls[number] = calls.get(number, 0) + 1 + layer.twice
    return calls


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    """A random architecture with random transform stacks on random subsets of its layers."""
    flow = draw(st.sampled_from(["features", "image", "signal", "tokens"]))
    layers: list[Layer] = []
    states: list[tuple[str, int]] = []  # the state each layer takes
    if flow == "tokens":  # an Embedding, first layer only
        vocab, dim = draw(widths), draw(widths)
        first = Layer("embedding", (vocab, dim), bias=False, extra=draw(st.booleans()))
        layers.append(dataclasses.replace(first, patches=draw(patch_stacks(first))))
        states.append(("tokens", vocab))
        inputs, state = ("tokens", vocab), ("tokens", dim)
    else:
        size = draw(widths)
        inputs, state = (flow, size), (flow, size)
    for _ in range(draw(st.integers(1, 5))):
        reusable = [
            i
            for i, (layer, taken) in enumerate(zip(layers, states))
            if taken == state and layer.kind in WEIGHTED and shape_preserving(layer)
        ]
        states.append(state)
        if reusable and draw(st.integers(0, 2)) == 0:
            layers.append(Layer("reuse", (draw(st.sampled_from(reusable)),)))
        else:
            layer, state = draw(new_layer(state))
            layers.append(layer)
    groups: list[Group] = []
    start = 0
    while start < len(layers):
        take = draw(st.integers(1, min(3, len(layers) - start)))
        chunk = tuple(layers[start : start + take])
        container = draw(st.sampled_from(CONTAINERS + ("layer",) * (take == 1)))
        groups.append(Group(container, chunk))
        start += take
    return Spec(inputs, tuple(groups), draw(st.integers(0, 2**16)))


# -- building a spec -----------------------------------------------------------------------------


def make_layer(layer: Layer) -> nn.Module:
    """The unpatched module of a new ``layer``."""
    kind, sizes = layer.kind, layer.sizes
    if kind == "linear":
        return nn.Linear(*sizes, bias=layer.bias)
    if kind in ("conv1d", "conv2d"):
        conv = nn.Conv1d if kind == "conv1d" else nn.Conv2d
        groups = sizes[0] if layer.extra else 1
        return conv(sizes[0], sizes[1], sizes[2], padding=sizes[2] // 2, groups=groups, bias=layer.bias)
    if kind in ("batchnorm1d", "batchnorm2d"):
        norm = nn.BatchNorm1d if kind == "batchnorm1d" else nn.BatchNorm2d
        return norm(sizes[0], affine=layer.bias, track_running_stats=not layer.extra)
    if kind == "layernorm":
        return nn.LayerNorm(sizes[0], bias=layer.bias)
    if kind == "embedding":
        return nn.Embedding(*sizes, padding_idx=0 if layer.extra else None)
    if kind == "dropout":
        return nn.Dropout(0.25)
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "pool": Pool, "transpose": Transpose}[kind]()


def apply_patches(module: nn.Module, patches: tuple[Patch, ...]) -> nn.Module:
    """Patch ``module`` with ``patches``, bottom first; qsparse's schedules are short (start=1,
    interval=1, timeout=2) so their state moves within a few steps."""
    from qsparse import prune, quantize

    for index, patch in enumerate(patches):
        if patch.kind == "parametrize":
            parametrize.register_parametrization(module, "weight", zoo.Symmetric())
        elif patch.kind == "prune":
            module = prune(module, sparsity=0.5, start=1, interval=1, repetition=2)
        elif patch.kind == "quantize":
            module = quantize(module, bits=int(patch.arg), timeout=2, channelwise=-1)
        else:
            bias = None if patch.bias is None else make_transform(patch.bias, patch.arg)
            module = imitate(module, f"{patch.kind}{index}", make_transform(patch.kind, patch.arg), bias)
    return module


def build(spec: Spec) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """The runtime model of ``spec`` and its inputs; seeded, so two calls build equal models."""
    torch.manual_seed(spec.seed)
    built: list[nn.Module] = []
    groups: list[tuple[str, nn.Module, tuple[bool, ...]]] = []
    for group in spec.groups:
        modules = []
        for layer in group.layers:
            if layer.kind == "reuse":
                modules.append(built[layer.sizes[0]])
            else:
                modules.append(apply_patches(make_layer(layer), layer.patches))
            built.append(modules[-1])
        twice = tuple(layer.twice for layer in group.layers)
        if group.container == "layer":
            groups.append(("layer", modules[0], twice))
        elif group.container == "modulelist":
            groups.append(("modulelist", nn.ModuleList(modules), twice))
        else:
            chain = [m for m, again in zip(modules, twice) for m in ([m, m] if again else [m])]
            if group.container == "nested":
                chain = [chain[0], nn.Sequential(*chain[1:])]
            inner = nn.Sequential(*chain)
            block = BLOCKS[group.container](inner) if group.container in BLOCKS else inner
            groups.append((group.container, block, twice))
    model = Net(groups)
    generator = torch.Generator().manual_seed(spec.seed)
    flow, size = spec.inputs
    if flow == "tokens":
        x = torch.randint(0, size, (BATCH, SIGNAL_LENGTH), generator=generator)
    else:
        shape = {
            "features": (BATCH, size),
            "image": (BATCH, size, IMAGE_SIZE, IMAGE_SIZE),
            "signal": (BATCH, size, SIGNAL_LENGTH),
        }[flow]
        x = torch.randn(*shape, generator=generator)
    return model, (x,)


# -- comparing two models ------------------------------------------------------------------------


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return out.tanh().square().mean()  # bounded, so a few SGD steps rarely diverge


def check_parity(
    runtime: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    modes: list[str],
    *,
    compile_mode: str = "train",
    warm_up: bool = False,
    compile_fn: Callable[[nn.Module], nn.Module] = fxpass.compile,
) -> nn.Module:
    """The property: compile a deep copy of ``runtime`` (which the compile must leave untouched),
    run both side by side in ``modes`` (forward, backward, SGD step), bitwise equal at every
    step; then a pickled copy of the compiled model reproduces its state and eval outputs.

    Returns:
        The compiled model.
    """
    runtime.train(compile_mode == "train")
    if warm_up:  # lazy transform state exists before the compile
        forward(runtime, inputs, seed=1000)
    model = copy.deepcopy(runtime)
    before = snapshot(model)
    compiled = compile_fn(model)
    assert_same_snapshot(before, snapshot(model))
    # (module scope returns a model without any patch as it is)
    assert isinstance(compiled, torch.fx.GraphModule) or fxpass.scope_record(compiled) is not None or compiled is model
    assert_state_equal(runtime, compiled)
    for step, mode in enumerate(modes):  # (one side_by_side per step: state_dict compared after each)
        report = fxpass.parity.side_by_side(
            runtime, compiled, inputs, modes=(mode,), seed=step, loss_fn=loss_of,
            optimizer=lambda p: torch.optim.SGD(p, lr=SGD_LR),
        )  # fmt: skip
        assert report.ok, f"step {step} ({mode}):\n" + report.table(failures_only=True)
    loaded = pickle.loads(pickle.dumps(compiled))
    assert_state_equal(compiled, loaded)
    for model in (runtime, compiled, loaded):
        model.eval()
    out = forward(runtime, inputs, len(modes))
    assert same(forward(compiled, inputs, len(modes)), out)
    assert same(forward(loaded, inputs, len(modes)), out)
    assert_state_equal(runtime, loaded)
    return compiled


# -- the property --------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is faster, and much faster on a busy machine, where two
    threads wait on each other at every op. Both models run alike, so parity is unaffected."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def note_coverage(spec: Spec, compiled: nn.Module) -> None:
    """Hypothesis events (``--hypothesis-show-statistics``): what the examples exercised."""
    for group in spec.groups:
        event(f"container: {group.container}")
        for layer in group.layers:
            event(f"layer: {layer.kind}" + (" twice" if layer.twice else ""))
            for patch in layer.patches:
                event(f"patch: {patch.kind}")
    scope = fxpass.scope_record(compiled)
    if scope is not None:
        event(f"module scope: {len(scope.parts)} part(s), {len(scope.eager)} eager module(s)")
        if any(e.patched for e in scope.eager):
            event("module scope: a patched module runs eagerly")
    for record in fxpass.records(compiled).values():
        for how, count in record.counts().items():
            if count:
                event(f"emitted: {how}")
        if any(kept.overrides for kept in record.kept_calls):
            event("kept call reading patched tensors inside")


@PROFILE
@given(spec=specs(), modes=modes, compile_mode=st.sampled_from(["train", "eval"]), warm_up=st.booleans())
def test_compiled_model_is_bitwise_equal_to_runtime(
    spec: Spec, modes: list[str], compile_mode: str, warm_up: bool
) -> None:
    """Nothing is refused: a block fxpass cannot trace (a BranchBlock, a PeekBlock reading its
    layers' tensors itself) or must not trace (a ModeBlock) is kept as a call, and the patched
    layers inside read their tensors as at run time, however often it reads them."""
    runtime, inputs = build(spec)
    compiled = check_parity(runtime, inputs, modes, compile_mode=compile_mode, warm_up=warm_up)
    note_coverage(spec, compiled)


def compile_module_scope(model: nn.Module) -> nn.Module:
    return fxpass.compile(model, scope="module")


class EagerTop(nn.Module):
    """A model whose own forward torch.fx cannot trace (a data-dependent branch, always taken):
    at module scope it runs eagerly, and what is below it is compiled part by part."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.float().sum() > float("-inf"):
            return self.net(x)
        return x


@PROFILE
@given(spec=specs(), modes=modes, compile_mode=st.sampled_from(["train", "eval"]), warm_up=st.booleans())
def test_module_scope_is_bitwise_equal_to_runtime(
    spec: Spec, modes: list[str], compile_mode: str, warm_up: bool
) -> None:
    """Module scope refuses nothing the model scope refuses for its blocks: a block torch.fx
    cannot trace, or that must stay a call and reads a tensor twice, runs eagerly, its reads
    (and the reads of a PeekBlock into its layers) evaluated as at run time."""
    net, inputs = build(spec)
    compiled = check_parity(
        EagerTop(net), inputs, modes, compile_mode=compile_mode, warm_up=warm_up, compile_fn=compile_module_scope
    )
    note_coverage(spec, compiled)


# -- regressions: minimal examples the property found ----------------------------------------------

# Fixed: torch.fx stores a tensor constant of the traced code as a buffer _tensor_constant<N> of
# the GraphModule, which fxpass dropped when it restored the model's tree (graph.lint() failed).


def test_regression_tensor_constant_in_transform() -> None:
    runtime = nn.Sequential(imitate(nn.Linear(2, 2), "offset0", offset(0.5)))
    check_parity(runtime, (torch.randn(2, 2),), ["train", "eval"])


DELTA = torch.tensor(0.5)


class AddsConstant(nn.Module):
    """A model whose own forward uses a tensor constant (a module global)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(2, 2), "scaled0", zoo.scaled(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + DELTA


def test_regression_tensor_constant_in_model_forward() -> None:
    compiled = check_parity(AddsConstant(), (torch.randn(2, 2),), ["train", "eval"])
    assert "_tensor_constant0" not in compiled.state_dict()  # a constant, not state


# Fixed, twice: a kept call evaluated a transform once per call and handed it to every read; with
# a layer read twice the raw weight's gradient was summed in another order (last bits). fxpass
# then refused such a block (ModeBlock) and pointed untraceable ones at scope="module"
# (BranchBlock); now the layers inside a kept call read as at run time, and both are exact.


@pytest.mark.parametrize(
    ("block", "patch"),
    [(ModeBlock, Patch("clip")), (BranchBlock, Patch("parametrize")), (ModeBlock, Patch("counting"))],
    ids=["modeblock-clip", "branchblock-parametrize", "modeblock-counting"],
)
def test_regression_transform_read_twice_in_kept_call_is_exact(block: type[nn.Module], patch: Patch) -> None:
    torch.manual_seed(0)
    layer = apply_patches(nn.Linear(3, 3, bias=False), (patch,))
    model = nn.Sequential(block(nn.Sequential(layer, layer)))
    compiled = check_parity(model, (torch.randn(2, 3),), ["train", "eval", "train"])
    assert [k.module for k in fxpass.record_of(compiled).kept_calls] == ["0"]
    module_scope = check_parity(model, (torch.randn(2, 3),), ["train", "eval"], compile_fn=compile_module_scope)
    assert fxpass.scope_record(module_scope) is not None or isinstance(module_scope, torch.fx.GraphModule)


# Fixed: the overrides of a layer inside a kept call were named from the layer's first path in the
# model; a layer first reached outside the kept module got a wrong key.


def _shared_after_traced_use(layer: nn.Module) -> nn.Module:
    return nn.Sequential(layer, ModeBlock(nn.Sequential(layer)))


def _shared_by_two_blocks(layer: nn.Module) -> nn.Module:
    return nn.Sequential(ModeBlock(nn.Sequential(layer)), ModeBlock(layer))


@pytest.mark.parametrize(
    ("model", "layer"),
    [
        (_shared_after_traced_use, lambda: imitate(nn.Linear(2, 2), "scaled0", zoo.scaled(2.0))),
        (_shared_after_traced_use, lambda: imitate(nn.BatchNorm1d(2), "scaled0", zoo.scaled(2.0))),
        (_shared_by_two_blocks, lambda: imitate(nn.Linear(2, 2), "scaled0", zoo.scaled(2.0))),
    ],
    ids=["after-traced-use", "batchnorm-after-traced-use", "two-blocks"],
)
def test_regression_shared_layer_in_kept_call(
    model: Callable[[nn.Module], nn.Module], layer: Callable[[], nn.Module]
) -> None:
    torch.manual_seed(0)
    check_parity(model(layer()), (torch.randn(2, 2),), ["eval", "train"])
