"""The real architectures of ``python -m benchmarks --real``, each in every form a figure compares.

transformers models are built from configs (random weights, nothing downloaded): ResNet, ConvNeXt,
ViT, MobileNetV2 and Swin for vision, GPT-2, Llama, BERT and T5 for text. Three hand-written
models that torch.fx traces whole stand for model-scope users: a ResNet-18, a DenseNet-121 and an
EfficientNet-B0, written here after their papers (torchvision cannot be installed here).

Every model comes as

* the runtime: every ``nn.Linear``, ``nn.Conv2d`` and GPT-2 ``Conv1D`` patched by the seed
  runtime (qsparse's ``imitate``) with :func:`fake_quant`, a straight-through fake quantization;
* the plain model: the same model unpatched, holding the transformed weights (what a frozen model
  computes);
* the unpatched model with the raw weights (what ``torch.fx.symbolic_trace`` is timed on).

All are built from the same seed, so they hold the same raw parameters. Sizes are those of the
named architectures, scaled down where a batch-1 step on one thread would take seconds (the
``size`` column of the table says what was built); ``quick=True`` builds tiny versions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.models import seed_imitate

__all__ = ["REAL_MODELS", "RealModel", "fake_quant", "get", "patch_throughout", "plain"]


def fake_quant(w: torch.Tensor) -> torch.Tensor:
    """Round to a 1/16 grid with a straight-through gradient.

    Example:
        >>> fake_quant(torch.tensor([0.1, 0.26])).tolist()
        [0.125, 0.25]
    """
    return w + (torch.round(w * 16) / 16 - w).detach()


def _patchable(module: nn.Module) -> bool:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return True
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def patch_throughout(model: nn.Module) -> nn.Module:
    """Patch every Linear, Conv2d and Conv1D of ``model`` with the seed runtime, in place."""
    for module in [m for m in model.modules() if _patchable(m)]:
        seed_imitate(module, "fake_quant", fake_quant)
    return model


def plain(model: nn.Module) -> nn.Module:
    """``model`` (unpatched) with every patchable weight replaced by its transform, in place.

    Each gets a parameter of its own: a tied weight (GPT-2's head and embedding) is transformed
    where the patched module reads it and raw elsewhere, as in the runtime model."""
    with torch.no_grad():
        for module in [m for m in model.modules() if _patchable(m)]:
            module.weight = nn.Parameter(fake_quant(module.weight).clone())
    return model


Inputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class RealModel:
    """One architecture of the real-model benchmarks.

    Attributes:
        name: short identifier (the JSON key).
        size: what was built, for the table.
        build: ``build(quick)``: the unpatched model, seeded, in train mode.
        inputs: ``inputs(quick)``: batch-1 ``(args, kwargs)`` of its forward.
        loss: the output tensor a train step back-propagates from.
    """

    name: str
    size: str
    build: Callable[[bool], nn.Module]
    inputs: Callable[[bool], Inputs]
    loss: Callable[[Any], torch.Tensor]

    def unpatched(self, quick: bool) -> nn.Module:
        torch.manual_seed(0)
        return self.build(quick).train()

    def runtime(self, quick: bool) -> nn.Module:
        return patch_throughout(self.unpatched(quick))

    def plain(self, runtime: nn.Module, quick: bool) -> nn.Module:
        """The plain model holding ``runtime``'s state (BatchNorm statistics included), its
        patched weights transformed."""
        model = self.unpatched(quick)
        model.load_state_dict(runtime.state_dict())
        return plain(model)

    def example(self, quick: bool) -> Inputs:
        torch.manual_seed(1)
        return self.inputs(quick)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    for key in ("logits", "last_hidden_state"):
        if key in output:
            return output[key]
    raise TypeError(f"no logits in {type(output).__name__}")


def _image(full: int, tiny: int = 32, keyword: str | None = "pixel_values") -> Callable[[bool], Inputs]:
    def inputs(quick: bool) -> Inputs:
        size = tiny if quick else full
        pixels = torch.randn(1, 3, size, size)
        return ((), {keyword: pixels}) if keyword else ((pixels,), {})

    return inputs


def _tokens(vocab: int, full: int = 32, tiny: int = 8, decoder: bool = False) -> Callable[[bool], Inputs]:
    def inputs(quick: bool) -> Inputs:
        length = tiny if quick else full
        ids = torch.randint(3, vocab if not quick else 96, (1, length))
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if decoder:
            kwargs["decoder_input_ids"] = ids[:, : max(2, length // 2)]
        return (), kwargs

    return inputs


def _hf(class_name: str, config_name: str, full: dict[str, Any], tiny: dict[str, Any]) -> Callable[[bool], nn.Module]:
    def build(quick: bool) -> nn.Module:
        import transformers

        config = getattr(transformers, config_name)(**(tiny if quick else full))
        return getattr(transformers, class_name)(config)

    return build


_VOCAB = 8192
_TEXT = dict(vocab_size=_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_TINY_TEXT = dict(vocab_size=96, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **_TINY_TEXT)


# -- hand-written models (torch.fx traces them whole) ----------------------------------------------


class BasicBlock(nn.Module):
    """ResNet's two-convolution block."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.down(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2015): a 7x7 stem, four stages of two basic blocks, a linear head."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512), classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        blocks, cin = [], widths[0]
        for index, width in enumerate(widths):
            blocks += [BasicBlock(cin, width, 1 if index == 0 else 2), BasicBlock(width, width, 1)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class DenseLayer(nn.Module):
    """DenseNet's bottleneck layer: BN-ReLU-1x1 conv, BN-ReLU-3x3 conv, concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return torch.cat([x, self.conv2(F.relu(self.norm2(y)))], 1)


class DenseNet121(nn.Module):
    """DenseNet-121 (Huang et al. 2016): dense blocks of 6, 12, 24 and 16 layers, growth 32."""

    def __init__(self, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, classes: int = 1000) -> None:
        super().__init__()
        channels = 2 * growth
        layers: list[nn.Module] = [
            nn.Conv2d(3, channels, 7, 2, 3, bias=False), nn.BatchNorm2d(channels), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        ]  # fmt: skip
        for index, count in enumerate(blocks):
            for _ in range(count):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if index < len(blocks) - 1:
                layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1, bias=False),
                           nn.AvgPool2d(2)]  # fmt: skip
                channels //= 2
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class MBConv(nn.Module):
    """EfficientNet's inverted bottleneck with squeeze-and-excitation and stochastic depth."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop: float) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = (
            nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU())
            if expand != 1
            else nn.Identity()
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(),
        )
        squeezed = max(1, cin // 4)
        self.se_reduce = nn.Conv2d(hidden, squeezed, 1)
        self.se_expand = nn.Conv2d(squeezed, hidden, 1)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.expand(x))
        scale = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))))
        y = self.project(y * scale)
        if not self.residual:
            return y
        if self.training and self.drop > 0:
            y = stochastic_depth(y, self.drop)
        return x + y


def stochastic_depth(y: torch.Tensor, drop: float) -> torch.Tensor:
    """Zero whole samples of ``y`` with probability ``drop``, scaling the rest (one call in a
    traced graph, as torchvision's: torch.fx cannot trace a shape into ``torch.rand``)."""
    keep = torch.rand(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device) >= drop
    return y * keep / (1 - drop)


torch.fx.wrap("stochastic_depth")


#: EfficientNet-B0's stages: (expansion, channels, layers, stride, kernel)
_B0 = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
       (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))  # fmt: skip


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 (Tan and Le 2019): sixteen MBConv blocks, SiLU, stochastic depth 0.2."""

    def __init__(self, stages: tuple[tuple[int, ...], ...] = _B0, classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()

        def scaled(channels: int) -> int:
            return max(8, int(channels * width))

        cin = scaled(32)
        self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.SiLU())
        total = sum(stage[2] for stage in stages)
        blocks, index = [], 0
        for expand, channels, count, stride, kernel in stages:
            for layer in range(count):
                blocks.append(MBConv(cin, scaled(channels), expand, kernel, stride if layer == 0 else 1,
                                     0.2 * index / total))  # fmt: skip
                cin, index = scaled(channels), index + 1
        self.blocks = nn.Sequential(*blocks)
        head = scaled(1280)
        self.head = nn.Sequential(nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.SiLU())
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(head, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(self.head(self.blocks(self.stem(x))), 1)
        return self.classifier(self.dropout(torch.flatten(y, 1)))


def _hand(full: Callable[[], nn.Module], tiny: Callable[[], nn.Module]) -> Callable[[bool], nn.Module]:
    return lambda quick: tiny() if quick else full()


_TINY_B0 = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 1, 2, 5))

REAL_MODELS: tuple[RealModel, ...] = (
    # vision, transformers
    RealModel(
        "resnet", "ResNet-18 layout, 112x112",
        _hf("ResNetForImageClassification", "ResNetConfig",
            dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic", embedding_size=64),
            dict(depths=[1, 1], hidden_sizes=[8, 16], layer_type="basic", embedding_size=8, num_labels=10)),
        _image(112), _logits,
    ),
    RealModel(
        "convnext", "ConvNeXt-T widths, depths 2-2-6-2, 112x112",
        _hf("ConvNextForImageClassification", "ConvNextConfig",
            dict(depths=[2, 2, 6, 2], hidden_sizes=[96, 192, 384, 768]),
            dict(depths=[1, 1], hidden_sizes=[8, 16], num_stages=2, num_labels=10)),
        _image(112), _logits,
    ),
    RealModel(
        "vit", "ViT-S/16, 112x112",
        _hf("ViTForImageClassification", "ViTConfig",
            dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                 image_size=112, patch_size=16),
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 image_size=32, patch_size=8, num_labels=10)),
        _image(112), _logits,
    ),
    RealModel(
        "mobilenet_v2", "MobileNetV2 1.0, 112x112",
        _hf("MobileNetV2ForImageClassification", "MobileNetV2Config",
            dict(image_size=112), dict(depth_multiplier=0.35, image_size=64, num_labels=10)),
        _image(112, tiny=64), _logits,  # (at 32x32 the last feature map is 1x1: BatchNorm refuses batch 1)
    ),
    RealModel(
        "swin", "Swin-T, window 4, 128x128",
        _hf("SwinForImageClassification", "SwinConfig",
            dict(image_size=128, window_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
            dict(image_size=32, patch_size=4, window_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                 num_labels=10)),
        _image(128), _logits,
    ),
    # text, transformers
    RealModel(
        "gpt2", "GPT-2, 6 x 384, vocab 8192, 32 tokens",
        _hf("GPT2LMHeadModel", "GPT2Config",
            dict(n_embd=384, n_layer=6, n_head=6, n_positions=128, **_TEXT),
            dict(n_embd=32, n_layer=2, n_head=2, n_positions=32, **_TINY_TEXT)),
        _tokens(_VOCAB), _logits,
    ),
    RealModel(
        "llama", "Llama, 4 x 512 (GQA 8/4), vocab 8192, 32 tokens",
        _hf("LlamaForCausalLM", "LlamaConfig",
            dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=1376, max_position_embeddings=128, **_TEXT),
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=64, max_position_embeddings=32, **_TINY_TEXT)),
        _tokens(_VOCAB), _logits,
    ),
    RealModel(
        "bert", "BERT, 4 x 512, vocab 8192, 32 tokens",
        _hf("BertForMaskedLM", "BertConfig",
            dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048,
                 max_position_embeddings=128, **_TEXT),
            dict(max_position_embeddings=32, **_TINY_BERT)),
        _tokens(_VOCAB), _logits,
    ),
    RealModel(
        "t5", "T5, 4+4 x 256, vocab 8192, 32 / 16 tokens",
        _hf("T5ForConditionalGeneration", "T5Config",
            dict(d_model=256, d_kv=32, d_ff=1024, num_layers=4, num_heads=8, decoder_start_token_id=0, **_TEXT),
            dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0, **_TINY_TEXT)),
        _tokens(_VOCAB, decoder=True), _logits,
    ),
    # hand-written, traced whole
    RealModel("resnet18", "ResNet-18, hand-written, 112x112",
              _hand(ResNet18, lambda: ResNet18((8, 16), classes=10)), _image(112, keyword=None), _logits),
    RealModel("densenet121", "DenseNet-121, hand-written, 112x112",
              _hand(DenseNet121, lambda: DenseNet121((2, 2), growth=8, classes=10)), _image(112, keyword=None), _logits),
    RealModel("efficientnet_b0", "EfficientNet-B0, hand-written, 112x112",
              _hand(EfficientNetB0, lambda: EfficientNetB0(_TINY_B0, classes=10, width=0.5)), _image(112, keyword=None), _logits),
)  # fmt: skip


def get(name: str) -> RealModel:
    """The model called ``name``."""
    for model in REAL_MODELS:
        if model.name == name:
            return model
    raise KeyError(f"no real model {name!r}; choose one of {', '.join(m.name for m in REAL_MODELS)}")
