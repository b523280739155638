"""Composable sparse fine-tuning (LT-SFT): sparse differences to linear weights, mergeable exactly.

The two-phase training lives in :mod:`polyglot_adapters.methods.sparse_ft.lt_sft` (it uses the
shared training loop, which is imported only there).
"""

from __future__ import annotations

from ...registry import MethodSpec, register_method
from .config import SparseFTConfig, decode_mask, encode_mask
from .diff import SparseDiff, SparseDiffError
from .layer import SparseDeltaLayer, SparseValuesLayer, build_layer, find_sites, sparse_linear
from .merge import average_diffs, is_sparse_diff, merge_diffs

__all__ = [
    "SparseDeltaLayer",
    "SparseDiff",
    "SparseDiffError",
    "SparseFTConfig",
    "SparseValuesLayer",
    "average_diffs",
    "decode_mask",
    "encode_mask",
    "is_sparse_diff",
    "merge_diffs",
    "sparse_linear",
]

register_method(
    MethodSpec(
        name="sparse_ft",
        config_cls=SparseFTConfig,
        prefix="sft_",
        find_sites=find_sites,
        build_layer=build_layer,
        mergeable=True,
    )
)
