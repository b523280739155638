"""Resumable training checkpoints: trainable parameters and AdamW state as safetensors + JSON.

A checkpoint directory holds ``state.safetensors`` (tensors) and ``state.json`` (schema, step,
config, ... and the SHA-256 of the tensor file). It is written into a temporary sibling
directory, fsynced, then swapped in: the previous checkpoint is renamed to ``<name>.old``, the new
one renamed into place, and only then is ``.old`` removed. A kill at any moment therefore leaves
the previous complete checkpoint or the new one, never a half-written one; temporary leftovers of
a killed write are removed by the next write.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from ..errors import ConfigError, CorruptArtifactError
from ..io import atomic_write_bytes, atomic_write_json, parse_verified, staged_directory

__all__ = ["CHECKPOINT_SCHEMA", "check_run_record", "find_checkpoint", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_SCHEMA = "polyglot-adapters/train-checkpoint"
_STATE, _META = "state.safetensors", "state.json"


def write_checkpoint(
    directory: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Atomically replaces ``directory`` with a checkpoint holding ``tensors`` and ``meta``.

    Args:
        directory: The checkpoint directory (its parent is created if missing).
        tensors: Flat name -> tensor map (moved to CPU, made contiguous).
        meta: JSON-ready fields stored next to the schema tag and the tensor file's checksum.
    """
    directory = Path(directory)
    with staged_directory(directory, backup=f"{directory.name}.old") as tmp:
        blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
        atomic_write_bytes(tmp / _STATE, blob)
        doc = {"schema": CHECKPOINT_SCHEMA, "version": 1, **meta, "state_sha256": hashlib.sha256(blob).hexdigest()}
        atomic_write_json(tmp / _META, doc)


def find_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """Returns the checkpoint to resume from: ``directory``, or its ``.old`` copy after a kill mid-swap."""
    directory = Path(directory)
    if directory.exists():
        return directory
    old = directory.with_name(f"{directory.name}.old")
    return old if old.exists() else None


def read_checkpoint(directory: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads and verifies a checkpoint.

    Returns:
        The tensors (on CPU) and the JSON metadata.

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


def check_run_record(out: Path, record: dict[str, Any], what: str) -> None:
    """Refuses a run directory whose ``run.json`` records another run (resuming it would mix two runs).

    Args:
        out: The run directory.
        record: What this run would write to ``run.json`` (JSON-ready).
        what: The kind of run, for the message (e.g. ``"KG-adapter run"``).

    Raises:
        ConfigError: Naming the directory and what to do.
    """
    path = out / "run.json"
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{path}: unreadable ({err}); delete the run directory to start over") from None
    if saved != json.loads(json.dumps(record)):
        raise ConfigError(f"{out}: holds a {what} with other settings; pass another --out or delete it")
