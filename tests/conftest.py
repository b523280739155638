"""Shared fixtures: tiny transformers hosts built in-process (no download)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

torch.set_num_threads(1)

TINY = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.2,
)

HOSTS = {
    "bert-mlm": lambda: BertForMaskedLM(BertConfig(**TINY)),
    "bert": lambda: BertModel(BertConfig(**TINY)),
    "xlm-roberta": lambda: XLMRobertaForMaskedLM(XLMRobertaConfig(**TINY, pad_token_id=1)),
    "roberta": lambda: RobertaForMaskedLM(RobertaConfig(**TINY, pad_token_id=1)),
}


def char_tokenizer(
    texts: list[str], *, nfc: bool = False, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """A character-level WordPiece tokenizer over the characters of ``texts`` (``[CLS] ... [SEP]``, offsets).

    Args:
        texts: Texts whose characters make the vocabulary.
        nfc: Normalise input to NFC first.
        model_max_length: The tokenizer's ``model_max_length`` (transformers' default if ``None``).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    chars = sorted({c for text in texts for c in "".join(text.split())})
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    extra = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        **extra,
    )


def text_mlm(vocab_size: int, *, seed: int = 0, positions: int = 256, **overrides: float) -> BertForMaskedLM:
    """A small random ``BertForMaskedLM`` (hidden 32, 2 layers, no dropout) for tests with real tokenizers."""
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(BertConfig(**(settings | overrides))).eval()


def saved_language_adapter(host: torch.nn.Module, directory: Path) -> dict[str, torch.Tensor]:
    """Saves a randomised (non-identity) small language adapter of ``host``'s architecture; returns its tensors."""
    from polyglot_adapters import AdaptedModel, BottleneckConfig

    am = AdaptedModel(host)
    am.add_adapter("sw", BottleneckConfig.language(invertible=False, reduction_factor=4))
    with torch.no_grad():
        for p in am.adapter_state_dict("sw").values():
            p.normal_(0, 0.1)
    am.save_adapter("sw", directory)
    return {k: v.clone() for k, v in am.adapter_state_dict("sw").items()}


def make_host(kind: str = "bert-mlm", seed: int = 0) -> torch.nn.Module:
    """A tiny host in eval mode, deterministic for a seed."""
    torch.manual_seed(seed)
    return HOSTS[kind]().eval()


def host_output(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The host's main output tensor (logits for MLM models, last hidden state otherwise)."""
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.fixture
def host() -> torch.nn.Module:
    return make_host()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(3, TINY["vocab_size"], (4, 9), generator=torch.Generator().manual_seed(1))


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Gives every trainable parameter random values (fresh adapters are the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skips tests marked ``gpu`` cleanly when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
