"""Tensor-level merge operators: weighted sum (task arithmetic), TIES and DARE.

They follow the definitions of PEFT's ``merge_utils`` (TIES: Yadav et al. 2023; DARE: Yu et al.
2023), so merging the same dense deltas here and with PEFT's ``add_weighted_adapter`` gives the
same result. TIES trimming keeps the ``int(density * numel)`` largest-magnitude entries of each
tensor (all entries tied at the cut, where PEFT's ``topk`` keeps an arbitrary subset of them);
the elected sign is that of the sum (``total``) or of the sign count (``frequency``), ties going
to ``+``; the disjoint merge averages the weighted entries that agree with it. DARE keeps each
entry with probability ``density`` and rescales by ``1 / density``, drawing one Bernoulli mask
per tensor, in order, from the given generator (the draws PEFT makes from the global one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["COMBINATIONS", "SIGN_METHODS", "combine", "keep_largest", "sparsify"]

COMBINATIONS = ("linear", "ties", "dare", "dare_ties")
SIGN_METHODS = ("total", "frequency")


def combine(
    tensors: Iterable[torch.Tensor],
    weights: Sequence[float],
    how: str,
    *,
    density: float = 1.0,
    sign_method: str = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Merges same-shaped tensors into one, streaming: linear merges hold one tensor at a time.

    Args:
        tensors: ``n`` tensors of one shape and dtype (any iterable, consumed once).
        weights: ``n`` weights.
        how: One of :data:`COMBINATIONS`.
        density: Fraction of entries kept per tensor by TIES trimming or DARE dropping (``(0, 1]``;
            1 keeps everything and, for DARE, draws nothing).
        sign_method: TIES sign election, one of :data:`SIGN_METHODS`.
        generator: Random source of the DARE masks.

    Returns:
        The merged tensor, same shape and dtype.
    """
    total: torch.Tensor | None = None
    kept: list[torch.Tensor] = []  # TIES needs every (sparsified) tensor again after the vote
    votes: torch.Tensor | None = None
    for tensor, weight in zip(tensors, weights, strict=True):
        tensor = sparsify(tensor, how, density, generator)
        if how in ("linear", "dare"):
            total = tensor * weight if total is None else total.add_(tensor * weight)
            continue
        kept.append(tensor)
        vote = tensor if sign_method == "total" else tensor.sign()
        votes = vote.clone() if votes is None else votes.add_(vote)
    if total is not None:
        return total
    assert votes is not None, "combine needs at least one tensor"
    majority = torch.where(votes >= 0, 1, -1).to(votes.dtype)
    count = torch.zeros_like(votes)
    total = torch.zeros_like(votes)
    for tensor, weight in zip(kept, weights, strict=True):
        agree = tensor * majority > 0  # the elected sign; pruned zeros never agree
        total.add_(torch.where(agree, tensor, 0), alpha=weight)
        count.add_(agree)
    return total / count.clamp(min=1)


def sparsify(tensor: torch.Tensor, how: str, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE: drop entries at random and rescale; TIES: keep the largest magnitudes; else unchanged."""
    if density >= 1 or how == "linear":
        return tensor
    if how in ("dare", "dare_ties"):
        if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
            # The same draws as bernoulli(full_like(tensor, density)) (PEFT's masks), 2-3x faster.
            keep = torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype) < density
        else:
            keep = torch.bernoulli(torch.full_like(tensor, density), generator=generator)
        return tensor * keep / density
    return keep_largest(tensor, int(density * tensor.numel()))


def keep_largest(tensor: torch.Tensor, k: int) -> torch.Tensor:
    """TIES trimming: ``tensor`` with all but its ``k`` largest magnitudes zeroed (entries tied at the cut kept)."""
    if k >= tensor.numel():
        return tensor
    if k <= 0:
        return torch.zeros_like(tensor)
    # The cut is the k-th largest magnitude (linear-time selection).
    magnitude = tensor.abs()
    rank = tensor.numel() - k  # 0-based position of the cut in ascending order
    flat = magnitude.reshape(-1)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        cut = float(np.partition(flat.numpy(), rank)[rank])  # about twice as fast as kthvalue on CPU
    else:
        cut = flat.kthvalue(rank + 1).values.item()
    return tensor * (magnitude >= cut)
