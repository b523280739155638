"""Pure-PyTorch specifications of the per-row (gathered) adapter kernels; also the CPU path.

A batch of ``B`` rows runs through ``n`` adapters at once: row ``b`` uses adapter ``index[b]``
(``-1``: no adapter, the row's contribution is zero). The adapters' weights are stacked along a
leading adapter dimension, zero-padded to a common shape (LoRA of mixed ranks, bottlenecks of
mixed widths); zero padding adds nothing to any product. This is Punica's BGMV ("batched
gather matrix-vector") formulation: every row gathers its own weight, so one pass serves every
adapter of the batch.

Sparse differences (LT-SFT) are stacked the same way: ``rows``, ``cols`` and ``values`` of shape
``(n, k)``, each adapter's entries padded with value 0 (at position ``(0, 0)``), which adds nothing.
"""

from __future__ import annotations

import torch

__all__ = [
    "gathered_matmul_grads_ref",
    "gathered_matmul_ref",
    "gathered_sparse_matmul_ref",
    "gathered_sparse_values_grad_ref",
    "row_scale_ref",
]

# Bound on the temporaries of the sparse per-row products (rows x tokens x entries), in elements.
_SPARSE_BLOCK = 1 << 22


def row_scale_ref(index: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """Each row's factor: ``scale[index[b]]`` (1 without ``scale``), and 0 for rows with ``index[b] == -1``.

    Args:
        index: ``(B,)`` int64 in ``[-1, n)``.
        scale: ``(n,)`` or ``None``.
        dtype: Dtype of the result.

    Returns:
        ``(B,)``.
    """
    live = index >= 0
    if scale is None:
        return live.to(dtype)
    return scale.to(dtype).index_select(0, index.clamp(min=0)) * live


def gathered_matmul_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row ``b`` times its own adapter ``a = index[b]``'s weight: ``r[b] + s[a] * (x[b] @ weight[a].T + bias[a])``.

    Args:
        x: ``(B, T, K)``: ``B`` rows of ``T`` tokens.
        weight: ``(n, N, K)``, any strides (a transposed view works).
        index: ``(B,)`` int64 adapter of each row in ``[-1, n)``; ``-1`` rows get no product (``r[b]`` or zeros).
        bias: ``(n, N)`` or ``None``.
        scale: ``(n,)`` per-adapter factor or ``None`` (1).
        residual: ``(B, T, N)`` added to the result (the adapted output ``y``), or ``None``.

    Returns:
        ``(B, T, N)`` in ``x``'s dtype, computed in ``x``'s dtype.
    """
    tokens = x.shape[1]
    safe = index.clamp(min=0)
    gathered = weight.to(x.dtype).index_select(0, safe)  # (B, N, K)
    n_out = gathered.shape[1]
    base = residual
    if scale is not None or not bool((index >= 0).all()):
        # The row factor goes on the smaller operand: x (B*T*K) or the gathered weights (B*N*K).
        factor = row_scale_ref(index, scale, x.dtype)[:, None, None]  # (B, 1, 1)
        if tokens <= n_out:
            x = x * factor
        else:
            gathered = gathered * factor
        if bias is not None:
            bias = bias.to(x.dtype).index_select(0, safe) * factor[:, 0]  # (B, N)
    elif bias is not None:
        bias = bias.to(x.dtype).index_select(0, safe)  # (B, N)
    if bias is not None:
        base = bias.unsqueeze(1) if base is None else base + bias.unsqueeze(1)
    if base is None:
        return torch.bmm(x, gathered.transpose(1, 2))  # (B, T, N)
    return torch.baddbmm(base, x, gathered.transpose(1, 2))


def gathered_matmul_grads_ref(
    grad: torch.Tensor,
    x: torch.Tensor,
    index: torch.Tensor,
    n: int,
    *,
    scale: torch.Tensor | None = None,
    bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of :func:`gathered_matmul_ref` for the stacked weight and bias (segmented sums over rows).

    ``grad_weight[a] = sum over rows b with index[b] == a of s[a] * grad[b].T @ x[b]`` and
    ``grad_bias[a] = sum of s[a] * grad[b]`` over those rows' tokens.

    Args:
        grad: ``(B, T, N)`` gradient of the output.
        x: ``(B, T, K)`` the forward input.
        index: ``(B,)`` int64 in ``[-1, n)``.
        n: Number of adapters in the stack.
        scale: ``(n,)`` or ``None``.
        bias: Whether to return the bias gradient.

    Returns:
        ``(n, N, K)`` and ``(n, N)`` (or ``None``), in ``grad``'s dtype.
    """
    factor = row_scale_ref(index, scale, grad.dtype)[:, None, None]
    scaled = grad * factor  # (B, T, N); -1 rows are zero and add nothing below
    safe = index.clamp(min=0)
    per_row = torch.bmm(scaled.transpose(1, 2), x.to(grad.dtype))  # (B, N, K)
    grad_weight = per_row.new_zeros(n, *per_row.shape[1:]).index_add_(0, safe, per_row)
    grad_bias = None
    if bias:
        sums = scaled.sum(1)  # (B, N)
        grad_bias = sums.new_zeros(n, sums.shape[1]).index_add_(0, safe, sums)
    return grad_weight, grad_bias


def _blocks(rows: int, tokens: int, entries: int) -> list[tuple[slice, slice]]:
    """Row and token slices whose ``rows x tokens x entries`` temporaries stay under ``_SPARSE_BLOCK``."""
    if entries * tokens <= _SPARSE_BLOCK:
        per_row = _SPARSE_BLOCK // max(entries * tokens, 1)
        return [(slice(b, b + per_row), slice(0, tokens)) for b in range(0, rows, per_row)]
    per_token = max(1, _SPARSE_BLOCK // max(entries, 1))
    return [(slice(b, b + 1), slice(t, t + per_token)) for b in range(rows) for t in range(0, tokens, per_token)]


def gathered_sparse_matmul_ref(
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    n_out: int,
    *,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row ``b`` times its adapter ``a``'s sparse matrix: ``out[b, t, rows[a, j]] += x[b, t, cols[a, j]] * v[a, j]``.

    Args:
        x: ``(B, T, K)``.
        rows: ``(n, k)`` int64 output feature of each entry (padding: 0).
        cols: ``(n, k)`` int64 input feature of each entry (padding: 0).
        values: ``(n, k)`` entries (padding: 0).
        index: ``(B,)`` int64 adapter of each row in ``[-1, n)``; ``-1`` rows get nothing.
        n_out: ``N``, the output width.
        residual: ``(B, T, N)`` to add to, or ``None`` (zeros).

    Returns:
        ``(B, T, N)`` in ``x``'s dtype; no sparse matrix is made dense, temporaries stay bounded.
    """
    batch, tokens, _ = x.shape
    safe = index.clamp(min=0)
    vals = values.to(x.dtype).index_select(0, safe) * (index >= 0).to(x.dtype)[:, None]  # (B, k)
    r, c = rows.index_select(0, safe), cols.index_select(0, safe)  # (B, k)
    out = x.new_zeros(batch, tokens, n_out) if residual is None else residual.to(x.dtype).clone()
    entries = vals.shape[1]
    for rb, tb in _blocks(batch, tokens, entries):
        xs = x[rb, tb]  # (b, t, K)
        shape = (xs.shape[0], xs.shape[1], entries)
        picked = torch.gather(xs, 2, c[rb, None, :].expand(shape))  # (b, t, k)
        out[rb, tb].scatter_add_(2, r[rb, None, :].expand(shape), picked * vals[rb, None, :])
    return out


def gathered_sparse_values_grad_ref(
    grad: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """Gradient of :func:`gathered_sparse_matmul_ref` for ``values``, summed over each adapter's rows.

    ``g[a, j] = sum over rows b with index[b] == a and tokens t of grad[b, t, rows[a, j]] * x[b, t, cols[a, j]]``.

    Args:
        grad: ``(B, T, N)``.
        x: ``(B, T, K)``.
        rows: ``(n, k)`` int64.
        cols: ``(n, k)`` int64.
        index: ``(B,)`` int64 in ``[-1, n)``.

    Returns:
        ``(n, k)`` in ``grad``'s dtype.
    """
    batch, tokens, _ = grad.shape
    safe = index.clamp(min=0)
    r, c = rows.index_select(0, safe), cols.index_select(0, safe)  # (B, k)
    entries = r.shape[1]
    per_row = grad.new_zeros(batch, entries)
    for rb, tb in _blocks(batch, tokens, entries):
        shape = (grad[rb, tb].shape[0], grad[rb, tb].shape[1], entries)
        g = torch.gather(grad[rb, tb], 2, r[rb, None, :].expand(shape))  # (b, t, k)
        xs = torch.gather(x[rb, tb].to(grad.dtype), 2, c[rb, None, :].expand(shape))  # (b, t, k)
        per_row[rb] += (g * xs).sum(1)
    per_row *= (index >= 0).to(grad.dtype)[:, None]
    return per_row.new_zeros(rows.shape).index_add_(0, safe, per_row)
