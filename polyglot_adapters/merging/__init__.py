"""Merging adapters: checkpoint averages, weighted / TIES / DARE merges, per-language bundles.

Example:
    >>> from polyglot_adapters.merging import average_checkpoints, merge_adapters, merge_per_language
    >>> average_checkpoints(["run/step-800", "run/step-900", "run/step-1000"]).save("out/avg")
    >>> merge_adapters(["qa", "ner"], how="ties", weights=[0.5, 0.5], density=0.2, rank="max").save("out/mix")
    >>> merge_per_language("run/metrics.jsonl", "out/all", metric="valid_wer", checkpoints="step-{step}/{language}")
"""

from __future__ import annotations

from .merge import average_checkpoints, ema_weights, merge_adapters
from .ops import COMBINATIONS, SIGN_METHODS, combine
from .per_language import Selection, load_bundle, merge_per_language, read_bundle, select_best, write_bundle
from .saved import MergeError, SavedAdapter

__all__ = [
    "COMBINATIONS",
    "SIGN_METHODS",
    "MergeError",
    "SavedAdapter",
    "Selection",
    "average_checkpoints",
    "combine",
    "ema_weights",
    "load_bundle",
    "merge_adapters",
    "merge_per_language",
    "read_bundle",
    "select_best",
    "write_bundle",
]
