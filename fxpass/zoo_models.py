"""The models and transforms of the zoo, built from code.

Small hand-written models, each patched (``imitate``, torch parametrizations and pruning, qsparse)
to exercise one path of the pass, and the weight transforms they apply; :mod:`fxpass.zoo` lists
them as seeded entries. All live at module level so compiled models pickle by reference: keep the
names where they are. Models saved when they lived in :mod:`fxpass.zoo` still load through it.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrizations, parametrize

from imitation_runtime import imitate

__all__ = [
    # transforms
    "soft_clip", "scaled", "normalized_or_doubled", "RoundSTE", "round_ste", "LearnedScale",
    "Symmetric",
    # models, and the blocks they are built of
    "MLP", "ConvBN", "Depthwise", "NoBias", "TiedEmbedding", "TransformerBlock", "CalledTwice",
    "TwoReads", "TwoReadsModel", "Stacked", "StatefulTransform", "Untraceable", "Parametrized",
    "QsparseNet", "Branchy", "SpectralNormed", "CachedTwice", "Cached", "Sparsified", "Dense",
    "Pruned", "LoRA", "WithLoRA", "ModeScaled", "ModeReading", "ResidualBlock", "Blocks", "AuxHead",
    "StochasticDepth",
]


# -- transforms ----------------------------------------------------------------------------------


def soft_clip(w: torch.Tensor) -> torch.Tensor:
    """An importable, traceable transform."""
    return torch.tanh(w) * 0.9


def scaled(factor: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A closure: traced and inlined, the factor becomes a constant of the graph."""
    return lambda w: w * factor


def normalized_or_doubled(threshold: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """A closure with data-dependent control flow: torch.fx cannot trace it (opaque)."""

    def transform(w: torch.Tensor) -> torch.Tensor:
        if w.abs().max() > threshold:
            return w / w.abs().max()
        return w * 2

    return transform


class RoundSTE(torch.autograd.Function):
    """Rounding with a straight-through gradient: an autograd.Function (opaque)."""

    @staticmethod
    def forward(ctx: object, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(w * 16) / 16

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def round_ste(w: torch.Tensor) -> torch.Tensor:
    return RoundSTE.apply(w)


class LearnedScale(nn.Module):
    """A stateful transform: a trainable per-row scale, created lazily on the first call, and a
    counter of training-mode calls that drives a noise-free, step-dependent shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.scale: nn.Parameter | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            self.scale = nn.Parameter(torch.ones(w.shape[0], *([1] * (w.dim() - 1))))
        if self.training:
            self.calls += 1
        shrink = 1.0 / (1.0 + 0.1 * self.calls.to(w.dtype))
        return w * self.scale * shrink


class Symmetric(nn.Module):
    """A custom parametrization."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w.triu() + w.triu(1).transpose(-1, -2)


# -- models --------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            imitate(nn.Linear(8, 16), "clip", soft_clip),
            nn.ReLU(),
            imitate(nn.Linear(16, 16), "halve", scaled(0.5), scaled(2.0)),
            nn.GELU(),
            nn.Linear(16, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = imitate(nn.Conv2d(3, 8, 3, padding=1), "clip", soft_clip)
        self.bn1 = imitate(nn.BatchNorm2d(8), "shift", scaled(1.5), scaled(0.5))
        self.conv2 = imitate(nn.Conv2d(8, 8, 3, stride=2), "halve", scaled(0.5))
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.depthwise = imitate(nn.Conv2d(6, 6, 3, padding=1, groups=6), "clip", soft_clip)
        self.pointwise = imitate(nn.Conv2d(6, 4, 1), "halve", scaled(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(F.relu(self.depthwise(x)))


class NoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(6, 6, bias=False), "clip", soft_clip, scaled(3.0))
        self.out = imitate(nn.Linear(6, 2), "halve", scaled(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)))


class TiedEmbedding(nn.Module):
    """An embedding whose weight is also the output head's (one Parameter, two modules)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.mix = imitate(nn.Linear(8, 8), "halve", scaled(0.5))
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight  # tie first, then patch both
        imitate(self.embed, "clip", soft_clip)
        imitate(self.head, "twice", scaled(2.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mix(self.embed(tokens)))
        # reads the patched embedding's weight from outside its forward
        logits = self.head(h) + F.linear(h, self.embed.weight)
        return logits


class TransformerBlock(nn.Module):
    """nn.MultiheadAttention reads out_proj.weight in its own forward, never calling out_proj."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = imitate(nn.LayerNorm(16), "clip", soft_clip)
        self.attn = nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True)
        imitate(self.attn.out_proj, "halve", scaled(0.5))
        self.norm2 = nn.LayerNorm(16)
        self.ff1 = imitate(nn.Linear(16, 32), "clip", soft_clip)
        self.ff2 = imitate(nn.Linear(32, 16), "halve", scaled(0.5))
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + self.drop(a)
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = imitate(nn.Linear(5, 5), "scale", LearnedScale())
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.shared(torch.relu(self.shared(x))))


class TwoReads(nn.Module):
    """A custom module whose forward reads its (statefully transformed) weight twice."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4) * 0.3)
        self.bias = nn.Parameter(torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t() + self.bias + self.weight.pow(2).sum()


class TwoReadsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = imitate(TwoReads(), "scale", LearnedScale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Stacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        fc = imitate(nn.Linear(6, 6), "plus", lambda w: w + 0.25)
        self.fc = imitate(imitate(fc, "clip", soft_clip), "halve", scaled(0.5), scaled(4.0))
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(x)))


class StatefulTransform(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = imitate(nn.Linear(6, 8), "scale", LearnedScale(), LearnedScale())
        self.fc2 = imitate(nn.Linear(8, 3), "scale", LearnedScale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = imitate(nn.Linear(6, 8), "norm", normalized_or_doubled(0.3))
        self.fc2 = imitate(nn.Linear(8, 3), "round", round_ste)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Parametrized(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sym = nn.Linear(6, 6)
        parametrize.register_parametrization(self.sym, "weight", Symmetric())
        self.ortho = parametrizations.orthogonal(nn.Linear(6, 6))
        self.wn = parametrizations.weight_norm(nn.Linear(6, 4))
        # imitate on top of a parametrized module
        self.both = nn.Linear(4, 4)
        parametrize.register_parametrization(self.both, "weight", Symmetric(), unsafe=True)
        imitate(self.both, "halve", scaled(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.both(torch.tanh(self.wn(self.ortho(self.sym(x)))))


class QsparseNet(nn.Module):
    """qsparse's own imitate: quantize(prune(conv)), with short schedules so state moves fast."""

    def __init__(self) -> None:
        super().__init__()
        from qsparse import prune, quantize
        from qsparse import set_qsparse_options

        set_qsparse_options(log_on_created=False, log_during_train=False)
        self.conv = quantize(
            prune(nn.Conv2d(3, 6, 3), sparsity=0.5, start=1, interval=1, repetition=2),
            bits=6,
            timeout=2,
        )
        self.fc = quantize(nn.Linear(6, 4), bits=8, timeout=2, channelwise=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        return self.fc(x.mean(dim=(2, 3)))


class Branchy(nn.Module):
    """Data-dependent control flow at the top level: torch.fx cannot trace the model's forward,
    so it compiles with scope="module"."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN()
        self.gate = imitate(nn.Linear(5, 5), "clip", soft_clip)
        self.other = nn.Sequential(imitate(nn.Linear(5, 5), "halve", scaled(0.5)), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        if h.sum() > 0:
            return self.gate(h)
        return self.other(h)


class SpectralNormed(nn.Module):
    """spectral_norm: a parametrization whose state (the power iteration's ``_u``, ``_v``
    buffers) moves at every evaluation in training and stays in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = parametrizations.spectral_norm(nn.Linear(6, 6))
        self.fc2 = imitate(nn.Linear(6, 3), "clip", soft_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class CachedTwice(nn.Module):
    """Reads a spectral-normed weight twice inside ``parametrize.cached()``: one evaluation of the
    parametrization for both reads. fxpass keeps it as a call (its graph would not enter the
    block at run time)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = parametrizations.spectral_norm(nn.Linear(6, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with parametrize.cached():
            return self.fc(torch.tanh(self.fc(x)))


class Cached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = CachedTwice()
        self.head = imitate(nn.Linear(6, 3), "halve", scaled(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


class Sparsified(nn.Module):
    """torch.ao.pruning's WeightNormSparsifier: a FakeSparsity parametrization whose mask buffer
    ``sparsifier.step()`` sets."""

    def __init__(self) -> None:
        super().__init__()
        from torch.ao.pruning import WeightNormSparsifier

        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), imitate(nn.Linear(8, 4), "clip", soft_clip))
        sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 4), zeros_per_block=4)
        sparsifier.prepare(self.body, config=[{"tensor_fqn": "0.weight"}])
        sparsifier.step()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Dense(nn.Module):
    """A user layer (traced through), with its own weight and bias."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, features) / features**0.5)
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _detach_pruned_weight(module: nn.Module, args: object, output: object) -> None:
    # torch cannot deep-copy a pruned module whose recomputed weight needs a gradient; the
    # forward pre-hook recomputes it at the next call anyway.
    module.weight = module.weight.detach()


class Pruned(nn.Module):
    """torch.nn.utils.prune: a forward pre-hook recomputes ``weight = weight_orig * weight_mask``
    and assigns it, on a user layer (traced through: the hook runs on proxies while tracing) and
    on a Linear (a leaf: the hook runs at every call)."""

    def __init__(self) -> None:
        super().__init__()
        from torch.nn.utils import prune

        self.dense = prune.l1_unstructured(Dense(6), "weight", amount=0.5)
        self.fc = prune.random_unstructured(nn.Linear(6, 6), "weight", amount=0.3)
        self.head = imitate(nn.Linear(6, 3), "clip", soft_clip)
        for layer in (self.dense, self.fc):
            _detach_pruned_weight(layer, (), None)
            layer.register_forward_hook(_detach_pruned_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.dense(x))))


class LoRA(nn.Module):
    """A LoRA parametrization as minLoRA writes it: ``W + B A`` scaled, with a dropout function
    held as a lambda (plain pickle cannot save it; the compiled model pickles it by value)."""

    def __init__(self, features: int, rank: int = 2) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.randn(rank, features) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(features, rank) * 0.1)
        self.scale = 0.5
        self.dropout_fn = lambda x: x

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.scale * (self.lora_B @ self.dropout_fn(self.lora_A))


class WithLoRA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        parametrize.register_parametrization(self.fc, "weight", LoRA(6))
        self.head = imitate(nn.Linear(6, 3), "halve", scaled(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x)))


class ModeScaled(nn.Module):
    """A user module whose forward reads ``self.training``: fxpass must notice the read and keep it
    as a call (tracing it would fix its scale to the mode at compile time)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = imitate(nn.Linear(6, 6), "clip", soft_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y * 0.5 if self.training else y + 1


class ModeReading(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = ModeScaled()
        self.head = imitate(nn.Linear(6, 3), "halve", scaled(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


class ResidualBlock(nn.Module):
    """A pre-norm residual block, as transformer and ResNet stages repeat them."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = imitate(nn.Linear(width, width), "clip", soft_clip)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.fc(torch.relu(self.norm(x))))


class Blocks(nn.Module):
    """Identical blocks, each a boundary: FSDP2 shards them one by one, activation checkpointing
    wraps them, torch.compile compiles them once."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock() for _ in range(3))
        self.head = imitate(nn.Linear(8, 4), "halve", scaled(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class AuxHead(nn.Module):
    """An auxiliary classifier used in training only (GoogLeNet, Inception v3): the model's own
    forward reads ``self.training``, so fxpass traces it once per mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(imitate(nn.Linear(6, 6), "clip", soft_clip), nn.ReLU())
        self.main = imitate(nn.Linear(6, 3), "halve", scaled(0.5))
        self.aux = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        out = self.main(h)
        if self.training:
            return out + 0.3 * self.aux(h)
        return out


class StochasticDepth(nn.Module):
    """A drop rate applied in the model's own forward, as timm models do with ``drop_rate > 0``:
    traced once per mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = imitate(nn.Linear(6, 6), "clip", soft_clip)
        self.fc2 = imitate(nn.Linear(6, 3), "halve", scaled(0.5))
        self.drop_rate = 0.25

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(torch.relu(self.fc1(x)), self.drop_rate, self.training)
        return self.fc2(h)
