"""Adapter directories: ``adapter.json`` + ``adapter.safetensors``, written atomically, never pickled.

``adapter.json`` holds the schema name and version, the adapter's name and method, its config,
the base-model fingerprint and the SHA-256 of the tensor file, so a truncated or altered tensor
file is caught before it is parsed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import AdapterConfig, config_from_dict
from .errors import BaseModelMismatchError, ConfigError, CorruptArtifactError, MissingArtifactError, SchemaVersionError
from .interfaces import HostInterface

__all__ = [
    "CONFIG_NAME",
    "SCHEMA",
    "SCHEMA_VERSION",
    "WEIGHTS_NAME",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_fingerprint",
    "fingerprint",
    "fingerprint_mismatch",
    "parse_verified",
    "pin_weights_probe",
    "read_adapter",
    "read_adapter_config",
    "read_meta",
    "staged_directory",
    "unpin_weights_probe",
    "weights_probe",
    "write_adapter",
]

SCHEMA = "polyglot-adapters/adapter"
SCHEMA_VERSION = 1
CONFIG_NAME = "adapter.json"
WEIGHTS_NAME = "adapter.safetensors"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_REQUIRED = {
    "schema": str,
    "schema_version": int,
    "name": str,
    "method": str,
    "config": dict,
    "base": dict,
    "tensors_sha256": str,
}


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same directory, fsync and rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, ensure_ascii: bool = True) -> None:
    """Writes ``data`` as JSON (indent 2, sorted keys, final newline, UTF-8) with :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=ensure_ascii) + "\n").encode())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike[str], *, backup: str | None = None) -> Iterator[Path]:
    """A temporary sibling of ``target`` to fill; on success it replaces ``target`` in two renames.

    Readers see the old directory or the new one, never a mix: the old one is renamed to
    ``backup`` (a sibling name; default a hidden ``.<name>.old``), the new one into place, the
    parent directory fsynced after each rename, and only then is the backup removed. A kill between
    the renames leaves the old directory under ``backup`` (loaders may fall back to it). Temporary
    siblings left by a killed earlier write are removed first; on an exception the new one is.
    Files inside should be written with :func:`atomic_write_bytes` (or otherwise fsynced).

    Args:
        target: The directory to write (its parent is created if missing).
        backup: Sibling name the previous ``target`` is kept under until the swap is done.

    Yields:
        The temporary directory.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    old = target.with_name(backup or f".{target.name}.old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        _fsync_dir(target.parent)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


# Hosts whose weights the toolkit has edited in place (sparse diffs): the probe of the weights before.
_PINNED: weakref.WeakKeyDictionary[nn.Module, dict[str, list[float]] | None] = weakref.WeakKeyDictionary()
PROBE_VALUES = 256  # sampled values per parameter tensor
PROBE_PROJECTIONS = 3
PROBE_RTOL = 0.02  # on a group's RMS
PROBE_ATOL = 0.02  # on each normalised projection: ~10 times what bf16 rounding moves it


def fingerprint(host: nn.Module, interface: HostInterface) -> dict[str, Any]:
    """Identifies a base model by type, sizes, the names and shapes of its backbone parameters, and a weight probe.

    Only the embeddings and the blocks count, relative to the backbone root, so a backbone and
    a task model built on it (``BertModel`` and ``BertForMaskedLM``) share a fingerprint.
    ``weights_probe`` (see :func:`weights_probe`) tells apart two bases of one architecture with
    different weights; it is ``None`` for a host on the meta device. Call it on the unwrapped host.
    """
    root, blocks = interface.find_blocks(host)
    block_parent = blocks[0][0][len(root) :].rsplit(".", 1)[0] + "."
    embeddings = f"{interface.embeddings}." if interface.embeddings else None
    prefixes = tuple(p for p in (block_parent, embeddings) if p)
    digest = hashlib.sha256()
    for name, param in sorted(host.named_parameters()):
        key = name[len(root) :] if name.startswith(root) else None
        if key is not None and key.startswith(prefixes):
            digest.update(f"{key}:{tuple(param.shape)}\n".encode())
    groups = {f"block {i}": f"{path}." for i, (path, _) in enumerate(blocks)}
    if embeddings:
        groups = {"embeddings": root + embeddings, **groups}
    config = getattr(host, "config", None)
    return {
        "interface": interface.name,
        "model_type": getattr(config, "model_type", type(host).__name__),
        "hidden_size": getattr(config, "hidden_size", None),
        "num_layers": len(blocks),
        "params_sha256": digest.hexdigest(),
        "weights_probe": _PINNED[host] if host in _PINNED else weights_probe(host, groups),
    }


def pin_weights_probe(host: nn.Module, probe: dict[str, list[float]] | None) -> None:
    """Makes :func:`fingerprint` report ``probe`` for ``host`` while its weights are edited in place.

    Sparse diffs added to a base keep it the same base for the adapters trained on it; the
    diff code pins the probe of the weights before its first diff and unpins it on the last revert.
    """
    _PINNED[host] = probe


def unpin_weights_probe(host: nn.Module) -> None:
    """Undoes :func:`pin_weights_probe` (nothing if ``host`` is not pinned)."""
    _PINNED.pop(host, None)


@torch.no_grad()
def weights_probe(host: nn.Module, groups: dict[str, str]) -> dict[str, list[float]] | None:
    """A few numbers per parameter group that change when its weights do, but not with the dtype.

    From each floating tensor of a group (parameters whose names start with the group's prefix)
    up to :data:`PROBE_VALUES` evenly strided values are taken. Each tensor's sample is projected
    on :data:`PROBE_PROJECTIONS` fixed +-1 patterns and divided by ``sqrt(n) * RMS``; a group's
    projection is the sum over its tensors divided by ``sqrt(tensors)``, so it moves by about the
    RMS of the tensors' relative differences: about 0.002 when every weight is rounded to bf16,
    0.05 to 1 between the default base and its masked-LM host's retrained layers. The group's RMS
    over all sampled values comes first.

    Args:
        host: The unwrapped host.
        groups: Group label (``"block 3"``) -> parameter-name prefix.

    Returns:
        Label -> ``[rms, p1, p2, p3]``; ``None`` when a weight is on the meta device.
    """
    sums = {label: torch.zeros(PROBE_PROJECTIONS + 2, dtype=torch.float64) for label in groups}  # squares, count, p
    tensors = dict.fromkeys(groups, 0)
    for name, param in sorted(host.named_parameters()):
        label = next((label for label, prefix in groups.items() if name.startswith(prefix)), None)
        if label is None or not param.is_floating_point():
            continue
        if param.is_meta:
            return None
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // PROBE_VALUES)
        values = flat[::step][:PROBE_VALUES].to("cpu", torch.float64)  # (n,)
        squares = values.square().sum()
        rms = (squares / values.numel()).sqrt()
        index = torch.arange(values.numel(), dtype=torch.int64)
        projections = []
        for k in range(PROBE_PROJECTIONS):
            signs = ((index * 2654435761 + (k + 1) * 40503) % 2**32 >> 16) % 2 * 2 - 1  # (n,) fixed +-1
            projected = (values * signs).sum() / (values.numel() ** 0.5 * rms) if rms > 0 else torch.tensor(0.0)
            projections.append(projected)
        sums[label] += torch.stack([squares, torch.tensor(float(values.numel())), *projections]).double()
        tensors[label] += 1
    probe = {}
    for label, total in sums.items():
        if tensors[label]:
            rms = (total[0] / total[1]).sqrt().item()
            row = [rms, *(total[2:] / tensors[label] ** 0.5).tolist()]
            probe[label] = [round(v, 6) for v in row]
    return probe


def fingerprint_mismatch(saved: dict[str, Any], actual: dict[str, Any]) -> str | None:
    """Describes how two base fingerprints differ (``"num_layers=12, not 6"``), or ``None`` if they match.

    Weight probes are compared within tolerances (a base loaded in another dtype matches); a
    fingerprint without a probe (older files, a host built on the meta device) skips that part.
    """
    for field in ("model_type", "hidden_size", "num_layers", "params_sha256"):
        if saved.get(field) != actual.get(field):
            return f"{field}={saved.get(field)!r}, not {actual.get(field)!r}"
    mine, theirs = saved.get("weights_probe"), actual.get("weights_probe")
    if not mine or not theirs:
        return None
    differ = []
    for label in sorted(set(mine) | set(theirs), key=_probe_order):
        a, b = mine.get(label), theirs.get(label)
        if a is None or b is None or len(a) != len(b):
            differ.append(label)
        elif abs(a[0] - b[0]) > PROBE_RTOL * max(abs(a[0]), abs(b[0])) or any(
            abs(x - y) > PROBE_ATOL for x, y in zip(a[1:], b[1:], strict=True)
        ):
            differ.append(label)
    if differ:
        return f"other weights in {', '.join(differ)} (same architecture)"
    return None


def _probe_order(label: str) -> tuple[int, int]:
    return (0, 0) if label == "embeddings" else (1, int(label.rsplit(" ", 1)[-1]))


def check_fingerprint(saved: dict[str, Any], actual: dict[str, Any], source: Path) -> None:
    """Raises :class:`BaseModelMismatchError` saying how the bases differ (:func:`fingerprint_mismatch`)."""
    mismatch = fingerprint_mismatch(saved, actual)
    if mismatch is not None:
        raise BaseModelMismatchError(
            f"{source}: adapter was trained for another base than this model ({mismatch}); load it into the "
            f"model it was trained on (or pass check_base=False)"
        )


def write_adapter(directory: str | os.PathLike[str], meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Writes an adapter directory; the tensor file first, then the JSON that vouches for it.

    Args:
        directory: Target directory (created if missing); other files in it are left alone.
        meta: ``name``, ``method``, ``config``, ``base`` and any extra JSON-ready fields.
        tensors: Flat name -> tensor map.

    Returns:
        The directory path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    atomic_write_bytes(directory / WEIGHTS_NAME, blob)
    doc = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        **meta,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_json(directory / CONFIG_NAME, doc)
    return directory


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and validates ``adapter.json`` (schema, version, required keys and their types).

    Raises:
        MissingArtifactError: If the directory or the file is missing.
        SchemaVersionError: If the schema is unknown or newer than this library's.
        CorruptArtifactError: If the JSON is malformed or a key is missing or mistyped.
    """
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise MissingArtifactError(f"{directory}: not a directory; expected a saved adapter with {CONFIG_NAME}")
    if not path.is_file():
        raise MissingArtifactError(f"{path}: missing; is {directory} an adapter saved by polyglot-adapters?")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        raise CorruptArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise CorruptArtifactError(f"{path}: expected a JSON object")
    if doc.get("schema") != SCHEMA:
        raise SchemaVersionError(f"{path}: schema {doc.get('schema')!r} is not {SCHEMA!r}; convert the file first")
    version = doc.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path}: schema_version {version!r} is not supported (this library reads 1..{SCHEMA_VERSION}); upgrade it"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            raise CorruptArtifactError(f"{path}: key {key!r} is missing or not a {kind.__name__}")
    return doc


def read_adapter(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Reads an adapter directory written by :func:`write_adapter`.

    Returns:
        The validated metadata and the tensors (on CPU).

    Raises:
        ArtifactError: A subclass naming the file and the problem.
    """
    meta = read_meta(directory)
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise MissingArtifactError(f"{path}: missing; the adapter directory is incomplete")
    return meta, parse_verified(path, path.read_bytes(), meta["tensors_sha256"])


def parse_verified(path: Path, blob: bytes, sha256: str) -> dict[str, torch.Tensor]:
    """Parses safetensors bytes read from ``path`` after checking them against their recorded SHA-256.

    Raises:
        CorruptArtifactError: On a checksum mismatch or a malformed file.
    """
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise CorruptArtifactError(f"{path}: checksum does not match its JSON (truncated or altered file)")
    try:
        return st_load(blob)
    except Exception as err:  # safetensors raises several types for malformed headers
        raise CorruptArtifactError(f"{path}: not a valid safetensors file ({err})") from None


def read_adapter_config(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], AdapterConfig, dict[str, torch.Tensor]]:
    """Like :func:`read_adapter`, and also builds the saved config.

    Raises:
        ArtifactError: As :func:`read_adapter`, or when ``method`` and the config disagree.
        ConfigError: If the config is invalid or its method unknown (the message names the file).
    """
    meta, tensors = read_adapter(directory)
    try:
        config = config_from_dict(meta["config"])
    except ConfigError as err:
        raise type(err)(f"{Path(directory) / CONFIG_NAME}: {err}") from None
    if config.method != meta["method"]:
        raise CorruptArtifactError(f"{directory}: method {meta['method']!r} disagrees with config {config.method!r}")
    return meta, config, tensors
