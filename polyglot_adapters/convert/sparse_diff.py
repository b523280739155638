"""Sparse weight differences in the house format: ``sparse_diff.json`` + ``sparse_diff.safetensors``.

This is where imported composable-sft diffs land until the sparse fine-tuning method has its own
adapter type. Per parameter, ``<key>.indices`` (int64, row-major flat, sorted, unique) and
``<key>.values``; keys are backbone-relative (``encoder.layer.0.output.dense.weight``) where the
parameter belongs to the backbone, model-relative otherwise (``cls.predictions.bias``). The JSON
holds the schema, the base fingerprint, each parameter's shape and entry count, where the diff
came from and the SHA-256 of the tensor file. Both files are written atomically, tensors first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn

from ..errors import CorruptArtifactError, MissingArtifactError, SchemaVersionError
from ..io import atomic_write_bytes, check_fingerprint, parse_verified
from .hosts import find_parameter, resolve_host

__all__ = ["DIFF_CONFIG", "DIFF_SCHEMA", "DIFF_WEIGHTS", "SparseDiff"]

DIFF_SCHEMA = "polyglot-adapters/sparse-diff"
DIFF_VERSION = 1
DIFF_CONFIG = "sparse_diff.json"
DIFF_WEIGHTS = "sparse_diff.safetensors"


@dataclasses.dataclass(frozen=True)
class SparseDiff:
    """Sparse differences to a base model's parameters.

    Attributes:
        base: Fingerprint of the base model.
        entries: Key -> ``(shape, indices, values)``; ``indices`` are sorted unique row-major flat
            positions (int64) and ``values`` the differences there.
        origin: Where the diff came from (JSON-ready).
    """

    base: dict[str, Any]
    entries: dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def nnz(self) -> int:
        """Number of changed entries over all parameters."""
        return sum(indices.numel() for _, indices, _ in self.entries.values())

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Writes the diff (tensor file first, then the JSON that vouches for it)."""
        tensors = {}
        for key, (_, indices, values) in self.entries.items():
            tensors[f"{key}.indices"], tensors[f"{key}.values"] = indices, values
        blob = st_save({k: v.contiguous() for k, v in tensors.items()})
        doc = {
            "schema": DIFF_SCHEMA,
            "schema_version": DIFF_VERSION,
            "base": self.base,
            "parameters": {k: {"shape": list(s), "nnz": i.numel()} for k, (s, i, _) in self.entries.items()},
            "converted_from": self.origin,
            "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        }
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / DIFF_WEIGHTS, blob)
        atomic_write_bytes(directory / DIFF_CONFIG, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
        return directory

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> SparseDiff:
        """Reads and verifies a diff written by :meth:`save`.

        Raises:
            MissingArtifactError, SchemaVersionError, CorruptArtifactError: Missing, foreign or altered files.
        """
        directory = Path(directory)
        path = directory / DIFF_CONFIG
        if not path.is_file():
            raise MissingArtifactError(f"{path}: missing; is {directory} a sparse diff written by convert?")
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise CorruptArtifactError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("schema") != DIFF_SCHEMA or doc.get("schema_version") != DIFF_VERSION:
            raise SchemaVersionError(f"{path}: not a {DIFF_SCHEMA!r} v{DIFF_VERSION} document")
        params, sha = doc.get("parameters"), doc.get("tensors_sha256")
        if not isinstance(params, dict) or not isinstance(doc.get("base"), dict) or not isinstance(sha, str):
            raise CorruptArtifactError(f"{path}: 'parameters', 'base' or 'tensors_sha256' is missing or mistyped")
        weights = directory / DIFF_WEIGHTS
        if not weights.is_file():
            raise MissingArtifactError(f"{weights}: missing; the diff is incomplete")
        tensors = parse_verified(weights, weights.read_bytes(), sha)
        entries = {}
        for key, info in params.items():
            indices, values = tensors.get(f"{key}.indices"), tensors.get(f"{key}.values")
            if indices is None or values is None or not isinstance(info, dict):
                raise CorruptArtifactError(f"{weights}: tensors of {key} are missing")
            entries[key] = (tuple(info.get("shape", ())), indices, values)
        return cls(base=doc["base"], entries=entries, origin=doc.get("converted_from") or {})

    @torch.no_grad()
    def apply(self, model: nn.Module, *, check_base: bool = True) -> Callable[[], None]:
        """Adds the differences to ``model``'s parameters in place (a plain host or an ``AdaptedModel``).

        Every parameter, shape, index and dtype is checked before anything changes.

        Returns:
            A function that restores the changed entries bit-exactly.

        Raises:
            BaseModelMismatchError: If ``model`` is another base (with ``check_base``).
            CorruptArtifactError: If a parameter is missing, or a shape or index does not fit.
        """
        host = resolve_host(model)
        if check_base:
            check_fingerprint(self.base, host.fingerprint, Path(self.origin.get("file", "sparse diff")))
        targets = []
        for key, (shape, indices, values) in self.entries.items():
            param = find_parameter(host.module, host.root + key)
            param = find_parameter(host.module, key) if param is None else param
            if param is None or tuple(param.shape) != shape:
                raise CorruptArtifactError(f"sparse diff: parameter {key} is missing or not of shape {shape}")
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= param.numel()):
                raise CorruptArtifactError(f"sparse diff: an index of {key} is out of range")
            targets.append((param, indices, values))
        saved = [(param, indices, param.detach().reshape(-1)[indices].clone()) for param, indices, _ in targets]
        for param, indices, values in targets:
            flat = param.data.view(-1)
            flat[indices] = flat[indices] + values.to(flat.dtype)

        @torch.no_grad()
        def revert() -> None:
            for param, indices, original in saved:
                param.data.view(-1)[indices] = original

        return revert
