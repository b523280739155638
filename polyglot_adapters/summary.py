"""Summaries of saved adapters (used by ``polyglot-adapters info``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import config_from_dict
from .errors import ConfigError
from .io import CONFIG_NAME, WEIGHTS_NAME, read_adapter

__all__ = ["describe_adapter"]


def describe_adapter(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and validates a saved adapter and returns a flat summary.

    Raises:
        ArtifactError: If the directory is missing, corrupted or of an unknown schema.
        ConfigError: If its config is invalid or its method unknown.
    """
    directory = Path(directory)
    meta, tensors = read_adapter(directory)
    try:
        config = config_from_dict(meta["config"])
    except ConfigError as err:
        raise type(err)(f"{directory / CONFIG_NAME}: {err}") from None
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
