"""Triton implementations of the sparse fine-tuning kernels (CUDA; on CPU under ``TRITON_INTERPRET=1``).

Imported only by :mod:`polyglot_adapters.kernels.dispatch`, lazily, so importing the library
never needs Triton. Each function computes what its ``*_ref`` in
:mod:`polyglot_adapters.kernels.reference` specifies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

__all__ = ["sampled_dense_dense_triton", "scatter_add_triton", "sparse_delta_matmul_triton"]

_BLOCK = 1024
_BLOCK_K = 64
_BLOCK_N = 32


@triton.jit
def _scatter_add_kernel(flat_ptr, idx_ptr, val_ptr, scale, k, BLOCK: tl.constexpr, SCALED: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < k
    idx = tl.load(idx_ptr + offs, mask=live, other=0).to(tl.int64)
    val = tl.load(val_ptr + offs, mask=live, other=0.0)
    if SCALED:
        val = val * scale
    old = tl.load(flat_ptr + idx, mask=live, other=0.0)
    # Positions are unique within one diff, so plain loads and stores do not race.
    tl.store(flat_ptr + idx, old + val.to(old.dtype), mask=live)


def scatter_add_triton(
    flat: torch.Tensor, updates: Sequence[tuple[torch.Tensor, torch.Tensor, float]]
) -> torch.Tensor:
    """Adds several sparse differences to ``flat`` in place; see ``scatter_add_ref``.

    Each difference is one pass over its own entries only (diffs may overlap, so they run in order).
    """
    for indices, values, scale in updates:
        k = indices.numel()
        if k == 0:
            continue
        _scatter_add_kernel[(triton.cdiv(k, _BLOCK),)](
            flat, indices.contiguous(), values.contiguous(), float(scale), k, BLOCK=_BLOCK, SCALED=scale != 1
        )
    return flat


def gather_add_triton(flat: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Adds one sparse difference to ``flat`` in place, returning the replaced entries; see ``gather_add_ref``."""
    original = flat.index_select(0, indices)
    scatter_add_triton(flat, [(indices, values, 1.0)])
    return original


@triton.jit
def _sampled_dense_dense_kernel(
    g_ptr, x_ptr, rows_ptr, cols_ptr, acc_ptr, n_tokens, k, stride_g, stride_x,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    live_k = offs_k < k
    rows = tl.load(rows_ptr + offs_k, mask=live_k, other=0)
    cols = tl.load(cols_ptr + offs_k, mask=live_k, other=0)
    live = (offs_n < n_tokens)[:, None] & live_k[None, :]
    g = tl.load(g_ptr + offs_n[:, None] * stride_g + rows[None, :], mask=live, other=0.0)  # (BLOCK_N, BLOCK_K)
    x = tl.load(x_ptr + offs_n[:, None] * stride_x + cols[None, :], mask=live, other=0.0)  # (BLOCK_N, BLOCK_K)
    tl.atomic_add(acc_ptr + offs_k, tl.sum(g.to(tl.float32) * x.to(tl.float32), axis=0), mask=live_k)


def sampled_dense_dense_triton(
    grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``g[j] = sum_t grad_out[t, rows[j]] * x[t, cols[j]]``, accumulated in float32; see ``sampled_dense_dense_ref``.

    Args:
        grad_out: ``(N, out)``.
        x: ``(N, in)``.
        rows: ``(k,)`` int64.
        cols: ``(k,)`` int64.

    Returns:
        ``(k,)`` in the inputs' dtype.
    """
    grad_out, x = grad_out.contiguous(), x.contiguous()
    n_tokens, k = grad_out.shape[0], rows.numel()
    acc = torch.zeros(k, dtype=torch.float32, device=grad_out.device)
    if k and n_tokens:
        grid = (triton.cdiv(k, _BLOCK_K), triton.cdiv(n_tokens, _BLOCK_N))
        _sampled_dense_dense_kernel[grid](
            grad_out, x, rows, cols, acc, n_tokens, k, grad_out.stride(0), x.stride(0),
            BLOCK_K=_BLOCK_K, BLOCK_N=_BLOCK_N,
        )  # fmt: skip
    return acc.to(grad_out.dtype)


@triton.jit
def _sparse_matmul_kernel(
    x_ptr, rows_ptr, cols_ptr, val_ptr, acc_ptr, n_tokens, k, stride_x, stride_acc,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    offs_k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    live_k = offs_k < k
    rows = tl.load(rows_ptr + offs_k, mask=live_k, other=0)
    cols = tl.load(cols_ptr + offs_k, mask=live_k, other=0)
    vals = tl.load(val_ptr + offs_k, mask=live_k, other=0.0).to(tl.float32)
    live = (offs_n < n_tokens)[:, None] & live_k[None, :]
    x = tl.load(x_ptr + offs_n[:, None] * stride_x + cols[None, :], mask=live, other=0.0)  # (BLOCK_N, BLOCK_K)
    tl.atomic_add(acc_ptr + offs_n[:, None] * stride_acc + rows[None, :], x.to(tl.float32) * vals[None, :], mask=live)


def sparse_delta_matmul_triton(
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    shape: tuple[int, int],
    *,
    transpose: bool = False,
) -> torch.Tensor:
    """``x @ D.T`` (or ``x @ D``) for a sparse ``D``, accumulated in float32; see ``sparse_delta_matmul_ref``.

    Args:
        x: ``(N, in)``, or ``(N, out)`` with ``transpose``.
        rows: ``(k,)`` int64.
        cols: ``(k,)`` int64.
        values: ``(k,)``.
        shape: ``(out, in)`` of ``D``.
        transpose: Compute ``x @ D`` instead of ``x @ D.T``.

    Returns:
        ``(N, out)``, or ``(N, in)`` with ``transpose``, in ``x``'s dtype.
    """
    if transpose:
        rows, cols, shape = cols, rows, (shape[1], shape[0])
    x = x.contiguous()
    n_tokens, k = x.shape[0], rows.numel()
    acc = torch.zeros(n_tokens, shape[0], dtype=torch.float32, device=x.device)  # (N, out)
    if k and n_tokens:
        grid = (triton.cdiv(k, _BLOCK_K), triton.cdiv(n_tokens, _BLOCK_N))
        _sparse_matmul_kernel[grid](
            x, rows, cols, values, acc, n_tokens, k, x.stride(0), acc.stride(0), BLOCK_K=_BLOCK_K, BLOCK_N=_BLOCK_N
        )
    return acc.to(x.dtype)
