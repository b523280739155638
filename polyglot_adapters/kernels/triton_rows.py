"""Triton version of the per-row gathered matmul (CUDA; on CPU under ``TRITON_INTERPRET=1``).

Imported only by :mod:`polyglot_adapters.kernels.dispatch`, lazily, so importing the library
never needs Triton. :func:`gathered_matmul_triton` computes what
:func:`polyglot_adapters.kernels.reference_rows.gathered_matmul_ref` specifies, accumulating in
float32. One program owns a tile of one row's tokens and a tile of output features: it reads
the row's adapter id once and multiplies by that adapter's weight tile, so rows of different
adapters share one launch (Punica's BGMV/SGMV idea, with tensor-core tiles over the tokens).
:func:`gathered_sparse_matmul_triton` does the same for stacked sparse differences
(``gathered_sparse_matmul_ref``): one program per tile of a row's tokens and of its adapter's entries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["gathered_matmul_triton", "gathered_sparse_matmul_triton"]


@triton.jit
def _gathered_matmul_kernel(
    x_ptr, w_ptr, idx_ptr, bias_ptr, scale_ptr, res_ptr, out_ptr, T, N, tiles_t,
    stride_xb, stride_xt, stride_xk, stride_wa, stride_wn, stride_wk, stride_ba,
    stride_rb, stride_rt, stride_rn, stride_ob, stride_ot,
    K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    row = (pid // tiles_t).to(tl.int64)
    offs_t = (pid % tiles_t) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    adapter = tl.load(idx_ptr + row)
    live = adapter >= 0
    adapter = tl.maximum(adapter, 0).to(tl.int64)
    live_t = (offs_t < T) & live
    live_n = (offs_n < N) & live
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    x_row = x_ptr + row * stride_xb
    w_adapter = w_ptr + adapter * stride_wa
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        live_k = offs_k < K
        x = tl.load(
            x_row + offs_t[:, None] * stride_xt + offs_k[None, :] * stride_xk,
            mask=live_t[:, None] & live_k[None, :],
            other=0.0,
        )  # (BLOCK_T, BLOCK_K)
        w = tl.load(
            w_adapter + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk,
            mask=live_k[:, None] & live_n[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_N)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + adapter * stride_ba + offs_n, mask=live_n, other=0.0).to(tl.float32)[None, :]
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + adapter).to(tl.float32)
    acc = tl.where(live, acc, 0.0)
    inside = (offs_t < T)[:, None] & (offs_n < N)[None, :]
    if HAS_RESIDUAL:
        res = res_ptr + row * stride_rb + offs_t[:, None] * stride_rt + offs_n[None, :] * stride_rn
        acc += tl.load(res, mask=inside, other=0.0).to(tl.float32)
    out = out_ptr + row * stride_ob + offs_t[:, None] * stride_ot + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=inside)


def _block(size: int, cap: int) -> int:
    """A power-of-two tile edge between 16 (``tl.dot``'s minimum) and ``cap``."""
    return max(16, min(cap, triton.next_power_of_2(max(size, 1))))


def gathered_matmul_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``out[b] = r[b] + s[a] * (x[b] @ weight[a].T + bias[a])`` for ``a = index[b]``; see ``gathered_matmul_ref``.

    Args:
        x: ``(B, T, K)``, any strides.
        weight: ``(n, N, K)``, any strides (converted to ``x``'s dtype if it differs).
        index: ``(B,)`` int64 in ``[-1, n)``.
        bias: ``(n, N)`` or ``None``.
        scale: ``(n,)`` or ``None``.
        residual: ``(B, T, N)`` or ``None``, any strides.

    Returns:
        ``(B, T, N)`` in ``x``'s dtype; float32 inputs multiply in full float32 (no TF32).
    """
    rows, tokens, k = x.shape
    n_out = weight.shape[1]
    weight = weight.to(x.dtype)
    out = torch.empty(rows, tokens, n_out, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    bias = bias.contiguous() if bias is not None else None
    scale = scale.contiguous() if scale is not None else None
    index = index.to(torch.int64).contiguous()
    block_t, block_n, block_k = _block(tokens, 64), _block(n_out, 64), _block(k, 32)
    tiles_t = triton.cdiv(tokens, block_t)
    grid = (rows * tiles_t, triton.cdiv(n_out, block_n))
    _gathered_matmul_kernel[grid](
        x, weight, index, bias if bias is not None else x, scale if scale is not None else x,
        residual if residual is not None else x, out, tokens, n_out, tiles_t,
        x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(1), weight.stride(2),
        bias.stride(0) if bias is not None else 0, *(residual.stride() if residual is not None else (0, 0, 0)),
        out.stride(0), out.stride(1),
        K=k, HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_RESIDUAL=residual is not None,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return out


@triton.jit
def _gathered_sparse_kernel(
    x_ptr, rows_ptr, cols_ptr, val_ptr, idx_ptr, acc_ptr, T, k, tiles_t,
    stride_xb, stride_xt, stride_ea, stride_ab, stride_at,
    BLOCK_T: tl.constexpr, BLOCK_J: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    row = (pid // tiles_t).to(tl.int64)
    offs_t = (pid % tiles_t) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    adapter = tl.load(idx_ptr + row)
    live_j = (offs_j < k) & (adapter >= 0)
    adapter = tl.maximum(adapter, 0).to(tl.int64)
    entry = adapter * stride_ea + offs_j
    rows = tl.load(rows_ptr + entry, mask=live_j, other=0)
    cols = tl.load(cols_ptr + entry, mask=live_j, other=0)
    vals = tl.load(val_ptr + entry, mask=live_j, other=0.0).to(tl.float32)
    live = (offs_t < T)[:, None] & live_j[None, :]
    x = tl.load(x_ptr + row * stride_xb + offs_t[:, None] * stride_xt + cols[None, :], mask=live, other=0.0)
    out = acc_ptr + row * stride_ab + offs_t[:, None] * stride_at + rows[None, :]
    tl.atomic_add(out, x.to(tl.float32) * vals[None, :], mask=live)


def gathered_sparse_matmul_triton(
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    n_out: int,
    *,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row sparse products accumulated in float32; see ``gathered_sparse_matmul_ref``.

    Args:
        x: ``(B, T, K)``.
        rows: ``(n, k)`` int64.
        cols: ``(n, k)`` int64.
        values: ``(n, k)``.
        index: ``(B,)`` int64 in ``[-1, n)``.
        n_out: ``N``.
        residual: ``(B, T, N)`` or ``None``.

    Returns:
        ``(B, T, N)`` in ``x``'s dtype.
    """
    x = x.contiguous()
    batch, tokens, _ = x.shape
    acc = (
        torch.zeros(batch, tokens, n_out, dtype=torch.float32, device=x.device)
        if residual is None
        else residual.to(torch.float32, copy=True).contiguous()
    )  # (B, T, N)
    k = rows.shape[1]
    if acc.numel() and k:
        rows, cols, values = rows.contiguous(), cols.contiguous(), values.contiguous()
        block_t = 16
        tiles_t = triton.cdiv(tokens, block_t)
        grid = (batch * tiles_t, triton.cdiv(k, 128))
        _gathered_sparse_kernel[grid](
            x, rows, cols, values, index.to(torch.int64).contiguous(), acc, tokens, k, tiles_t,
            x.stride(0), x.stride(1), rows.stride(0), acc.stride(0), acc.stride(1),
            BLOCK_T=block_t, BLOCK_J=128,
        )  # fmt: skip
    return acc.to(x.dtype)
