"""Text encoders for KG objectives: mean-pooled, unit-norm sentence embeddings with or without gradients.

The pooling is the one :func:`polyglot_adapters.models.embed` uses for the default base
(multilingual-e5): ``prefix + text`` framed as ``<s> ... </s>``, the last hidden states averaged over
every real token (the two specials included) and L2-normalised. Training (:func:`pooled`, with
gradients, through whatever adapters are active) and evaluation (:func:`encode_texts`, batched by
length, no gradients) share it, so a score seen in training is the score evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..model import AdaptedModel

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_PREFIX",
    "backbone",
    "encode_texts",
    "frame_ids",
    "pooled",
    "tokenize_texts",
]

DEFAULT_PREFIX = "query: "
"""e5 was trained with ``query: `` for symmetric tasks; labels and verbalised facts are symmetric."""
DEFAULT_MAX_LENGTH = 64
"""Tokens per text including ``<s>`` and ``</s>``; KG labels and templates are far shorter."""


def frame_ids(tokenizer: Any) -> tuple[int, int, int]:
    """``(bos, eos, pad)`` ids: ``<s>``/``</s>`` (XLM-R) or ``[CLS]``/``[SEP]`` (BERT); pad defaults to eos.

    Raises:
        ConfigError: If the tokenizer has neither pair.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    if bos is None or eos is None:
        raise ConfigError("the tokenizer needs <s>/</s> or [CLS]/[SEP] tokens to frame texts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


def tokenize_texts(
    tokenizer: Any, texts: Sequence[str], *, prefix: str = DEFAULT_PREFIX, max_length: int = DEFAULT_MAX_LENGTH
) -> dict[str, torch.Tensor]:
    """Tokenizes texts as ``<s> prefix+text </s>``, cut to ``max_length`` tokens and right-padded.

    Args:
        tokenizer: A transformers tokenizer.
        texts: The texts (at least one).
        prefix: Prepended to every text.
        max_length: Tokens per row including the two specials (>= 3).

    Returns:
        ``input_ids`` and ``attention_mask``, each ``(N, T)`` with ``T`` the longest row.

    Raises:
        ConfigError: If there are no texts, ``max_length`` < 3 or the tokenizer cannot frame texts.
    """
    if not texts:
        raise ConfigError("no texts to tokenize")
    if not isinstance(max_length, int) or max_length < 3:
        raise ConfigError(f"max_length must be an integer >= 3, got {max_length!r}")
    bos, eos, pad = frame_ids(tokenizer)
    content = tokenizer([prefix + t for t in texts], add_special_tokens=False, verbose=False)["input_ids"]
    rows = [[bos, *ids[: max_length - 2], eos] for ids in content]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), length), dtype=torch.long)  # (N, T)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def backbone(model: nn.Module) -> nn.Module:
    """The encoder that produces hidden states: the host's ``base_model`` (no LM head), adapters included.

    Adapters wrap modules inside the host, so calling the backbone directly still runs the active
    composition; skipping a masked-LM head saves its vocabulary-sized projection of every token.
    """
    host = model.model if isinstance(model, AdaptedModel) else model
    return getattr(host, "base_model", host)


def pooled(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled, unit-norm embeddings of a tokenized batch (differentiable).

    Args:
        model: A transformers encoder or masked-LM, or an ``AdaptedModel`` on one.
        batch: ``input_ids`` and ``attention_mask``, each ``(N, T)``.

    Returns:
        ``(N, H)`` float32 rows of unit norm.
    """
    out = backbone(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hidden = out.last_hidden_state.float()  # (N, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (N, H)
    return F.normalize(mean, dim=-1, eps=1e-6)


@torch.no_grad()
def encode_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    prefix: str = DEFAULT_PREFIX,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 128,
) -> torch.Tensor:
    """Embeddings of many texts in eval mode, batched by length (the model's mode is restored).

    Returns:
        ``(N, H)`` float32 CPU tensor of unit-norm rows (``(0, 0)`` for no texts).
    """
    if not texts:
        return torch.zeros(0, 0)
    device = next(model.parameters()).device
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    out: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenize_texts(tokenizer, [texts[i] for i in chunk], prefix=prefix, max_length=max_length)
            vectors = pooled(model, {k: v.to(device) for k, v in batch.items()}).cpu()  # (n, H)
            if out is None:
                out = torch.zeros(len(texts), vectors.shape[-1])
            out[torch.tensor(chunk)] = vectors
    finally:
        model.train(was_training)
    assert out is not None
    return out
