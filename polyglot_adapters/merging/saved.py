"""A saved adapter held in memory: what merges read and write."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import AdapterConfig
from ..errors import BaseModelMismatchError, ConfigError
from ..io import fingerprint_mismatch, read_adapter_config, write_adapter

__all__ = [
    "MergeError",
    "SavedAdapter",
    "check_bases",
    "check_same_base",
    "natural_key",
    "read_all",
]


class MergeError(ConfigError):
    """The adapters or options of a merge do not fit together (methods, configs, ranks, weights)."""


@dataclasses.dataclass(frozen=True)
class SavedAdapter:
    """An adapter's name, config, base fingerprint and tensors, as in its saved directory.

    Attributes:
        name: Adapter name (the name it is attached under by default).
        config: Its configuration.
        base: The base-model fingerprint it was trained for.
        tensors: Site-key-prefixed parameter tensors, as saved.
        source: Where it was read from, for messages (``None`` if built in memory).
        extra: Further JSON-ready metadata saved beside the standard keys (e.g. merge provenance).
    """

    name: str
    config: AdapterConfig
    base: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    source: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> SavedAdapter:
        """Reads and verifies an adapter directory written by ``save_adapter`` or :meth:`save`.

        Raises:
            ArtifactError: If files are missing, altered or of an unknown schema.
            ConfigError: If the config is invalid.
        """
        meta, config, tensors = read_adapter_config(directory)
        return cls(name=meta["name"], config=config, base=meta["base"], tensors=tensors, source=str(directory))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Writes ``adapter.json`` + ``adapter.safetensors`` atomically; loadable with ``load_adapter``."""
        meta = {"name": self.name, "method": self.config.method, "config": self.config.to_dict(), "base": self.base}
        return write_adapter(directory, {**self.extra, **meta}, self.tensors)

    @property
    def label(self) -> str:
        """How messages name this adapter: its source directory, else its name."""
        return self.source or self.name


def read_all(adapters: Sequence[SavedAdapter | str | os.PathLike[str]]) -> list[SavedAdapter]:
    """Reads every path in ``adapters`` (adapters already in memory pass through).

    Raises:
        MergeError: If the sequence is empty.
    """
    if not adapters:
        raise MergeError("nothing to merge: give at least one adapter")
    return [a if isinstance(a, SavedAdapter) else SavedAdapter.read(a) for a in adapters]


def check_same_base(adapters: Sequence[SavedAdapter]) -> None:
    """Raises :class:`BaseModelMismatchError` naming two adapters trained for different bases."""
    check_bases([a.base for a in adapters], [a.label for a in adapters], "adapters")


def check_bases(bases: Sequence[Mapping[str, Any]], labels: Sequence[str], kind: str) -> None:
    """Raises :class:`BaseModelMismatchError` naming the first of ``labels`` whose base fingerprint differs.

    Args:
        bases: Base-model fingerprints, one per merged artifact.
        labels: How messages name each artifact.
        kind: What the artifacts are, for the message (``adapters``, ``sparse diffs``).
    """
    first = bases[0]
    for base, label in zip(bases[1:], labels[1:], strict=True):
        mismatch = fingerprint_mismatch(dict(base), dict(first))
        if mismatch is not None:
            raise BaseModelMismatchError(
                f"{label} was made for another base than {labels[0]} ({mismatch}); only {kind} of one base model merge"
            )


def natural_key(key: str) -> tuple[Any, ...]:
    """Sort key that orders ``layer.2`` before ``layer.10`` (the host's module order for block indices)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key))
