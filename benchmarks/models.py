"""The models the benchmarks time, each built in every form that a figure compares.

The main model is a stack of ``layers`` blocks ``nn.Sequential(nn.Linear(width, width), nn.ReLU())``
held in ``self.layers`` (so a weight lives at ``layers.<i>.0.weight``), with one transform on every
Linear's weight and the identity on its bias. It comes as

* the seed runtime: qsparse's ``imitate`` (``qsparse.imitation``), the real package;
* torch parametrize: ``register_parametrization`` of a module calling the same transform;
* the functional twin, the limit: ``F.relu(F.linear(x, T(w_i), b_i))`` over a flat list of the
  seed model's own parameters (registered in ``ParameterList``\\ s, so ``symbolic_trace`` finds them);
* the plain model: the same stack, unpatched, holding the transformed weights.

Every form is built from the same seed, so equal sizes mean equal raw parameters. Zoo models are
turned into seed-runtime models by replaying their ``imitation_runtime`` imitations with qsparse's
``imitate``.
"""

from __future__ import annotations

import logging
from typing import Callable, cast

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

import imitation_runtime
from fxpass import zoo

__all__ = [
    "TRANSFORMS",
    "FunctionalTwin",
    "Parametrization",
    "Stack",
    "fake_quant",
    "halve",
    "parametrized_stack",
    "plain_stack",
    "seed_imitate",
    "seed_stack",
    "seed_zoo",
    "stack_parameters",
]

Transform = Callable[[torch.Tensor], torch.Tensor]


def fake_quant(w: torch.Tensor) -> torch.Tensor:
    """Round to a 1/16 grid: a fake-quantization-like transform of three elementwise ops.

    Example:
        >>> fake_quant(torch.tensor([0.1, 0.26])).tolist()
        [0.125, 0.25]
    """
    return torch.round(w * 16) / 16


def halve(w: torch.Tensor) -> torch.Tensor:
    """The cheapest transform: one elementwise op.

    Example:
        >>> halve(torch.tensor([2.0])).tolist()
        [1.0]
    """
    return w * 0.5


#: Transforms the command line offers, by name.
TRANSFORMS: dict[str, Transform] = {"fakequant": fake_quant, "halve": halve}


def seed_imitate(module: nn.Module, name: str, thing: Transform, bias_thing: Transform | None = None) -> nn.Module:
    """qsparse's ``imitate`` (the seed runtime), with qsparse's logging kept quiet.

    Example:
        >>> layer = seed_imitate(nn.Linear(2, 2), "half", halve)
        >>> torch.equal(layer.weight, layer._parameters["weight"] * 0.5)
        True
    """
    logging.getLogger("qsparse").setLevel(logging.ERROR)
    from qsparse.imitation import imitate

    return imitate(module, name, thing, bias_thing)


class Parametrization(nn.Module):
    """A torch parametrization that applies a plain function.

    Args:
        fn: the transform.
    """

    def __init__(self, fn: Transform) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.fn(w)


class Stack(nn.Module):
    """``layers`` blocks of Linear(width, width) + ReLU, in ``self.layers``.

    Args:
        layers: number of blocks.
        width: features in and out of every Linear.

    Example:
        >>> Stack(2, 3)(torch.zeros(1, 3)).shape
        torch.Size([1, 3])
    """

    def __init__(self, layers: int, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(layers))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def linears(self) -> list[nn.Linear]:
        """The Linear of every block, in order."""
        return [m for m in self.layers.modules() if isinstance(m, nn.Linear)]


def _seeded_stack(layers: int, width: int) -> Stack:
    torch.manual_seed(0)
    return Stack(layers, width)


def seed_stack(layers: int, width: int, transform: Transform) -> Stack:
    """The stack patched by the seed runtime: ``imitate(linear, "quantize", transform)``.

    Example:
        >>> model = seed_stack(2, 3, halve)
        >>> type(model.layers[0][0]).__module__
        'qsparse.imitation'
    """
    model = _seeded_stack(layers, width)
    for linear in model.linears():
        seed_imitate(linear, "quantize", transform)
    return model


def parametrized_stack(layers: int, width: int, transform: Transform) -> Stack:
    """The stack with every Linear's weight parametrized by ``transform``.

    Example:
        >>> model = parametrized_stack(2, 3, halve)
        >>> parametrize.is_parametrized(model.layers[1][0], "weight")
        True
    """
    model = _seeded_stack(layers, width)
    for linear in model.linears():
        parametrize.register_parametrization(linear, "weight", Parametrization(transform))
    return model


def plain_stack(layers: int, width: int, transform: Transform) -> Stack:
    """The unpatched stack holding the transformed weights (what a frozen model computes).

    Example:
        >>> torch.equal(plain_stack(1, 3, halve).layers[0][0].weight, seed_stack(1, 3, halve).layers[0][0].weight)
        True
    """
    model = _seeded_stack(layers, width)
    with torch.no_grad():
        for linear in model.linears():
            linear.weight.copy_(transform(linear.weight))
    return model


def stack_parameters(model: Stack) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """The raw (weight, bias) of every block, read without triggering any patch."""
    pairs = []
    for linear in model.linears():
        weight: object = linear._parameters.get("weight")
        if parametrize.is_parametrized(linear, "weight"):  # the raw tensor is the original
            weight = cast(nn.ModuleDict, linear.parametrizations)["weight"].original
        pairs.append((cast(nn.Parameter, weight), cast(nn.Parameter, linear._parameters["bias"])))
    return pairs


class FunctionalTwin(nn.Module):
    """The hand-written functional form of a stack, sharing its raw parameters.

    Run eagerly, the forward loops over a plain list of ``(weight, bias)`` pairs, so each
    parameter is reached in one step. The parameters are also registered in two flat
    ``ParameterList``\\ s, which the forward reads while ``torch.fx.symbolic_trace`` runs, so that
    they become ``get_attr`` nodes: the traced twin has the same nodes as the compiled stack.

    Args:
        model: the stack whose parameters to use.
        transform: the weight transform.

    Example:
        >>> model = seed_stack(2, 3, halve)
        >>> x = torch.randn(1, 3)
        >>> torch.equal(FunctionalTwin(model, halve)(x), model(x))
        True
    """

    def __init__(self, model: Stack, transform: Transform) -> None:
        super().__init__()
        pairs = stack_parameters(model)
        self.weights = nn.ParameterList([w for w, _ in pairs])
        self.biases = nn.ParameterList([b for _, b in pairs])
        self.pairs = pairs
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transform = self.transform
        # symbolic_trace sees a parameter only when it is read through a module attribute; run
        # eagerly, the plain list is the cheapest way to the same tensors.
        pairs = zip(self.weights, self.biases, strict=True) if isinstance(x, torch.fx.Proxy) else self.pairs
        for weight, bias in pairs:
            x = F.relu(F.linear(x, transform(weight), bias))
        return x


def _replay_with_seed(model: nn.Module) -> nn.Module:
    for module in list(model.modules()):
        if not imitation_runtime.is_imitated(module):
            continue
        layers = imitation_runtime.imitations(module)
        imitation_runtime.unimitate(module)
        for layer in layers:
            seed_imitate(module, layer.name, layer.thing, layer.bias_thing)
    return model


def seed_zoo(name: str, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """A zoo model patched by the seed runtime instead of ``imitation_runtime``, and an input.

    Args:
        name: the zoo entry (its imitations are replayed with qsparse's ``imitate``).
        batch: the batch size of the input; its other dimensions are the zoo example's.

    Example:
        >>> model, x = seed_zoo("cnn_bn", 3)
        >>> type(model.conv1).__module__, tuple(x.shape)
        ('qsparse.imitation', (3, 3, 8, 8))
    """
    model, (example,) = zoo.get(name).build()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *example.shape[1:], generator=generator)
    return _replay_with_seed(model), x
