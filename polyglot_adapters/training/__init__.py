"""The training loop shared by every objective (adapters, heads, sparse fine-tuning, ...), and language adapters."""

from __future__ import annotations

from .checkpoint import read_checkpoint, write_checkpoint
from .config import TrainConfig
from .language_adapter import (
    LanguageAdapterResult,
    default_masked_lm,
    language_adapter_config,
    language_adapter_train_config,
    load_masked_lm,
    train_language_adapter,
)
from .loop import TrainResult, eval_mode, train

__all__ = [
    "LanguageAdapterResult",
    "TrainConfig",
    "TrainResult",
    "default_masked_lm",
    "eval_mode",
    "language_adapter_config",
    "language_adapter_train_config",
    "load_masked_lm",
    "read_checkpoint",
    "train",
    "train_language_adapter",
    "write_checkpoint",
]
