"""Per-row adapters in one pass, with autograd: the building blocks of the fused ``Route`` path.

Row ``b`` of a batch uses adapter ``index[b]`` of a stack (``-1``: none). Every product goes
through :mod:`polyglot_adapters.kernels.dispatch` (``gathered_matmul`` for dense weights,
``gathered_sparse_matmul`` for sparse differences: pure PyTorch on CPU, Triton on CUDA); the
backward pass is made of the same gathered products (for the input) and segmented sums (for
the weights, sampled at the entries for sparse ones), so routed batches train several adapters
at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from .dispatch import gathered_matmul, gathered_matmul_grads, gathered_sparse_matmul, gathered_sparse_values_grad

__all__ = ["bottleneck_rows", "gathered_linear", "lora_rows", "sparse_rows", "stack_padded"]


class _GatheredLinear(torch.autograd.Function):
    """``r[b] + s[a] * (x[b] @ weight[a].T + bias[a])`` per row; differentiable but for ``index`` and ``scale``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        index: torch.Tensor,
        scale: torch.Tensor | None,
        residual: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight, index, scale)
        ctx.has_bias = bias is not None
        return gathered_matmul(x, weight, index, bias=bias, scale=scale, residual=residual)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, index, scale = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = gathered_matmul(grad, weight.transpose(1, 2), index, scale=scale)  # (B, T, K)
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            grad_w, grad_b = gathered_matmul_grads(grad, x, index, weight.shape[0], scale=scale, bias=ctx.has_bias)
            grad_w, grad_b = grad_w.to(weight.dtype), grad_b.to(weight.dtype) if grad_b is not None else None
        return grad_x, grad_w, grad_b, None, None, grad if ctx.needs_input_grad[5] else None


def gathered_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row ``b`` through adapter ``a = index[b]``'s linear map: ``r[b] + s[a] * (x[b] @ weight[a].T + bias[a])``.

    Args:
        x: ``(B, T, K)``.
        weight: ``(n, N, K)`` stacked weights (differentiable).
        index: ``(B,)`` int64 in ``[-1, n)``; ``-1`` rows get no product (the residual or zeros).
        bias: ``(n, N)`` or ``None`` (differentiable).
        scale: ``(n,)`` constant factors or ``None``.
        residual: ``(B, T, N)`` added to the result (differentiable), or ``None``.

    Returns:
        ``(B, T, N)``.
    """
    return _GatheredLinear.apply(x, weight, bias, index, scale, residual)


def stack_padded(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stacks same-rank tensors along a new first dimension, zero-padding each to the largest shape.

    Differentiable: gradients flow back to each tensor (the padding gets none).

    Args:
        tensors: ``n`` tensors of shapes ``(d0_i, d1_i, ...)``.

    Returns:
        ``(n, max d0, max d1, ...)``.
    """
    shape = [max(sizes) for sizes in zip(*(t.shape for t in tensors), strict=True)]
    padded = []
    for t in tensors:
        pad = [p for i in reversed(range(t.ndim)) for p in (0, shape[i] - t.shape[i])]
        padded.append(F.pad(t, pad) if any(pad) else t)
    return torch.stack(padded)


def lora_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: torch.Tensor,
    index: torch.Tensor,
) -> torch.Tensor:
    """``y[b] + s[a] * x[b] @ A[a].T @ B[a].T`` for each row's LoRA ``a = index[b]`` (SGMV shrink, then expand).

    Args:
        x: ``(B, T, in)``.
        y: ``(B, T, out)``.
        lora_a: ``(n, r, in)`` stacked ``A`` (mixed ranks zero-padded to ``r``).
        lora_b: ``(n, out, r)`` stacked ``B``.
        scaling: ``(n,)``.
        index: ``(B,)`` int64 in ``[-1, n)``.

    Returns:
        ``(B, T, out)``.
    """
    low = gathered_linear(x, lora_a, index)  # (B, T, r)
    return gathered_linear(low, lora_b, index, scale=scaling, residual=y)


def bottleneck_rows(
    src: torch.Tensor,
    y: torch.Tensor,
    down: tuple[torch.Tensor, torch.Tensor],
    up: tuple[torch.Tensor, torch.Tensor],
    scaling: torch.Tensor,
    index: torch.Tensor,
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``y[b] + s[a] * up_a(act(down_a(src[b])))`` for each row's bottleneck ``a = index[b]``.

    Args:
        src: ``(B, T, hidden)``: what the placement reads (sub-layer output, input, or LayerNorm of both).
        y: ``(B, T, hidden)``.
        down: Stacked ``(n, m, hidden)`` weights and ``(n, m)`` biases (widths zero-padded to ``m``).
        up: Stacked ``(n, hidden, m)`` weights and ``(n, hidden)`` biases.
        scaling: ``(n,)``.
        index: ``(B,)`` int64 in ``[-1, n)``.
        act: Activation; padded units contribute nothing (their up-projection columns are zero).

    Returns:
        ``(B, T, hidden)``.
    """
    hidden = act(gathered_linear(src, down[0], index, bias=down[1]))  # (B, T, m)
    return gathered_linear(hidden, up[0], index, bias=up[1], scale=scaling, residual=y)


class _GatheredSparse(torch.autograd.Function):
    """Per-row sparse products, differentiable in ``x``, ``values`` (a sampled gradient) and ``residual``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        values: torch.Tensor,
        residual: torch.Tensor | None,
        rows: torch.Tensor,
        cols: torch.Tensor,
        index: torch.Tensor,
        n_out: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, values, rows, cols, index)
        return gathered_sparse_matmul(x, rows, cols, values, index, n_out, residual=residual)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, values, rows, cols, index = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = gathered_sparse_matmul(grad, cols, rows, values, index, x.shape[2])  # (B, T, K)
        if ctx.needs_input_grad[1]:
            grad_values = gathered_sparse_values_grad(grad, x, rows, cols, index).to(values.dtype)
        return grad_x, grad_values, grad if ctx.needs_input_grad[2] else None, None, None, None, None


def sparse_rows(
    x: torch.Tensor,
    y: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
) -> torch.Tensor:
    """``y[b] + x[b] @ D[a].T`` for each row's sparse difference ``D[a]``, ``a = index[b]``.

    Args:
        x: ``(B, T, in)``.
        y: ``(B, T, out)``.
        rows: ``(n, k)`` int64 output feature of each entry (padding 0).
        cols: ``(n, k)`` int64 input feature of each entry (padding 0).
        values: ``(n, k)`` differentiable entries (padding 0).
        index: ``(B,)`` int64 in ``[-1, n)``.

    Returns:
        ``(B, T, out)``; the values' gradient is sampled at the entries, never dense.
    """
    return _GatheredSparse.apply(x, values, y, rows, cols, index, y.shape[2])
