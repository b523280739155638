"""Resumable training checkpoints: trainable parameters and AdamW state as safetensors + JSON.

A checkpoint is written into a temporary sibling directory, fsynced, then renamed over the old
one (the old one is moved aside first and removed last), so a kill at any moment leaves either
the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from ..errors import CorruptArtifactError
from ..io import atomic_write_bytes, parse_verified

__all__ = ["CHECKPOINT_SCHEMA", "find_checkpoint", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_SCHEMA = "polyglot-adapters/train-checkpoint"
_STATE, _META = "state.safetensors", "state.json"


def write_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically replaces ``directory`` with a checkpoint holding ``tensors`` and ``meta``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    atomic_write_bytes(tmp / _STATE, blob)
    doc = {"schema": CHECKPOINT_SCHEMA, "version": 1, **meta, "state_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_bytes(tmp / _META, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    old = directory.with_name(f"{directory.name}.old")
    if directory.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(directory: Path) -> Path | None:
    """Returns the checkpoint to resume from: ``directory``, or its ``.old`` copy after a crash mid-swap."""
    directory = Path(directory)
    if directory.exists():
        return directory
    old = directory.with_name(f"{directory.name}.old")
    return old if old.exists() else None


def read_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads and verifies a checkpoint.

    Raises:
        CorruptArtifactError: If a file is missing, malformed or does not match its checksum.
    """
    directory = Path(directory)
    try:
        doc = json.loads((directory / _META).read_bytes().decode("utf-8"))
        blob = (directory / _STATE).read_bytes()
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptArtifactError(f"{directory}: unreadable checkpoint ({err}); delete it to start over") from None
    if not isinstance(doc, dict) or doc.get("schema") != CHECKPOINT_SCHEMA or doc.get("version") != 1:
        raise CorruptArtifactError(f"{directory}: not a version-1 training checkpoint; delete it to start over")
    return parse_verified(directory / _STATE, blob, str(doc.get("state_sha256"))), doc
