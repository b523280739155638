"""Summaries of saved adapters (used by ``polyglot-adapters info``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .io import WEIGHTS_NAME, read_adapter_config

__all__ = ["describe_adapter"]


def describe_adapter(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and validates a saved adapter and returns a flat summary.

    Raises:
        ArtifactError: If the directory is missing, corrupted or of an unknown schema.
        ConfigError: If its config is invalid or its method unknown.
    """
    directory = Path(directory)
    meta, config, tensors = read_adapter_config(directory)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    return {
        "name": meta["name"],
        "method": config.method,
        "config": {k: v for k, v in config.to_dict().items() if k != "method"},
        "parameters": sum(t.numel() for t in tensors.values()),
        "tensors": len(tensors),
        "dtype": ",".join(dtypes),
        "file_bytes": (directory / WEIGHTS_NAME).stat().st_size,
        "schema_version": meta["schema_version"],
        "base": meta["base"],
    }
