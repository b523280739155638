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

from .reference import global_topk_ref, sampled_dense_dense_ref, scatter_add_ref, sparse_delta_matmul_ref

__all__ = ["global_topk", "sampled_dense_dense", "scatter_add_", "sparse_delta_matmul"]


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
