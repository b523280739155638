"""Text-encoded KG embedding heads with PyKEEN interactions and losses.

:class:`TextKGE` scores a triple ``(h, r, t)`` with any PyKEEN interaction picked by name
(``transe``, ``distmult``, ``rotate``, ...), where the head and tail representations are the
encoder's pooled embeddings of the query ``"(subject, relation)"`` and of the object's label (so
an unseen label language still gets a representation) and only the relation representations are
free parameters. Its loss is any
PyKEEN loss by name, applied LCWA-style over the batch's candidates (every correct answer labelled
1), e.g. ``crossentropy``, ``bcewithlogits``, ``softplus``.

The masked-entity variant of TP, for a masked-LM host, is :mod:`polyglot_adapters.kg.masked`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .encode import pooled

__all__ = ["TextKGE", "kge_interaction", "kge_loss"]


def _pykeen() -> None:
    from ..paths import cache_home

    os.environ.setdefault("PYSTOW_HOME", str(cache_home("pystow")))


def kge_interaction(name: str) -> nn.Module:
    """A PyKEEN interaction by name (``transe`` gets the L2 norm).

    Raises:
        ConfigError: For a name PyKEEN does not know (the message lists some it does).
    """
    _pykeen()
    from pykeen.nn.modules import interaction_resolver

    key = interaction_resolver.normalize(name)
    if key not in interaction_resolver.lookup_dict:
        raise ConfigError(f"unknown PyKEEN interaction {name!r}; e.g. transe, distmult, rotate, complex")
    kwargs = {"p": 2} if key in ("transe", "transh", "transr", "transd", "se", "um") else {}
    try:
        return interaction_resolver.make(key, **kwargs)
    except TypeError as err:
        raise ConfigError(f"PyKEEN interaction {name!r} needs parameters this head does not give ({err})") from None


def kge_loss(name: str) -> Any:
    """A PyKEEN loss by name (``crossentropy``, ``bcewithlogits``, ``softplus``, ``marginranking``, ...).

    Raises:
        ConfigError: For a name PyKEEN does not know.
    """
    _pykeen()
    from pykeen.losses import loss_resolver

    key = loss_resolver.normalize(name)
    if key not in loss_resolver.lookup_dict:
        raise ConfigError(f"unknown PyKEEN loss {name!r}; choose from {sorted(loss_resolver.lookup_dict)}")
    return loss_resolver.make(key)


class TextKGE(nn.Module):
    """An encoder (an ``AdaptedModel``) plus a PyKEEN interaction with learned relation representations.

    Args:
        encoder: The text encoder (its active adapters run; its trainable parameters train).
        num_relations: Number of relations.
        interaction: PyKEEN interaction name.
        loss: PyKEEN loss name (LCWA over the batch's candidates).
    """

    def __init__(
        self, encoder: nn.Module, num_relations: int, *, interaction: str = "transe", loss: str = "crossentropy"
    ):
        super().__init__()
        if not isinstance(num_relations, int) or num_relations < 1:
            raise ConfigError(f"num_relations must be a positive integer, got {num_relations!r}")
        self.encoder = encoder
        self.interaction_name, self.loss_name = interaction, loss
        self.interaction = kge_interaction(interaction)
        self.loss = kge_loss(loss)
        self.complex = bool(getattr(self.interaction, "is_complex", False))
        hidden = encoder.model.config.hidden_size if hasattr(encoder, "model") else encoder.config.hidden_size
        if self.complex and hidden % 2:
            raise ConfigError(f"complex interaction {interaction!r} needs an even hidden size, got {hidden}")
        self.relations = nn.Embedding(num_relations, hidden)
        nn.init.normal_(self.relations.weight, std=0.1)
        self.base_fingerprint = getattr(encoder, "base_fingerprint", None)

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) if self.complex else x.float()

    def score(self, heads: torch.Tensor, relations: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Scores every (head row, tail candidate) pair.

        Args:
            heads: ``(B, H)`` head embeddings.
            relations: ``(B,)`` relation indices.
            tails: ``(C, H)`` candidate tail embeddings.

        Returns:
            ``(B, C)`` scores (higher is more plausible).
        """
        r = self.relations(relations)  # (B, H)
        if self.complex:  # rotations: unit modulus, as PyKEEN's RotatE constrains its relations
            r = torch.view_as_real(torch.polar(torch.ones_like(r[..., ::2]), r[..., ::2]))
            r = r.reshape(relations.shape[0], -1)
        return self.interaction(
            self._view(heads)[:, None], self._view(r)[:, None], self._view(tails)[None, :]
        )  # (B, C)

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``(B, C)`` scores of a :class:`~.objectives.ContrastiveCollate` batch of phrase-level triple examples.

        The head representation is the encoder's embedding of the query text ``"(subject, relation)"``.
        """
        heads = pooled(self.encoder, batch["queries"])  # (B, H)
        tails = pooled(self.encoder, batch["candidates"])  # (C, H)
        return self.score(heads, batch["relations"], tails)

    def loss_fn(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """The training loop's ``loss_fn``: the PyKEEN loss over candidates, correct answers labelled 1."""
        if bool((batch["relations"] < 0).any()):
            raise ConfigError("a KGE head needs triple examples with relation indices (triple_examples)")
        scores = self(batch)
        return self.loss.process_lcwa_scores(scores.float(), batch["answers"].float())
