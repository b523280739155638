"""Merging sparse diffs: weighted / TIES / DARE merges and checkpoint averages, in union space.

Per parameter key, the diffs are merged over the sorted union of their stored positions: each
diff is the vector over that union holding its values (zeros where it stores nothing), and the
merge is :func:`polyglot_adapters.merging.combine` of those vectors. The vectors are never built:
every operator is computed on the stored entries only (scatter-adds into the union), so a merge
costs of the order of the entries stored, not of ``diffs x union``; the tests check the result
against ``combine`` on the explicit union vectors. DARE draws one number per stored entry, not
per union position, so its masks (not their law) differ from ``combine``'s on those vectors.

``density`` of TIES and DARE refers to each parameter's union of stored positions, not to the
dense parameter: TIES keeps, per diff, the ``int(density * union)`` largest magnitudes of its
union vector (so a diff storing fewer entries than that keeps all of them), and DARE keeps each
stored entry with probability ``density``. Relative to the dense tensor, a density would be
meaningless for diffs that store a few per cent of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...errors import BaseModelMismatchError
from ...io import CONFIG_NAME
from ...merging.merge import check_merge_options, check_weights, checkpoint_weights
from ...merging.ops import keep_largest, sparsify
from ...merging.saved import MergeError, check_bases, natural_key
from .diff import SparseDiff

__all__ = ["average_diffs", "is_sparse_diff", "merge_diffs"]

DiffLike = SparseDiff | str | os.PathLike[str]


def is_sparse_diff(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a saved :class:`SparseDiff`, judged from its ``adapter.json`` alone.

    Never raises: a missing, unreadable or foreign directory, or a normal adapter, is ``False``.
    """
    try:
        doc = json.loads((Path(directory) / CONFIG_NAME).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("method") == "sparse_ft" and isinstance(doc.get("sparse_diff"), dict)


def merge_diffs(
    diffs: Sequence[DiffLike],
    *,
    how: str = "linear",
    weights: Sequence[float] | None = None,
    density: float = 1.0,
    sign_method: str = "total",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> SparseDiff:
    """Merges sparse diffs of one base into one, parameter by parameter over the union of their positions.

    A key stored by only some diffs is merged over those diffs (the others' weights are left out).
    After ``ties``, ``dare`` and ``dare_ties`` the entries that came out exactly zero are dropped;
    ``linear`` keeps the whole union.

    Args:
        diffs: Sparse diffs or their saved directories.
        how: ``linear`` (weighted sum, task arithmetic), ``ties``, ``dare`` (DARE then weighted sum)
            or ``dare_ties`` (DARE then TIES sign election and disjoint merge).
        weights: One weight per diff (any finite reals; negative ones subtract); default 1 each.
        density: In ``(0, 1]``; TIES keeps the ``int(density * union)`` largest magnitudes of each
            diff over a parameter's union of stored positions, DARE keeps each stored entry with
            this probability and rescales by ``1 / density``.
        sign_method: TIES sign election, ``total`` or ``frequency``.
        seed: Seeds DARE's masks when no ``generator`` is given.
        generator: Random source of DARE's masks, drawn key by key in natural order
            (``layer.2`` before ``layer.10``), diff by diff, one number per stored entry.

    Returns:
        The merged diff; its ``origin`` is ``{"merge": {how, weights, density, sign_method, sources}}``.

    Raises:
        MergeError: No diffs, bad weights, density, merge or sign method.
        BaseModelMismatchError: Diffs of different bases, or one key with different shapes.
        ArtifactError: A directory is missing, altered or not a sparse diff.
    """
    if not diffs:
        raise MergeError("nothing to merge: give at least one sparse diff")
    weights = [1.0] * len(diffs) if weights is None else check_weights(weights, len(diffs))
    check_merge_options(how, sign_method, density)
    loaded, labels = _read_all(diffs)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    entries = {}
    for key, (shape, union, parts) in _union_parts(loaded, labels, weights).items():
        if how in ("linear", "dare"):
            merged = _weighted_sum(union, parts, how, density, generator)
        else:
            merged = _ties(union, parts, how, density, sign_method, generator)
        if how != "linear":
            keep = merged != 0
            union, merged = union[keep], merged[keep]
        entries[key] = (shape, union, merged)
    provenance = {
        "how": how,
        "weights": weights,
        "density": density,
        "sign_method": sign_method,
        "sources": _sources(loaded, diffs),
    }
    return SparseDiff(base=loaded[0].base, entries=entries, origin={"merge": provenance})


def average_diffs(
    diffs: Sequence[DiffLike], *, weights: Sequence[float] | None = None, ema: float | None = None
) -> SparseDiff:
    """Averages one sparse fine-tuning run's diffs over several checkpoints, over the union of positions.

    A position (or key) a checkpoint does not store is a zero difference there; the union is kept
    whole. Sums run in float64 and are stored in the values' dtype (promoted where checkpoints differ).

    Args:
        diffs: Sparse diffs or their saved directories, oldest first.
        weights: Non-negative weights summing to 1; uniform when neither this nor ``ema`` is given.
        ema: Exponential moving average with this decay over the checkpoints in order
            (:func:`polyglot_adapters.merging.ema_weights`), instead of ``weights``.

    Returns:
        The averaged diff; its ``origin`` is ``{"merge": {"how": "checkpoint-average", weights, ema, sources}}``.

    Raises:
        MergeError: No diffs or bad weights.
        BaseModelMismatchError: Diffs of different bases, or one key with different shapes.
        ArtifactError: A directory is missing, altered or not a sparse diff.
    """
    if not diffs:
        raise MergeError("nothing to merge: give at least one sparse diff")
    weights = checkpoint_weights(len(diffs), weights, ema)
    loaded, labels = _read_all(diffs)
    entries = {}
    for key, (shape, union, parts) in _union_parts(loaded, labels, weights).items():
        total = torch.zeros(union.numel(), dtype=torch.float64, device=union.device)
        for where, values, weight in parts:
            total.index_add_(0, where, values.to(torch.float64) * weight)
        entries[key] = (shape, union, total.to(parts[0][1].dtype))
    provenance = {
        "how": "checkpoint-average",
        "weights": list(weights),
        "ema": ema,
        "sources": _sources(loaded, diffs),
    }
    return SparseDiff(base=loaded[0].base, entries=entries, origin={"merge": provenance})


def _read_all(diffs: Sequence[DiffLike]) -> tuple[list[SparseDiff], list[str]]:
    """Reads every directory, checks that all diffs share one base; returns the diffs and their labels."""
    loaded, labels = [], []
    for i, diff in enumerate(diffs):
        loaded.append(diff if isinstance(diff, SparseDiff) else SparseDiff.read(diff))
        labels.append(f"sparse diff #{i + 1}" if isinstance(diff, SparseDiff) else str(diff))
    check_bases([d.base for d in loaded], labels, "sparse diffs")
    return loaded, labels


def _union_parts(
    diffs: Sequence[SparseDiff], labels: Sequence[str], weights: Sequence[float]
) -> dict[str, tuple[tuple[int, ...], torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, float]]]]:
    """Key -> (shape, union of positions, (positions in the union, values, weight) per diff storing the key).

    Shapes are checked for every key before any union is built; keys come in natural order.
    """
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for diff, label in zip(diffs, labels, strict=True):
        for key, (shape, _, _) in diff.entries.items():
            seen = shapes.setdefault(key, (shape, label))
            if seen[0] != shape:
                raise BaseModelMismatchError(
                    f"{label} has {key} of shape {shape}, {seen[1]} of shape {seen[0]}; "
                    "only sparse diffs of one base model merge"
                )
    out = {}
    for key in sorted(shapes, key=natural_key):
        present = [(d.entries[key], w) for d, w in zip(diffs, weights, strict=True) if key in d.entries]
        dtype = present[0][0][2].dtype
        for (_, _, values), _ in present[1:]:
            dtype = torch.promote_types(dtype, values.dtype)
        union, inverse = torch.unique(
            torch.cat([idx.long() for (_, idx, _), _ in present]), sorted=True, return_inverse=True
        )
        where = inverse.split([idx.numel() for (_, idx, _), _ in present])
        parts = [(pos, values.to(dtype), w) for pos, ((_, _, values), w) in zip(where, present, strict=True)]
        out[key] = (shapes[key][0], union, parts)
    return out


def _weighted_sum(
    union: torch.Tensor,
    parts: list[tuple[torch.Tensor, torch.Tensor, float]],
    how: str,
    density: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """``linear`` / ``dare``: the weighted sum of the (DARE-dropped) diffs, added in diff order."""
    total = parts[0][1].new_zeros(union.numel())  # (U,)
    for where, values, weight in parts:
        total.index_add_(0, where, sparsify(values, how, density, generator) * weight)
    return total


def _ties(
    union: torch.Tensor,
    parts: list[tuple[torch.Tensor, torch.Tensor, float]],
    how: str,
    density: float,
    sign_method: str,
    generator: torch.Generator,
) -> torch.Tensor:
    """``ties`` / ``dare_ties``: trim (or drop), elect a sign per position, average the agreeing entries."""
    size = union.numel()
    kept = []
    votes = parts[0][1].new_zeros(size)  # (U,)
    for where, values, _ in parts:
        # TIES trims each diff's union vector: the cut falls among its unstored zeros unless it stores more.
        values = (
            keep_largest(values, int(density * size)) if how == "ties" else sparsify(values, how, density, generator)
        )
        kept.append(values)
        votes.index_add_(0, where, values if sign_method == "total" else values.sign())
    majority = torch.where(votes >= 0, 1, -1).to(votes.dtype)
    count = torch.zeros_like(votes)
    total = torch.zeros_like(votes)
    for (where, _, weight), values in zip(parts, kept, strict=True):
        agree = values * majority[where] > 0  # pruned zeros never agree
        total.index_add_(0, where, torch.where(agree, values, 0), alpha=weight)
        count.index_add_(0, where, agree.to(votes.dtype))
    return total / count.clamp(min=1)


def _sources(loaded: Sequence[SparseDiff], given: Sequence[DiffLike]) -> list[dict[str, Any]]:
    return [
        {"source": None if isinstance(g, SparseDiff) else str(g), "origin": d.origin}
        for d, g in zip(loaded, given, strict=True)
    ]
