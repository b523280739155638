"""composable-sft diffs (``pytorch_diff.bin``), read without ever running pickled code.

composable-sft saves ``torch.save({"diffs": {name: encoding}, "abs": {name: tensor}})`` where an
encoding is ``{"size": torch.Size, "index_steps": [int, ...], "values": tensor}``: the non-zero
entries' flat indices in column-major order, delta-coded, and their values. Older versions saved
``{"body": ..., "head": ...}`` and sparse COO tensors instead of encodings; both are read.

The file is a pickle, so it is opened only by PyTorch's restricted unpickler
(``torch.load(weights_only=True)``), which builds tensors and plain containers and nothing else;
the only globals added to its allow-list are numpy's integer scalar and dtype constructors (the
first index step is a numpy integer). Sparse tensors are built under PyTorch's invariant checks.
Anything else (a class instance, a function reference such as ``os.system``) is refused with an
:class:`UnsafeArtifactError` before it runs. Absolute values (``abs``: replaced parameters such as
task heads) are refused too: they are not differences.
"""

from __future__ import annotations

import operator
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CorruptArtifactError
from ..methods.sparse_ft import SparseDiff
from .detect import ConversionError, Detected, UnsafeArtifactError
from .hosts import Host

__all__ = ["import_composable_sft", "restricted_load"]

_NP_CORE = getattr(np, "_core", None) or np.core
_ALLOWED: list[Any] = [
    _NP_CORE.multiarray.scalar,
    (_NP_CORE.multiarray.scalar, "numpy.core.multiarray.scalar"),  # pickled by numpy 1.x
    np.dtype,
    *(type(np.dtype(t)) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)),
]


def restricted_load(path: Path) -> Any:
    """Unpickles a torch archive admitting only tensors, plain containers and numpy integers.

    Raises:
        UnsafeArtifactError: If the pickle references anything else (it is not run).
        CorruptArtifactError: If the archive is damaged.
    """
    try:
        with torch.serialization.safe_globals(_ALLOWED), torch.sparse.check_sparse_tensor_invariants():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        reason = lines[0] if lines else "it needs more than tensors and plain containers"
        raise UnsafeArtifactError(f"{path}: refused to unpickle ({reason}); only trusted code could load it") from None
    except (RuntimeError, ValueError, EOFError, OSError, IndexError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptArtifactError(f"{path}: not a readable torch archive ({first})") from None


def import_composable_sft(found: Detected, host: Host) -> SparseDiff:
    """Reads a composable-sft diff as a :class:`SparseDiff` for ``host``.

    Raises:
        UnsafeArtifactError: If the pickle is not plain data.
        ConversionError: Unknown structure, absolute values, parameters the base lacks, or shapes that differ.
        CorruptArtifactError: Indices out of range or repeated, values not finite, lengths that disagree.
    """
    archives = found.tensors.get("torch", [])
    named = [p for p in archives if p.name == "pytorch_diff.bin"]
    if len(archives) != 1 and len(named) != 1:
        raise ConversionError(f"{[str(p) for p in archives]}: several torch archives and none is pytorch_diff.bin")
    path = archives[0] if len(archives) == 1 else named[0]
    doc = restricted_load(path)
    if not isinstance(doc, dict) or not ({"diffs", "body"} & set(doc)):
        raise ConversionError(f"{path}: not a composable-sft diff (expected a dict with 'diffs' or 'body')")
    diffs = doc.get("diffs", doc.get("body"))
    absolute = doc.get("abs", doc.get("head")) or {}
    if absolute:
        raise ConversionError(
            f"{path}: holds absolute values for {sorted(absolute)[:3]} (e.g. a task head); only differences convert"
        )
    if not isinstance(diffs, dict):
        raise ConversionError(f"{path}: 'diffs' is not a dict of parameter names")
    entries = {}
    for name, entry in diffs.items():
        if not isinstance(name, str):
            raise ConversionError(f"{path}: parameter names must be strings, got {name!r}")
        key, param = host.parameter(name, str(path))
        shape, indices, values = _decode(entry, f"{path}: {name}")
        if shape != tuple(param.shape):
            raise ConversionError(f"{path}: {name} is {shape} in the diff, {tuple(param.shape)} in the base model")
        entries[key] = (shape, indices, values)
    return SparseDiff(base=host.fingerprint, entries=entries, origin={"format": "composable-sft", "file": path.name})


def _decode(entry: Any, where: str) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor]:
    """Returns ``(shape, sorted row-major flat indices (int64), values)`` of one encoded difference."""
    if isinstance(entry, torch.Tensor):
        if entry.layout == torch.sparse_coo:
            entry = entry.coalesce()
            shape, coords, values = tuple(entry.shape), entry.indices(), entry.values()  # coords: (ndim, nnz)
        elif entry.layout == torch.strided:
            shape, coords = tuple(entry.shape), entry.nonzero().T
            values = entry[tuple(coords)]
        else:
            raise ConversionError(f"{where}: tensor layout {entry.layout} is not a difference encoding")
        flat = _ravel(coords, shape)
    elif isinstance(entry, dict) and {"size", "index_steps", "values"} <= set(entry):
        try:
            shape = tuple(operator.index(s) for s in entry["size"])
            steps = torch.tensor([operator.index(s) for s in entry["index_steps"]], dtype=torch.int64)
        except TypeError:
            raise CorruptArtifactError(f"{where}: size and index_steps must be integers") from None
        values = entry["values"]
        if not isinstance(values, torch.Tensor) or values.ndim != 1 or values.numel() != steps.numel():
            raise CorruptArtifactError(f"{where}: values must be a 1-D tensor with one value per index step")
        if steps.numel() and (steps[0] < 0 or (steps[1:] <= 0).any()):
            raise CorruptArtifactError(f"{where}: index steps must increase strictly (repeated or unordered indices)")
        column_major = steps.cumsum(0)
        numel = int(np.prod(shape)) if shape else 1
        if column_major.numel() and int(column_major[-1]) >= numel:
            raise CorruptArtifactError(f"{where}: index {int(column_major[-1])} is out of range for shape {shape}")
        coords = []
        rest = column_major
        for size in shape:  # column-major: the first dimension varies fastest
            coords.append(rest % size)
            rest = rest // size
        flat = _ravel(torch.stack(coords) if coords else column_major.new_zeros(0, column_major.numel()), shape)
    else:
        raise ConversionError(f"{where}: neither a composable-sft encoding nor a tensor")
    if not values.dtype.is_floating_point or not torch.isfinite(values).all():
        raise CorruptArtifactError(f"{where}: values must be finite floating-point numbers")
    order = flat.argsort()
    flat, values = flat[order], values[order]
    if flat.numel() > 1 and (flat[1:] == flat[:-1]).any():
        raise CorruptArtifactError(f"{where}: an entry appears twice")
    return shape, flat, values.contiguous()


def _ravel(coords: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Row-major flat indices of ``coords`` ``(ndim, nnz)``."""
    flat = torch.zeros(coords.shape[1], dtype=torch.int64)
    for dim, size in enumerate(shape):
        flat = flat * size + coords[dim].to(torch.int64)
    return flat
