"""The one place that picks a kernel implementation for a tensor's device.

CUDA tensors of 16- or 32-bit floats use the Triton kernels when Triton is installed (imported lazily, on first use);
everything else runs the pure-PyTorch references, which are the specification and the CPU path.
Mask selection (:func:`global_topk`) is histogram work that PyTorch already runs well on
every device, so it has no separate fast path.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import ModuleType

import torch

from .reference import (
    gather_add_ref,
    global_topk_ref,
    sampled_dense_dense_ref,
    scatter_add_ref,
    sparse_delta_matmul_ref,
)
from .reference_rows import (
    gathered_matmul_grads_ref,
    gathered_matmul_ref,
    gathered_sparse_matmul_ref,
    gathered_sparse_values_grad_ref,
)

__all__ = [
    "gather_add_",
    "gathered_matmul",
    "gathered_matmul_grads",
    "gathered_sparse_matmul",
    "gathered_sparse_values_grad",
    "global_topk",
    "sampled_dense_dense",
    "scatter_add_",
    "sparse_delta_matmul",
]


@functools.cache
def _triton() -> ModuleType | None:
    """The Triton kernels module, or ``None`` when Triton is not installed."""
    try:
        from . import triton_sparse
    except ImportError:
        return None
    return triton_sparse


_FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _fast(tensor: torch.Tensor) -> ModuleType | None:
    """The Triton module for CUDA tensors of a type it accumulates exactly enough (float32 accumulation)."""
    return _triton() if tensor.is_cuda and tensor.dtype in _FAST_DTYPES else None


def scatter_add_(flat: torch.Tensor, updates: Sequence[tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    """Adds several sparse differences to ``flat`` in place; see :func:`.reference.scatter_add_ref`."""
    fast = _fast(flat)
    return fast.scatter_add_triton(flat, updates) if fast else scatter_add_ref(flat, updates)


def gather_add_(flat: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Adds one sparse difference in place and returns the replaced entries; see :func:`.reference.gather_add_ref`."""
    fast = _fast(flat)
    return fast.gather_add_triton(flat, indices, values) if fast else gather_add_ref(flat, indices, values)


def sparse_delta_matmul(
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    shape: tuple[int, int],
    *,
    transpose: bool = False,
) -> torch.Tensor:
    """``x @ D.T`` (or ``x @ D``) for a sparse ``D``; see :func:`.reference.sparse_delta_matmul_ref`."""
    fast = _fast(x)
    if fast:
        return fast.sparse_delta_matmul_triton(x, rows, cols, values, shape, transpose=transpose)
    return sparse_delta_matmul_ref(x, rows, cols, values, shape, transpose=transpose)


def sampled_dense_dense(
    grad_out: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``(grad_out.T @ x)[rows, cols]`` without the dense product; see :func:`.reference.sampled_dense_dense_ref`."""
    fast = _fast(grad_out)
    return (
        fast.sampled_dense_dense_triton(grad_out, x, rows, cols)
        if fast
        else sampled_dense_dense_ref(grad_out, x, rows, cols)
    )


def global_topk(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Global top-``k`` magnitudes over several tensors; see :func:`.reference.global_topk_ref`."""
    return global_topk_ref(scores, k)


# ---------------------------------------------------------------- per-row (gathered) adapter kernels


@functools.cache
def _triton_rows() -> ModuleType | None:
    """The per-row Triton kernels module, or ``None`` when Triton is not installed."""
    try:
        from . import triton_rows
    except ImportError:
        return None
    return triton_rows


def gathered_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    index: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each row times its own adapter's weight; see :func:`.reference_rows.gathered_matmul_ref`."""
    fast = _triton_rows() if x.is_cuda and x.dtype in _FAST_DTYPES else None
    if fast:
        return fast.gathered_matmul_triton(x, weight, index, bias=bias, scale=scale, residual=residual)
    return gathered_matmul_ref(x, weight, index, bias=bias, scale=scale, residual=residual)


def gathered_matmul_grads(
    grad: torch.Tensor,
    x: torch.Tensor,
    index: torch.Tensor,
    n: int,
    *,
    scale: torch.Tensor | None = None,
    bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stacked weight (and bias) gradients of :func:`gathered_matmul`; see ``gathered_matmul_grads_ref``.

    One batched matmul and one ``index_add`` on every device: both are already single kernels.
    """
    return gathered_matmul_grads_ref(grad, x, index, n, scale=scale, bias=bias)


def gathered_sparse_matmul(
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    n_out: int,
    *,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each row times its own adapter's sparse matrix; see :func:`.reference_rows.gathered_sparse_matmul_ref`."""
    fast = _triton_rows() if x.is_cuda and x.dtype in _FAST_DTYPES else None
    if fast:
        return fast.gathered_sparse_matmul_triton(x, rows, cols, values, index, n_out, residual=residual)
    return gathered_sparse_matmul_ref(x, rows, cols, values, index, n_out, residual=residual)


def gathered_sparse_values_grad(
    grad: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """Gradient of the stacked sparse values; see :func:`.reference_rows.gathered_sparse_values_grad_ref`."""
    return gathered_sparse_values_grad_ref(grad, x, rows, cols, index)
