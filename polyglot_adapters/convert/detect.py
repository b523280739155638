"""What a checkpoint on disk is, judged by its files' contents rather than their names."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, CorruptArtifactError, MissingArtifactError
from ..io import SCHEMA

__all__ = [
    "FORMATS",
    "ConversionError",
    "Detected",
    "UnsafeArtifactError",
    "detect_format",
    "read_json",
    "sniff",
]

FORMATS = ("polyglot", "peft", "adapters", "composable-sft")
_MAX_JSON = 16 * 1024 * 1024


class ConversionError(ArtifactError):
    """A checkpoint cannot be converted (unknown format, unsupported feature, mismatched base)."""


class UnsafeArtifactError(CorruptArtifactError):
    """A file would need unrestricted unpickling (arbitrary code) to be read; it is refused."""


@dataclasses.dataclass(frozen=True)
class Detected:
    """A recognised checkpoint.

    Attributes:
        format: One of :data:`FORMATS`.
        config: Its JSON description (``None`` for composable-sft, which has none).
        document: The parsed JSON of ``config``.
        tensors: Its tensor files by kind: ``safetensors`` or ``torch`` (zip or pickle archives).
    """

    format: str
    config: Path | None
    document: dict[str, Any] | None
    tensors: dict[str, list[Path]]


def sniff(path: Path) -> str:
    """Classifies a file by its first bytes: ``json``, ``safetensors``, ``torch`` (zip/pickle) or ``unknown``."""
    with path.open("rb") as handle:
        head = handle.read(16)
    size = path.stat().st_size
    if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "unknown"


def read_json(path: Path) -> dict[str, Any]:
    """Parses a JSON object file (at most 16 MiB).

    Raises:
        CorruptArtifactError: If it is too large, not UTF-8 JSON or not an object.
    """
    if path.stat().st_size > _MAX_JSON:
        raise CorruptArtifactError(f"{path}: JSON file larger than 16 MiB; not a checkpoint description")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise CorruptArtifactError(f"{path}: expected a JSON object")
    return doc


def _kind_of_document(doc: dict[str, Any]) -> str | None:
    if doc.get("schema") == SCHEMA:
        return "polyglot"
    if isinstance(doc.get("peft_type"), str):
        return "peft"
    config = doc.get("config")
    version = doc.get("version")
    if isinstance(config, dict) and isinstance(version, str) and version.startswith("adapters."):
        # AdapterHub writes head_config.json beside adapter_config.json in the same shape.
        return None if "head_type" in config else "adapters"
    return None


def detect_format(path: str | os.PathLike[str]) -> Detected:
    """Recognises a PEFT, AdapterHub, composable-sft or polyglot-adapters checkpoint.

    Args:
        path: A checkpoint directory, or a composable-sft diff file.

    Raises:
        MissingArtifactError: If the path does not exist.
        ConversionError: If no known format (or more than one) is recognised.
    """
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path}: no such file or directory")
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    kinds: dict[str, list[Path]] = {}
    for file in files:
        kinds.setdefault(sniff(file), []).append(file)
    found = []
    for file in kinds.get("json", []):
        doc = read_json(file)
        kind = _kind_of_document(doc)
        if kind is not None:
            found.append((kind, file, doc))
    kinds_found = sorted({kind for kind, _, _ in found})
    if len(kinds_found) > 1:
        raise ConversionError(f"{path}: holds descriptions of several formats {kinds_found}")
    tensors = {k: v for k, v in kinds.items() if k in ("safetensors", "torch")}
    if found:
        kind, file, doc = found[0]
        if len(found) > 1:
            raise ConversionError(f"{path}: holds several {kind} descriptions; keep one checkpoint per directory")
        return Detected(kind, file, doc, tensors)
    if "torch" in tensors:
        return Detected("composable-sft", None, None, tensors)
    raise ConversionError(
        f"{path}: not a recognised checkpoint (no PEFT, AdapterHub or polyglot-adapters description by content, "
        "no torch archive for composable-sft)"
    )
