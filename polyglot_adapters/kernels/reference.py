"""Pure-PyTorch specifications of the sparse fine-tuning kernels; also the CPU path.

A sparse difference to an ``(out, in)`` weight is a list of row-major flat positions
``indices`` (sorted, unique) and ``values``; entry ``j`` sits at ``(rows[j], cols[j]) =
divmod(indices[j], in)``.
"""

from __future__ import annotations

import sys
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
# A gather or sparse product costs about this many times a dense matrix product per element (CPU): above
# a density of 1/_GATHER_COST the kernels work on dense blocks.
_GATHER_COST = 400


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


def gather_add_ref(flat: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Adds one sparse difference to a flat tensor in place and returns the entries it replaced.

    One gather and one conflict-free copy per matrix: on CPU about 0.7x the time of a separate
    gather (to keep the originals) followed by ``index_add_``.

    Args:
        flat: ``(n,)`` contiguous tensor, changed in place.
        indices: ``(k,)`` int64, unique, in ``[0, n)``.
        values: ``(k,)``, rounded to ``flat``'s dtype and added as ``flat[indices] + values`` would.

    Returns:
        ``(k,)`` copy of ``flat[indices]`` before the addition (``index_copy_`` it back to revert bit-exactly).
    """
    original = flat.index_select(0, indices)
    flat.index_copy_(0, indices, original + values.to(flat.dtype))
    return original


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
        ``x @ D.T`` ``(N, out)``, or ``x @ D`` ``(N, in)``. ``D`` is made dense (a temporary the
        size of the weight) only when it holds more than 1/400 of its entries, where a dense
        product is faster on CPU than sparse arithmetic.
    """
    if rows.shape[0] * _GATHER_COST >= shape[0] * shape[1]:
        # Dense enough that one matrix product beats sparse arithmetic (about 1/500 the cost per element).
        dense = values.new_zeros(shape[0] * shape[1]).index_put_((rows * shape[1] + cols,), values)
        matrix = dense.view(shape)  # (out, in)
        return x @ matrix if transpose else x @ matrix.T
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

    This is ``(grad_out.T @ x)`` sampled at the entries, never built whole. Entries sorted by
    row are taken in blocks of rows: a block holding enough entries is one dense product of
    ``(rows, in)`` (a matrix product costs about 1/500 of a gather per element on CPU), a sparse
    block gathers its entries' columns. Unsorted entries are always gathered.

    Args:
        grad_out: ``(N, out)``.
        x: ``(N, in)``.
        rows: ``(k,)`` int64.
        cols: ``(k,)`` int64.

    Returns:
        ``(k,)`` in the inputs' dtype; temporaries stay below a few million elements.
    """
    k, n_out, n_in = rows.shape[0], grad_out.shape[1], x.shape[1]
    out = grad_out.new_empty(k)
    if k == 0:
        return out
    if k > 1 and not bool((rows[1:] >= rows[:-1]).all()):
        _gather_into(out, grad_out, x, rows, cols)
        return out
    step = max(_SDD_BLOCK // max(n_in, 1), 1)
    edges = torch.arange(0, n_out + step, step, device=rows.device).clamp_(max=n_out)
    bounds = torch.searchsorted(rows, edges).tolist()  # entries of rows [edges[b], edges[b + 1])
    for b in range(len(bounds) - 1):
        start, end = bounds[b], bounds[b + 1]
        if start == end:
            continue
        r0, r1 = int(edges[b]), int(edges[b + 1])
        if (end - start) * _GATHER_COST >= (r1 - r0) * n_in:
            block = grad_out[:, r0:r1].T @ x  # (r1 - r0, in)
            out[start:end] = block.view(-1)[(rows[start:end] - r0) * n_in + cols[start:end]]
        else:
            _gather_into(out[start:end], grad_out, x, rows[start:end], cols[start:end])
    return out


def _gather_into(
    out: torch.Tensor, grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> None:
    """``out[j] = sum_t grad_out[t, rows[j]] * x[t, cols[j]]`` by gathering, in chunks of entries."""
    chunk = max(_SDD_BLOCK // max(grad_out.shape[0], 1), 1)
    for start in range(0, rows.shape[0], chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        out[start : start + chunk] = (grad_out[:, r] * x[:, c]).sum(0)  # (N, chunk) -> (chunk,)


def _high_bins(scores: torch.Tensor) -> torch.Tensor:
    """The upper 16 bits of the float32 bit pattern of ``|scores|``, flat: an order-preserving coarse key."""
    flat = scores.detach().reshape(-1).float()
    if sys.byteorder == "little":
        return flat.view(torch.int16)[1::2] & 0x7FFF  # the high half of each float, sign cleared: no int32 copy
    return (flat.view(torch.int32) >> 16) & 0x7FFF


def _as_float(bits: int) -> float:
    """The float32 whose bit pattern is ``bits``."""
    return torch.tensor(bits, dtype=torch.int32).view(torch.float32).item()


def global_topk_ref(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Selects the ``k`` entries of largest magnitude over several tensors together.

    Radix selection on float32 bit patterns (order-preserving for non-negative floats): one pass
    builds a histogram of the upper 16 bits of every ``|score|``; a second pass keeps, per
    tensor, the positions whose upper bits reach the bin that holds the ``k``-th entry (the
    selection plus that bin), and a histogram of the lower 16 bits inside that bin fixes the
    exact threshold. Ties at the threshold go to the earliest tensors and positions. Extra
    memory is a few temporaries the size of the largest tensor plus the candidates (about
    ``k`` positions and magnitudes).

    Args:
        scores: Tensors of any shape; magnitudes are compared in float32.
        k: Number of entries to select, ``0 <= k <= total entries``; scores must not be NaN.

    Returns:
        Per tensor, the sorted row-major flat positions selected (int64).

    Raises:
        ValueError: If ``k`` is negative or exceeds the number of entries.
    """
    total = sum(t.numel() for t in scores)
    if not 0 <= k <= total:
        raise ValueError(f"cannot select {k} entries out of {total}; k must be between 0 and the number of entries")
    device = scores[0].device if scores else torch.device("cpu")
    if k == 0:
        return [torch.empty(0, dtype=torch.long, device=device) for _ in scores]
    high = torch.zeros(_BINS // 2, dtype=torch.long, device=device)
    for t in scores:
        high += torch.bincount(_high_bins(t), minlength=_BINS // 2)
    at_least = high.flip(0).cumsum(0).flip(0)  # at_least[b]: entries in bins >= b
    top_bin = int((at_least >= k).nonzero().max())
    above = int(at_least[top_bin] - high[top_bin])
    # Candidates: every entry at or above the top bin, or only those above it when the bin is too
    # large to hold (e.g. most scores zero); then a third pass finds the chosen ones inside it.
    keep_bin = int(high[top_bin]) <= max(k, max(t.numel() for t in scores))
    lower, upper = _as_float(top_bin << 16), _as_float((top_bin + 1) << 16)
    candidates = []
    low = torch.zeros(_BINS, dtype=torch.long, device=device)
    for t in scores:
        magnitude = t.detach().reshape(-1).float().abs()
        where = (magnitude >= (lower if keep_bin else upper)).nonzero().squeeze(1)
        bits = magnitude[where].view(torch.int32)
        candidates.append((where, bits))
        if keep_bin:
            inside = bits[bits < (top_bin + 1) << 16]
        else:
            inside = magnitude[(magnitude >= lower) & (magnitude < upper)].view(torch.int32)
        low += torch.bincount((inside & 0xFFFF).long(), minlength=_BINS)
    at_least_low = above + low.flip(0).cumsum(0).flip(0)
    low_bin = int((at_least_low >= k).nonzero().max())
    threshold = (top_bin << 16) | low_bin
    ties = k - int(at_least_low[low_bin] - low[low_bin])
    out = []
    for t, (where, bits) in zip(scores, candidates, strict=True):
        if not keep_bin:
            magnitude = t.detach().reshape(-1).float().abs()
            chosen = (magnitude >= _as_float(threshold)) & (magnitude < upper)
            where = torch.cat([where, chosen.nonzero().squeeze(1)])
            bits = torch.cat([bits, magnitude[where[bits.numel() :]].view(torch.int32)])
        keep = bits > threshold
        equal = (bits == threshold).nonzero().squeeze(1)[:ties]
        keep[equal] = True
        ties -= equal.numel()
        # Positions come sorted from nonzero (the third-pass ones after the candidates: sort then).
        out.append(where[keep] if keep_bin else where[keep].sort().values)
    return out
