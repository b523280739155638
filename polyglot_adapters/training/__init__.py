"""The training loop shared by every objective (adapters, heads, sparse fine-tuning, ...)."""

from __future__ import annotations

from .checkpoint import read_checkpoint, write_checkpoint
from .config import TrainConfig
from .loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "read_checkpoint", "train", "write_checkpoint"]
