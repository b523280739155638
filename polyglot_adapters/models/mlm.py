"""Masked-LM ability for an encoder that has none: a head plus separate copies of its top layers.

The default base was trained for sentence embeddings and ships no masked-LM head. The masked-LM
model built here shares the base's embeddings and lower layers (same parameter objects, no extra
memory) and owns copies of the top ``retrain_top`` layers, which masked-LM training may change
while the embedding path keeps the originals. The decoder is tied to the (frozen) word
embeddings, so only the copied layers, the head's transform and its output bias train.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertForMaskedLM

from ..errors import ConfigError
from ..sites import AdaptedModule

__all__ = ["decode", "decode_tokens", "mask_tokens", "masked_lm_loss", "mlm_from_base", "mlm_trainable_names"]


def mlm_from_base(base: nn.Module, *, retrain_top: int = 2) -> BertForMaskedLM:
    """Builds a ``BertForMaskedLM`` around a BERT-layout base.

    Args:
        base: A transformers ``BertModel`` (e.g. from ``default_base()``).
        retrain_top: How many top layers get their own (trainable) copies.

    Returns:
        The model; its ``retrain_top`` attribute records the argument.

    Raises:
        ConfigError: If ``retrain_top`` is outside ``0..num_hidden_layers``.
    """
    layers = base.config.num_hidden_layers
    if not 0 <= retrain_top <= layers:
        raise ConfigError(f"retrain_top must be in 0..{layers}, got {retrain_top}")
    config = copy.deepcopy(base.config)
    config.tie_word_embeddings = True
    with torch.device("meta"):  # every parameter is replaced below; build nothing twice
        mlm = BertForMaskedLM(config)
    mlm.bert.embeddings = base.embeddings
    for i, layer in enumerate(base.encoder.layer):
        mlm.bert.encoder.layer[i] = copy.deepcopy(layer) if i >= layers - retrain_top else layer
    head = mlm.cls.predictions
    head.transform.to_empty(device=base.embeddings.word_embeddings.weight.device)
    head.transform.apply(mlm._init_weights)
    head.bias = nn.Parameter(torch.zeros(config.vocab_size, device=head.transform.dense.weight.device))
    head.decoder.weight = mlm.bert.embeddings.word_embeddings.weight
    head.decoder.bias = head.bias
    mlm.retrain_top = retrain_top  # which layers are the model's own: parts for another split must not load
    return mlm.to(dtype=base.embeddings.word_embeddings.weight.dtype)


def mlm_trainable_names(mlm: BertForMaskedLM, retrain_top: int = 2) -> list[str]:
    """Names of the parameters masked-LM training changes: the copied top layers and the head."""
    layers = mlm.config.num_hidden_layers
    top = tuple(f"bert.encoder.layer.{i}." for i in range(layers - retrain_top, layers))
    return [
        name
        for name, _ in mlm.named_parameters()
        if name.startswith(top) or name.startswith("cls.predictions.transform.") or name == "cls.predictions.bias"
    ]


def mask_tokens(
    ids: torch.Tensor,
    special: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    p: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: ``p`` of the non-special tokens become targets; 80% ``<mask>``, 10% random, 10% kept.

    Args:
        ids: ``(B, T)`` token ids.
        special: ``(B, T)`` bool, True where a token must never be a target (specials, padding).
        mask_id: Id of the mask token.
        vocab_size: Size of the vocabulary for random replacements.
        generator: Source of randomness (one per example keeps batches shard-invariant).
        p: Target probability.

    Returns:
        The corrupted ids and the labels (``-100`` where no target).
    """
    draw = torch.rand(ids.shape, generator=generator)
    targets = (draw < p) & ~special
    labels = torch.where(targets, ids, torch.full_like(ids, -100))
    how = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    corrupted = torch.where(targets & (how < 0.8), torch.full_like(ids, mask_id), ids)
    corrupted = torch.where(targets & (how >= 0.8) & (how < 0.9), random_ids, corrupted)
    return corrupted, labels


def masked_lm_loss(
    mlm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at the target positions only (the 250k-way decoder never sees the rest).

    Args:
        mlm: A ``BertForMaskedLM`` (adapters attached through ``AdaptedModel`` act inside it).
        input_ids: ``(B, T)``.
        attention_mask: ``(B, T)``.
        labels: ``(B, T)``, ``-100`` where no target.

    Returns:
        The mean loss over targets and the ``(N,)`` logits' argmax per target (for accuracy).
    """
    hidden = mlm.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
    targets = labels != -100
    logits = decode(mlm, hidden[targets])  # (N, V)
    return F.cross_entropy(logits.float(), labels[targets]), logits.argmax(-1)


def decode(mlm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The head's logits in the head's own dtype, also under autocast.

    bf16 logits of a 250k-way decoder are too coarse (a resolution of 0.125 at 16): many ties, and
    the loss and the argmax suffer. This measurably cost held-out top-1 when it ran under autocast.

    Args:
        mlm: A ``BertForMaskedLM``.
        hidden: ``(N, H)`` final hidden states.

    Returns:
        ``(N, V)`` logits.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return mlm.cls(hidden.to(mlm.cls.predictions.decoder.weight.dtype))


def decode_tokens(mlm: nn.Module, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The head's logits for a subset of the vocabulary only, in the head's dtype (also under autocast).

    Adapters at the head's input (e.g. an inverse invertible adapter) act as in the full head;
    only the decoder's rows for ``token_ids`` are multiplied, so scoring a few thousand candidate
    tokens costs a fraction of the 250k-way product.

    Args:
        mlm: A ``BertForMaskedLM`` or a RoBERTa-family masked LM, possibly with adapters attached.
        hidden: ``(N, H)`` final hidden states.
        token_ids: ``(K,)`` int64 vocabulary ids.

    Returns:
        ``(N, K)`` logits, equal to the full head's logits at ``token_ids``.

    Raises:
        ConfigError: If the model has no masked-LM head.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        if hasattr(mlm, "cls"):  # BERT: cls.predictions = transform + decoder
            head = mlm.cls.predictions
        elif hasattr(mlm, "lm_head"):  # RoBERTa / XLM-R: lm_head = dense, gelu, layer_norm + decoder
            head = mlm.lm_head
        else:
            raise ConfigError(f"{type(mlm).__name__} has no masked-LM head (cls or lm_head)")
        hidden = hidden.to(head.decoder.weight.dtype)
        if isinstance(head, AdaptedModule):
            hidden = head.adapt(hidden, hidden, None)
            head = head.base_layer
        if hasattr(head, "transform"):
            transformed = head.transform(hidden)  # (N, H)
        else:
            transformed = head.layer_norm(F.gelu(head.dense(hidden)))  # (N, H)
        return F.linear(transformed, head.decoder.weight[token_ids], head.bias[token_ids])  # (N, K)
