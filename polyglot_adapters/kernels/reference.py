"""Pure-PyTorch specifications of the sparse fine-tuning kernels; also the CPU path.

A sparse difference to an ``(out, in)`` weight is a list of row-major flat positions
``indices`` (sorted, unique) and ``values``; entry ``j`` sits at ``(rows[j], cols[j]) =
divmod(indices[j], in)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "global_topk_ref",
    "sampled_dense_dense_ref",
    "scatter_add_ref",
    "sparse_delta_matmul_ref",
]

# Bound on the temporary (tokens x chunk) product of the sampled dense-dense kernel, in elements.
_SDD_BLOCK = 1 << 22
_BINS = 1 << 16


def scatter_add_ref(flat: torch.Tensor, updates: Sequence[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """Adds several sparse differences to a flat tensor in place, in order.

    Args:
        flat: ``(n,)`` contiguous tensor, changed in place.
        updates: ``(indices, values, scale)`` per difference; ``indices`` ``(k,)`` int32/int64 in
            ``[0, n)`` and unique within one difference, ``values`` ``(k,)``. Each entry adds
            ``scale * values`` rounded to ``flat``'s dtype; ``scale == 1`` adds ``values`` exactly
            as ``flat[indices] + values`` would.

    Returns:
        ``flat``.
    """
    for indices, values, scale in updates:
        delta = values.to(flat.dtype) if scale == 1 else (values * scale).to(flat.dtype)
        flat.index_add_(0, indices.long(), delta)
    return flat


def sparse_delta_matmul_ref(
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    shape: tuple[int, int],
    *,
    transpose: bool = False,
) -> torch.Tensor:
    """Multiplies by the sparse matrix ``D`` of ``shape`` with ``D[rows[j], cols[j]] = values[j]``.

    Args:
        x: ``(N, in)``, or ``(N, out)`` with ``transpose``.
        rows: ``(k,)`` int64 row of each entry, entries sorted row-major and unique.
        cols: ``(k,)`` int64 column of each entry.
        values: ``(k,)`` entries, same dtype as ``x``.
        shape: ``(out, in)`` of ``D``.
        transpose: Compute ``x @ D`` instead of ``x @ D.T``.

    Returns:
        ``x @ D.T`` ``(N, out)``, or ``x @ D`` ``(N, in)``; ``D`` is never made dense.
    """
    # The entries are valid by construction (checked when the mask was made), so skip the re-check.
    with torch.sparse.check_sparse_tensor_invariants(False):
        matrix = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, is_coalesced=True)  # (out, in)
    if transpose:
        matrix = matrix.t()  # (in, out)
    return torch.sparse.mm(matrix, x.t()).t()


def sampled_dense_dense_ref(
    grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """The gradient of the sparse entries: ``g[j] = sum_t grad_out[t, rows[j]] * x[t, cols[j]]``.

    This is ``(grad_out.T @ x)`` sampled at the entries, without building the dense product.

    Args:
        grad_out: ``(N, out)``.
        x: ``(N, in)``.
        rows: ``(k,)`` int64.
        cols: ``(k,)`` int64.

    Returns:
        ``(k,)`` in the inputs' dtype; temporaries stay below a few million elements.
    """
    tokens = max(grad_out.shape[0], 1)
    chunk = max(_SDD_BLOCK // tokens, 1)
    out = grad_out.new_empty(rows.shape[0])
    for start in range(0, rows.shape[0], chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        out[start : start + chunk] = (grad_out[:, r] * x[:, c]).sum(0)  # (N, chunk) -> (chunk,)
    return out


def _keys(scores: torch.Tensor) -> torch.Tensor:
    """Order-preserving int64 keys of ``|scores|`` (float32 bit patterns of non-negative numbers)."""
    return scores.detach().reshape(-1).float().abs().view(torch.int32).long()


def global_topk_ref(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Selects the ``k`` entries of largest magnitude over several tensors together.

    Radix selection on float32 bit patterns: one pass builds a histogram of the upper 16 bits,
    a second one of the lower 16 bits inside the bin that holds the ``k``-th entry, and a third
    collects the entries above the threshold (ties at the threshold go to the earliest tensors
    and positions). Extra memory is a few temporaries the size of the largest tensor, plus the
    ``k`` selected positions.

    Args:
        scores: Tensors of any shape; magnitudes are compared in float32.
        k: Number of entries to select, ``0 <= k <= total entries``; scores must not be NaN.

    Returns:
        Per tensor, the sorted row-major flat positions selected (int64).
    """
    device = scores[0].device if scores else torch.device("cpu")
    if k == 0:
        return [torch.empty(0, dtype=torch.long, device=device) for _ in scores]
    high = torch.zeros(_BINS, dtype=torch.long, device=device)
    for t in scores:
        high += torch.bincount(_keys(t) >> 16, minlength=_BINS)
    at_least = high.flip(0).cumsum(0).flip(0)  # at_least[b]: entries in bins >= b
    top_bin = int((at_least >= k).nonzero().max())
    above = int(at_least[top_bin] - high[top_bin])
    low = torch.zeros(_BINS, dtype=torch.long, device=device)
    for t in scores:
        keys = _keys(t)
        low += torch.bincount(keys[(keys >> 16) == top_bin] & 0xFFFF, minlength=_BINS)
    at_least_low = above + low.flip(0).cumsum(0).flip(0)
    low_bin = int((at_least_low >= k).nonzero().max())
    threshold = (top_bin << 16) | low_bin
    ties = k - int(at_least_low[low_bin] - low[low_bin])
    out = []
    for t in scores:
        keys = _keys(t)
        greater = (keys > threshold).nonzero().squeeze(1)
        equal = (keys == threshold).nonzero().squeeze(1)[:ties]
        ties -= equal.numel()
        out.append(torch.cat([greater, equal]).sort().values)
    return out
