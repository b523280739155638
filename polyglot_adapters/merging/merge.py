"""Merging saved adapters: checkpoint averages of one adapter, and weighted / TIES / DARE merges of several.

Two spaces: a method with a :class:`~polyglot_adapters.registry.DeltaCodec` (LoRA) merges dense
per-site weight deltas and re-factorises the result (so ranks and targets may differ); any other
method (bottleneck) merges parameter by parameter, which needs identical configs. Checkpoint
averages are always parameter by parameter: the checkpoints are one adapter at several steps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..registry import get_method
from .ops import COMBINATIONS, SIGN_METHODS, combine
from .saved import MergeError, SavedAdapter, check_same_base, natural_key, read_all

__all__ = [
    "average_checkpoints",
    "check_merge_options",
    "check_weights",
    "checkpoint_weights",
    "ema_weights",
    "merge_adapters",
]

AdapterLike = SavedAdapter | str | os.PathLike[str]


def ema_weights(n: int, decay: float) -> list[float]:
    """Weights of ``n`` checkpoints (oldest first) under ``e_1 = x_1``, ``e_t = decay * e_(t-1) + (1 - decay) * x_t``.

    Raises:
        MergeError: If ``decay`` is not in ``[0, 1)``.
    """
    if not (isinstance(decay, int | float) and 0 <= decay < 1):
        raise MergeError(f"EMA decay must be in [0, 1), got {decay!r}")
    return [decay ** (n - 1)] + [(1 - decay) * decay ** (n - t) for t in range(2, n + 1)]


def average_checkpoints(
    checkpoints: Sequence[AdapterLike],
    *,
    weights: Sequence[float] | None = None,
    ema: float | None = None,
    name: str | None = None,
) -> SavedAdapter:
    """Averages one adapter over several checkpoints, parameter by parameter.

    Args:
        checkpoints: Saved adapter directories (or :class:`SavedAdapter`), oldest first.
        weights: Non-negative weights summing to 1; uniform when neither this nor ``ema`` is given.
        ema: Exponential moving average with this decay over the checkpoints in order (see
            :func:`ema_weights`), instead of ``weights``.
        name: Name of the result; defaults to the first checkpoint's.

    Returns:
        The averaged adapter (sums in float64, stored in the checkpoints' dtype).

    Raises:
        MergeError: Different methods or configs, different tensors, or bad weights.
        BaseModelMismatchError: Checkpoints of different base models.
    """
    adapters = read_all(checkpoints)
    weights = checkpoint_weights(len(adapters), weights, ema)
    check_same_base(adapters)
    _check_same_config(adapters)
    tensors = {}
    for key, ref in adapters[0].tensors.items():
        total = sum(w * a.tensors[key].to(torch.float64) for w, a in zip(weights, adapters, strict=True))
        tensors[key] = total.to(ref.dtype)
    provenance = {"how": "checkpoint-average", "weights": list(weights), "ema": ema, "sources": _sources(adapters)}
    return SavedAdapter(
        name=name or adapters[0].name,
        config=adapters[0].config,
        base=adapters[0].base,
        tensors=tensors,
        extra={"merge": provenance},
    )


def merge_adapters(
    adapters: Sequence[AdapterLike],
    *,
    how: str = "linear",
    weights: Sequence[float] | None = None,
    density: float = 1.0,
    sign_method: str = "total",
    rank: int | str | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    name: str = "merged",
) -> SavedAdapter:
    """Merges several adapters of one method and one base into one adapter.

    Args:
        adapters: Saved adapter directories (or :class:`SavedAdapter`).
        how: ``linear`` (weighted sum, task arithmetic), ``ties``, ``dare`` (DARE then weighted
            sum) or ``dare_ties`` (DARE then TIES sign election and disjoint merge).
        weights: One weight per adapter (any real numbers; negative ones subtract); default 1 each.
        density: Fraction kept by TIES trimming or DARE dropping, in ``(0, 1]``.
        sign_method: TIES sign election, ``total`` or ``frequency``.
        rank: Rank rule when the method re-factorises dense deltas (LoRA): ``None`` keeps the
            common rank (and refuses differing ranks), an integer, ``"max"``, ``"sum"`` (exact for
            ``linear``) or ``"full"``. Ignored, and must be ``None``, for parameter-space methods.
        seed: Seeds DARE's masks when no ``generator`` is given.
        generator: Random source of DARE's masks (drawn site by site in the host's module order,
            adapter by adapter, as PEFT does).
        name: Name of the result.

    Returns:
        The merged adapter, with its provenance under ``extra["merge"]``.

    Raises:
        MergeError: Different methods, configs (parameter space), ranks without a rule, or bad options.
        BaseModelMismatchError: Adapters of different base models.
    """
    loaded = read_all(adapters)
    weights = [1.0] * len(loaded) if weights is None else check_weights(weights, len(loaded))
    check_merge_options(how, sign_method, density)
    methods = sorted({a.config.method for a in loaded})
    if len(methods) > 1:
        raise MergeError(f"adapters of different methods {methods} cannot be merged; merge each method separately")
    check_same_base(loaded)
    if generator is None:
        generator = torch.Generator().manual_seed(seed)
    ops = {"how": how, "density": density, "sign_method": sign_method, "generator": generator}
    codec = get_method(methods[0]).delta_codec
    if codec is None:
        if rank is not None:
            raise MergeError(f"rank applies to methods merged as dense deltas; {methods[0]} merges parameter-wise")
        _check_same_config(loaded)
        config = loaded[0].config
        keys = sorted(loaded[0].tensors, key=natural_key)
        tensors = {k: combine([a.tensors[k] for a in loaded], weights, **ops) for k in keys}
    else:
        thunks = [codec.deltas(a.config, a.tensors) for a in loaded]
        merged = {}
        for key in sorted(set().union(*thunks), key=natural_key):
            # Adapters without this site contribute nothing here (their weight is left out too).
            present = [(t[key], w) for t, w in zip(thunks, weights, strict=True) if key in t]
            merged[key] = combine((delta() for delta, _ in present), [w for _, w in present], **ops)
        config, tensors = codec.factorise([a.config for a in loaded], merged, rank)
    provenance = {
        "how": how,
        "weights": weights,
        "density": density,
        "sign_method": sign_method,
        "rank": rank,
        "sources": _sources(loaded),
    }
    return SavedAdapter(name=name, config=config, base=loaded[0].base, tensors=tensors, extra={"merge": provenance})


def check_merge_options(how: str, sign_method: str, density: float) -> None:
    """Raises :class:`MergeError` for an unknown merge or sign method or a density outside ``(0, 1]``."""
    if how not in COMBINATIONS:
        raise MergeError(f"unknown merge {how!r}; choose one of {list(COMBINATIONS)}")
    if sign_method not in SIGN_METHODS:
        raise MergeError(f"unknown sign method {sign_method!r}; choose one of {list(SIGN_METHODS)}")
    if isinstance(density, bool) or not isinstance(density, int | float) or not 0 < density <= 1:
        raise MergeError(f"density must be in (0, 1], got {density!r}")


def checkpoint_weights(n: int, weights: Sequence[float] | None, ema: float | None) -> list[float]:
    """The weights of a checkpoint average of ``n`` checkpoints: given (>= 0, summing to 1), EMA or uniform.

    Raises:
        MergeError: Both ``weights`` and ``ema``, a wrong count, or weights that are negative or do not sum to 1.
    """
    if weights is not None and ema is not None:
        raise MergeError("give weights or an EMA decay, not both")
    if ema is not None:
        return ema_weights(n, ema)
    if weights is None:
        return [1.0 / n] * n
    values = check_weights(weights, n)
    if any(w < 0 for w in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise MergeError(
            f"checkpoint-average weights must be >= 0 and sum to 1, got {values} "
            f"(sum {sum(values):.6g}); normalise them"
        )
    return values


def check_weights(weights: Sequence[float], n: int) -> list[float]:
    """Returns ``weights`` as floats; raises :class:`MergeError` unless there are ``n`` finite numbers."""
    values = list(weights)
    if len(values) != n:
        raise MergeError(f"got {len(values)} weights for {n} adapters; give one weight per adapter")
    for w in values:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w):
            raise MergeError(f"weights must be finite numbers, got {w!r}")
    return [float(w) for w in values]


def _check_same_config(adapters: Sequence[SavedAdapter]) -> None:
    """Parameter-space merges need one config and one set of tensor names, shapes and dtypes."""
    first = adapters[0]
    want = first.config.to_dict()
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in first.tensors.items()}
    for other in adapters[1:]:
        got = other.config.to_dict()
        if got != want:
            field = next(k for k in sorted(want.keys() | got.keys()) if want.get(k) != got.get(k))
            raise MergeError(
                f"{other.label} has {field}={got.get(field)!r}, {first.label} has {want.get(field)!r}; "
                f"{first.config.method} adapters merge parameter by parameter and need identical configs"
            )
        other_shapes = {k: (tuple(v.shape), v.dtype) for k, v in other.tensors.items()}
        if other_shapes != shapes:
            bad = sorted(k for k in shapes.keys() | other_shapes.keys() if shapes.get(k) != other_shapes.get(k))
            raise MergeError(f"{other.label} and {first.label} differ at tensor {bad[0]}; they cannot be merged")


def _sources(adapters: Sequence[SavedAdapter]) -> list[dict[str, Any]]:
    return [{"name": a.name, "source": a.source} for a in adapters]
