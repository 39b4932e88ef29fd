"""A corpus of real architectures: transformers models from tiny configs, patched throughout.

The zoo (:mod:`fxpass.zoo`) proves the mechanics on small hand-written models; the corpus holds
the architectures users bring: encoders, decoders, encoder-decoders, vision and speech models,
mixtures of experts and state-space models, each built by ``transformers`` from a tiny config
with random weights (nothing is downloaded) and every ``nn.Linear`` (and GPT-2's ``Conv1D``, and
in vision models every ``nn.Conv2d``) imitated with :func:`fake_quant`. Dropout is on wherever
the config has it, so a training step exercises it.

Needs the ``[hf]`` extra (``transformers``). Used by the tests, the command line and the
benchmarks.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable

import torch
import torch.nn as nn

from imitation_runtime import imitate

__all__ = ["CorpusEntry", "entries", "fake_quant", "get", "patch_throughout"]

Inputs = dict[str, Any]


def fake_quant(w: torch.Tensor) -> torch.Tensor:
    """Round to a grid of 1/16 with a straight-through gradient (an importable transform)."""
    return w + (torch.round(w * 16) / 16 - w).detach()


def patch_throughout(model: nn.Module, *, convolutions: bool = False) -> nn.Module:
    """Imitate every ``nn.Linear`` and ``Conv1D`` of ``model`` (and ``nn.Conv2d`` with
    ``convolutions``) with :func:`fake_quant`, in place; return the model."""
    from transformers.pytorch_utils import Conv1D

    kinds: tuple[type, ...] = (nn.Linear, Conv1D) + ((nn.Conv2d,) if convolutions else ())
    for module in list(model.modules()):
        if isinstance(module, kinds):
            imitate(module, "fake_quant", fake_quant)
    return model


@dataclasses.dataclass(frozen=True)
class CorpusEntry:
    """One architecture of the corpus.

    Attributes:
        name: short identifier (the transformers model type).
        kind: ``encoder``, ``decoder``, ``encoder-decoder``, ``vision`` or ``speech``; ``moe`` and
            ``ssm`` mark decoders that are mixtures of experts or state-space models.
        config: builds the tiny config.
        model_class: the transformers class (also what ``from_pretrained`` loads into).
        inputs: builds example keyword inputs for the forward.
        generates: whether ``generate()`` applies (causal LMs and encoder-decoders).
        convolutions: whether ``nn.Conv2d`` modules are imitated too.
    """

    name: str
    kind: str
    config: Callable[[], Any]
    model_class: Callable[[], type]
    inputs: Callable[[], Inputs]
    generates: bool = False
    convolutions: bool = False

    def build(self) -> tuple[nn.Module, Inputs]:
        """The patched model (seeded, in train mode) and its example inputs."""
        torch.manual_seed(0)
        model = self.model_class()(self.config())
        patch_throughout(model, convolutions=self.convolutions)
        torch.manual_seed(1)
        return model.train(), self.inputs()

    def unpatched(self) -> nn.Module:
        """A model of the same class and config, seeded the same way, without any patch."""
        torch.manual_seed(0)
        return self.model_class()(self.config())


def _transformers(name: str) -> Callable[[], type]:
    def load() -> type:
        import transformers

        return getattr(transformers, name)

    return load


def _config(name: str, **values: Any) -> Callable[[], Any]:
    def build() -> Any:
        import transformers

        return getattr(transformers, name)(**values)

    return build


_VOCAB = 96
_TEXT = dict(vocab_size=_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_BERTLIKE = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=64,
)  # fmt: skip
_LLAMALIKE = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, max_position_embeddings=64, attention_dropout=0.1,
)  # fmt: skip


def _tokens(length: int = 8) -> Callable[[], Inputs]:
    def build() -> Inputs:
        ids = torch.randint(3, _VOCAB, (2, length))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    return build


def _seq2seq() -> Inputs:
    ids = torch.randint(3, _VOCAB, (2, 8))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": ids[:, :5]}


def _pixels(size: int = 32) -> Callable[[], Inputs]:
    return lambda: {"pixel_values": torch.randn(2, 3, size, size)}


def _audio() -> Inputs:
    return {"input_values": torch.randn(2, 800)}


def _mel() -> Inputs:
    return {"input_features": torch.randn(2, 16, 60), "decoder_input_ids": torch.randint(3, _VOCAB, (2, 4))}


ENTRIES: tuple[CorpusEntry, ...] = (
    # encoders
    CorpusEntry("bert", "encoder", _config("BertConfig", **_TEXT, **_BERTLIKE),
                _transformers("BertForMaskedLM"), _tokens()),
    CorpusEntry("distilbert", "encoder",
                _config("DistilBertConfig", **_TEXT, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                        dropout=0.1, attention_dropout=0.1, max_position_embeddings=64),
                _transformers("DistilBertForMaskedLM"), _tokens()),
    CorpusEntry("albert", "encoder",
                _config("AlbertConfig", **_TEXT, **_BERTLIKE, embedding_size=16),
                _transformers("AlbertForMaskedLM"), _tokens()),
    CorpusEntry("electra", "encoder", _config("ElectraConfig", **_TEXT, **_BERTLIKE, embedding_size=16),
                _transformers("ElectraForPreTraining"), _tokens()),
    # decoders
    CorpusEntry("gpt2", "decoder",
                _config("GPT2Config", **_TEXT, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                        resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
                _transformers("GPT2LMHeadModel"), _tokens(), generates=True),
    CorpusEntry("llama", "decoder", _config("LlamaConfig", **_TEXT, **_LLAMALIKE),
                _transformers("LlamaForCausalLM"), _tokens(), generates=True),
    CorpusEntry("qwen2", "decoder", _config("Qwen2Config", **_TEXT, **_LLAMALIKE),
                _transformers("Qwen2ForCausalLM"), _tokens(), generates=True),
    CorpusEntry("phi", "decoder",
                _config("PhiConfig", **_TEXT, **_LLAMALIKE, resid_pdrop=0.1, embd_pdrop=0.1),
                _transformers("PhiForCausalLM"), _tokens(), generates=True),
    CorpusEntry("gpt_neox", "decoder",
                _config("GPTNeoXConfig", **_TEXT, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout=0.1, attention_dropout=0.1),
                _transformers("GPTNeoXForCausalLM"), _tokens(), generates=True),
    CorpusEntry("opt", "decoder",
                _config("OPTConfig", **_TEXT, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                        num_attention_heads=2, max_position_embeddings=64, word_embed_proj_dim=32,
                        dropout=0.1, attention_dropout=0.1),
                _transformers("OPTForCausalLM"), _tokens(), generates=True),
    CorpusEntry("mixtral", "moe",
                _config("MixtralConfig", **_TEXT, **_LLAMALIKE, num_local_experts=4, num_experts_per_tok=2),
                _transformers("MixtralForCausalLM"), _tokens(), generates=True),
    CorpusEntry("qwen2_moe", "moe",
                _config("Qwen2MoeConfig", **_TEXT, **_LLAMALIKE, num_experts=4, num_experts_per_tok=2,
                        moe_intermediate_size=32, shared_expert_intermediate_size=32),
                _transformers("Qwen2MoeForCausalLM"), _tokens(), generates=True),
    CorpusEntry("mamba", "ssm",
                _config("MambaConfig", **_TEXT, hidden_size=32, state_size=8, num_hidden_layers=2,
                        expand=2, conv_kernel=4),
                _transformers("MambaForCausalLM"), _tokens(), generates=True),
    # encoder-decoders
    CorpusEntry("t5", "encoder-decoder",
                _config("T5Config", **_TEXT, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                        dropout_rate=0.1, decoder_start_token_id=0),
                _transformers("T5ForConditionalGeneration"), _seq2seq, generates=True),
    CorpusEntry("bart", "encoder-decoder",
                _config("BartConfig", **_TEXT, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.1,
                        attention_dropout=0.1, decoder_start_token_id=2),
                _transformers("BartForConditionalGeneration"), _seq2seq, generates=True),
    # vision
    CorpusEntry("vit", "vision",
                _config("ViTConfig", **_BERTLIKE, image_size=32, patch_size=8, num_labels=3),
                _transformers("ViTForImageClassification"), _pixels(), convolutions=True),
    CorpusEntry("resnet", "vision",
                _config("ResNetConfig", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3),
                _transformers("ResNetForImageClassification"), _pixels(), convolutions=True),
    CorpusEntry("convnext", "vision",
                _config("ConvNextConfig", hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                        drop_path_rate=0.1, num_labels=3),
                _transformers("ConvNextForImageClassification"), _pixels(), convolutions=True),
    CorpusEntry("swin", "vision",
                _config("SwinConfig", image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                        num_heads=[2, 2], window_size=4, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1, drop_path_rate=0.1, num_labels=3),
                _transformers("SwinForImageClassification"), _pixels(), convolutions=True),
    CorpusEntry("mobilenet_v2", "vision",
                _config("MobileNetV2Config", image_size=32, depth_multiplier=0.25, num_labels=3),
                _transformers("MobileNetV2ForImageClassification"), _pixels(), convolutions=True),
    # speech
    CorpusEntry("wav2vec2", "speech",
                _config("Wav2Vec2Config", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, conv_dim=(8, 8), conv_stride=(4, 4), conv_kernel=(8, 8),
                        num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, hidden_dropout=0.1,
                        attention_dropout=0.1, mask_time_prob=0.2, mask_time_length=2),
                _transformers("Wav2Vec2Model"), _audio),
    CorpusEntry("whisper", "speech",
                _config("WhisperConfig", **_TEXT, num_mel_bins=16, d_model=32, encoder_layers=2,
                        decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=30,
                        max_target_positions=32, dropout=0.1, decoder_start_token_id=1),
                _transformers("WhisperForConditionalGeneration"), _mel, generates=True),
)  # fmt: skip


def available() -> bool:
    """Whether ``transformers`` is installed."""
    return importlib.util.find_spec("transformers") is not None


def entries() -> tuple[CorpusEntry, ...]:
    """Every architecture of the corpus, in table order."""
    return ENTRIES


def get(name: str) -> CorpusEntry:
    """The entry called ``name``.

    Raises:
        KeyError: no entry has that name; the message lists them.
    """
    for entry in ENTRIES:
        if entry.name == name:
            return entry
    raise KeyError(f"no corpus entry {name!r}; choose among {', '.join(e.name for e in ENTRIES)}")
