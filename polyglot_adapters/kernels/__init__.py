"""Sparse fine-tuning kernels: pure-PyTorch references (the CPU path) behind one dispatch point."""

from __future__ import annotations

from .dispatch import gather_add_, global_topk, sampled_dense_dense, scatter_add_, sparse_delta_matmul

__all__ = ["gather_add_", "global_topk", "sampled_dense_dense", "scatter_add_", "sparse_delta_matmul"]
