"""The built-in model zoo: class-patched models that exercise every path of the pass.

Each entry builds a fresh model (seeded) and example inputs. The command line runs the zoo and the
tests parametrize over it. Entries that need an optional package (qsparse) say so in ``requires``.
The models and transforms live in :mod:`fxpass.zoo_models`, at module level so compiled models
pickle by reference; models saved when they lived here still load (their names resolve through
this module).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable

import torch
import torch.nn as nn

from fxpass._common import moved_names
from fxpass.zoo_models import (
    MLP,
    AuxHead,
    Blocks,
    Branchy,
    Cached,
    CalledTwice,
    ConvBN,
    Depthwise,
    ModeReading,
    NoBias,
    Parametrized,
    Pruned,
    QsparseNet,
    ResidualBlock,
    Sparsified,
    SpectralNormed,
    Stacked,
    StatefulTransform,
    StochasticDepth,
    TiedEmbedding,
    TransformerBlock,
    TwoReadsModel,
    Untraceable,
    WithLoRA,
)

__all__ = ["ZooEntry", "ZOO", "entries", "get"]


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo.

    Attributes:
        name: short identifier.
        build: returns ``(model, example_inputs)``; seeded, so two calls build equal models.
        description: one line for tables.
        requires: importable packages the entry needs.
        scope: the ``fxpass.compile`` scope the model needs (``"module"`` when torch.fx cannot
            trace its own forward).
        boundaries: module classes compiled as boundaries (``fxpass.compile(...,
            boundaries=...)``): the model's blocks.
        limits: what the entry is known not to do, as ``(what, words)`` pairs the tests check
            (:meth:`limit`): ``"export"``, no ``torch.export`` of the model, compiled or frozen
            (words: why); ``"export_compiled"``, ``torch.export`` of the compiled model raises
            and only the frozen one exports (words: a regex of the error); ``"script"`` and
            ``"script_frozen"``, ``torch.jit.script`` of the compiled or the frozen model raises
            (a regex of the error); ``"graph_breaks"``, dynamo breaks the compiled model's
            graph (part of the reason).
    """

    name: str
    build: Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
    description: str
    requires: tuple[str, ...] = ()
    scope: str = "model"
    boundaries: tuple[type[nn.Module], ...] = ()
    limits: tuple[tuple[str, str], ...] = ()

    def limit(self, what: str) -> str | None:
        """The words of a known limit (see ``limits``), or None where there is none.

        Example:
            >>> get("branchy").limit("export")
            "data-dependent control flow in the model's own forward"
            >>> get("mlp").limit("script") is None
            True
        """
        return dict(self.limits).get(what)

    def compile_options(self) -> dict[str, object]:
        """The keyword arguments of ``fxpass.compile`` this entry is compiled with."""
        options: dict[str, object] = {"scope": self.scope}
        if self.boundaries:
            options["boundaries"] = self.boundaries
        return options

    def missing(self) -> tuple[str, ...]:
        """The required packages that are not installed."""
        return tuple(p for p in self.requires if importlib.util.find_spec(p) is None)


def _seeded(cls: type[nn.Module], *shape: int, tokens: int | None = None) -> Callable:
    def build() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = cls()
        if tokens is not None:
            x = torch.randint(0, tokens, shape, generator=generator)
        else:
            x = torch.randn(*shape, generator=generator)
        return model, (x,)

    return build


#: Every entry, in the order the command line and the tests run them.
ZOO: tuple[ZooEntry, ...] = (
    ZooEntry("mlp", _seeded(MLP, 4, 8), "MLP, importable and closure transforms"),
    # (cnn_bn, transformer: the imitated BatchNorm, MultiheadAttention with its out_proj, are kept
    # calls whose patched tensors are read in Python: fxpass.NotScriptableError)
    ZooEntry("cnn_bn", _seeded(ConvBN, 2, 3, 8, 8), "conv + imitated BatchNorm",
             limits=(("script", "bn1 .BatchNorm2d. is kept as a call.*script fxpass.freeze"),)),
    ZooEntry("depthwise", _seeded(Depthwise, 2, 6, 6, 6), "depthwise + pointwise conv"),
    ZooEntry("no_bias", _seeded(NoBias, 3, 6), "Linear(bias=False) with a bias transform"),
    ZooEntry("tied_embedding", _seeded(TiedEmbedding, 2, 7, tokens=20), "embedding tied to the head"),
    ZooEntry("transformer", _seeded(TransformerBlock, 2, 5, 16), "MultiheadAttention out_proj, LayerNorm",
             limits=(("script", "attn .MultiheadAttention. is kept as a call.*script fxpass.freeze"),)),
    # (LearnedScale creates its parameter lazily: a graph break, and a list size script cannot infer)
    ZooEntry("called_twice", _seeded(CalledTwice, 3, 5), "one module called twice",
             limits=(("script", "cannot statically infer the expected size of a list"),
                     ("graph_breaks", "torch.nn.Parameter"))),
    ZooEntry("two_reads", _seeded(TwoReadsModel, 3, 4), "a forward reading its weight twice",
             limits=(("script", "Can't redefine method: forward"), ("graph_breaks", "torch.nn.Parameter"))),
    ZooEntry("stacked", _seeded(Stacked, 3, 6), "three imitations on one Linear"),
    ZooEntry("stateful", _seeded(StatefulTransform, 3, 6), "lazy, trainable module transforms",
             limits=(("script", "Can't redefine method: forward"), ("graph_breaks", "torch.nn.Parameter"))),
    # (Opaque(*args) around a Python closure that branches on a tensor)
    ZooEntry("untraceable", _seeded(Untraceable, 3, 6), "data-dependent closure, autograd.Function",
             limits=(("export_compiled", "data-dependent"), ("script", "variable number of arguments"),
                     ("graph_breaks", "generic_jump"))),
    # (script compiles every submodule's forward, also the unused forward of a parametrized Linear
    # whose weight lives in parametrizations)
    ZooEntry("parametrized", _seeded(Parametrized, 3, 6), "parametrize: custom, orthogonal, weight_norm",
             limits=(("script", "Module 'Linear' has no attribute 'weight'"),)),
    # (qsparse's layers create parameters on first call, and use f-strings)
    ZooEntry("qsparse", _seeded(QsparseNet, 2, 3, 6, 6), "qsparse quantize(prune(conv))", ("qsparse",),
             limits=(("export_compiled", "data-dependent"), ("script", "formatting in JoinedStr"),
                     ("graph_breaks", "torch.nn.Parameter"))),
    # (torch.fx cannot trace Branchy's own forward: it compiles at module scope, its compiled ConvBN
    # keeping the BatchNorm as a call, and Branchy's own `if h.sum() > 0` breaks dynamo's graph)
    ZooEntry("branchy", _seeded(Branchy, 2, 3, 8, 8), "data-dependent top level (module scope)", scope="module",
             limits=(("export", "data-dependent control flow in the model's own forward"),
                     ("script", "bn1 .BatchNorm2d. is kept as a call"), ("graph_breaks", "generic_jump"))),
    ZooEntry("spectral_norm", _seeded(SpectralNormed, 3, 6), "spectral_norm (mode-dependent state)",
             limits=(("script", "Comprehension ifs are not supported"),)),  # torch's _SpectralNorm
    ZooEntry("cached", _seeded(Cached, 3, 6), "a weight read twice inside parametrize.cached()",
             limits=(("script", "block .CachedTwice. is kept as a call"),
                     ("script_frozen", "global variables aren't supported"))),  # parametrize.cached()
    ZooEntry("sparsifier", _seeded(Sparsified, 3, 8), "torch.ao.pruning WeightNormSparsifier",
             limits=(("script", "Module 'Linear' has no attribute 'weight'"),)),  # as for "parametrized"
    # (prune's hook objects; the frozen Linear keeps its hook)
    ZooEntry("pruned", _seeded(Pruned, 3, 6), "torch.nn.utils.prune hooks, traced and called",
             limits=(("script", "'L1Unstructured' object has no attribute '__name__'"),
                     ("script_frozen", "'RandomUnstructured' object has no attribute '__name__'"))),
    ZooEntry("lora", _seeded(WithLoRA, 3, 6), "a LoRA parametrization holding a lambda",
             limits=(("script", "Module 'LoRA' has no attribute 'dropout_fn'"),)),  # the lambda, by value
    ZooEntry("mode_reading", _seeded(ModeReading, 3, 6), "a user module reading self.training",
             limits=(("script", "block .ModeScaled. is kept as a call"),)),
    ZooEntry("blocks", _seeded(Blocks, 4, 8), "identical residual blocks, compiled as boundaries",
             boundaries=(ResidualBlock,)),
    # (compiled once per mode: a scripted module would keep one graph, fxpass.NotScriptableError)
    ZooEntry("aux_head", _seeded(AuxHead, 3, 6), "an auxiliary head in training only (per-mode graphs)",
             limits=(("script", "compiled once per mode"),)),
    ZooEntry("drop_rate", _seeded(StochasticDepth, 3, 6), "dropout in the model's own forward (per-mode)",
             limits=(("script", "compiled once per mode"),)),
)


def entries() -> tuple[ZooEntry, ...]:
    """Every zoo entry, in a stable order."""
    return ZOO


def get(name: str) -> ZooEntry:
    """The zoo entry called ``name``.

    Raises:
        KeyError: no such entry; the message lists the names.
    """
    for entry in ZOO:
        if entry.name == name:
            return entry
    raise KeyError(f"no zoo model {name!r}; choose one of {', '.join(e.name for e in ZOO)}")


# Models saved before the models and transforms moved to fxpass.zoo_models name them here
# (fxpass.zoo.soft_clip, fxpass.zoo.LearnedScale, fxpass.zoo._detach_pruned_weight, ...); the
# models of the entry table are imported above.
__getattr__ = moved_names(__name__, "fxpass.zoo_models")
