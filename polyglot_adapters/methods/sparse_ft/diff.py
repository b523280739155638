"""``SparseDiff``: sparse differences to a base model's parameters that add, scale, apply and revert.

A diff holds, per parameter, sorted unique row-major flat positions and the differences there.
Keys are backbone-relative (``encoder.layer.0.output.dense.weight``) where the parameter belongs
to the backbone, model-relative otherwise (``cls.predictions.bias``), so a diff moves between a
backbone and its task models. On disk it is an adapter directory: the common ``adapter.json``
(method ``sparse_ft``, base fingerprint, per-parameter shape and entry count under
``sparse_diff``) and ``adapter.safetensors`` with ``<key>.indices`` (int32, or int64 for
parameters of 2**31 entries or more) and ``<key>.values``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import AdapterNotFoundError, BaseModelMismatchError, CorruptArtifactError, SchemaVersionError
from ...interfaces import HostInterface, find_interface
from ...io import check_fingerprint, fingerprint, pin_weights_probe, read_adapter, unpin_weights_probe, write_adapter
from ...kernels import gather_add_
from ...sites import unwrap
from .layer import SparseValuesLayer

__all__ = ["SparseDiff", "SparseDiffError"]

_INT32_LIMIT = 1 << 31
# Per host module: the diffs applied to it, most recent last, with the entries they replaced.
_APPLIED: weakref.WeakKeyDictionary[nn.Module, list[tuple[SparseDiff, list[tuple[torch.Tensor, ...]]]]] = (
    weakref.WeakKeyDictionary()
)


class SparseDiffError(CorruptArtifactError, ValueError):
    """A sparse diff is malformed (positions out of range, repeated or unsorted, values not finite)."""


@dataclasses.dataclass(frozen=True, eq=False)
class SparseDiff:
    """Sparse differences to a base model's parameters; validated on construction.

    Attributes:
        base: Fingerprint of the base model (:func:`polyglot_adapters.io.fingerprint`).
        entries: Key -> ``(shape, indices, values)``; ``indices`` ``(k,)`` integer sorted unique
            row-major flat positions, ``values`` ``(k,)`` floating differences there.
        origin: Where the diff came from (JSON-ready).

    Raises:
        SparseDiffError: On a malformed entry (nothing is applied anywhere).
    """

    base: dict[str, Any]
    entries: dict[str, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]]
    origin: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, (shape, indices, values) in self.entries.items():
            _validate(key, shape, indices, values)

    @property
    def nnz(self) -> int:
        """Number of changed entries over all parameters."""
        return sum(indices.numel() for _, indices, _ in self.entries.values())

    # ------------------------------------------------------------------ algebra
    def __add__(self, other: SparseDiff) -> SparseDiff:
        """Composes two diffs of one base (e.g. language SFT + task SFT): values add where positions meet.

        Raises:
            BaseModelMismatchError: If the diffs belong to different bases or a parameter's shapes differ.
        """
        if not isinstance(other, SparseDiff):
            return NotImplemented
        check_fingerprint(other.base, self.base, Path("sparse diff"))
        entries = dict(self.entries)
        for key, (shape, indices, values) in other.entries.items():
            if key not in entries:
                entries[key] = (shape, indices, values)
                continue
            mine_shape, mine_indices, mine_values = entries[key]
            if mine_shape != shape:
                raise BaseModelMismatchError(f"sparse diffs disagree on the shape of {key}: {mine_shape} vs {shape}")
            both = torch.cat([mine_indices.long(), indices.long()])
            union, where = torch.unique(both, sorted=True, return_inverse=True)
            dtype = torch.promote_types(mine_values.dtype, values.dtype)
            summed = torch.zeros(union.numel(), dtype=dtype, device=values.device)
            summed.index_add_(0, where, torch.cat([mine_values.to(dtype), values.to(dtype)]))
            entries[key] = (shape, union, summed)
        return SparseDiff(base=self.base, entries=entries, origin={"composed": [self.origin, other.origin]})

    def scaled(self, factor: float) -> SparseDiff:
        """Returns the diff with every value multiplied by ``factor``."""
        entries = {key: (shape, idx, values * factor) for key, (shape, idx, values) in self.entries.items()}
        return SparseDiff(base=self.base, entries=entries, origin={"scaled": factor, "from": self.origin})

    def __mul__(self, factor: float) -> SparseDiff:
        """``diff * factor``: see :meth:`scaled`."""
        return self.scaled(factor)

    __rmul__ = __mul__

    # ---------------------------------------------------------------- adapters
    @classmethod
    def from_adapter(cls, model: nn.Module, name: str) -> SparseDiff:
        """The diff a phase-2 ``sparse_ft`` adapter of an ``AdaptedModel`` adds to the base weights.

        Raises:
            AdapterNotFoundError: If ``model`` has no such phase-2 ``sparse_ft`` adapter.
        """
        host, interface, base = _resolve(model)
        root, _ = interface.find_blocks(host)
        suffix = f".adapters.{name}"
        entries = {}
        for path, module in host.named_modules():
            if isinstance(module, SparseValuesLayer) and path.endswith(suffix):
                site = path[: -len(suffix)]
                key = f"{site[len(root) :] if site.startswith(root) else site}.weight"
                entries[key] = (module.shape, module.positions.cpu(), module.sft_values.detach().cpu().clone())
        if not entries:
            raise AdapterNotFoundError(
                f"no phase-2 sparse_ft adapter named {name!r}; select its mask first (train_lt_sft)"
            )
        return cls(base=base, entries=entries, origin={"adapter": name})

    # ------------------------------------------------------------ apply/revert
    @torch.no_grad()
    def apply(self, model: nn.Module, *, check_base: bool = True) -> Callable[[], None]:
        """Adds the differences to ``model``'s parameters in place (a plain host or an ``AdaptedModel``).

        Every parameter and shape is checked before anything changes; values are rounded to the
        parameter's dtype. Adapters attached to an ``AdaptedModel`` keep working on top of the
        changed weights (merge adapters after applying diffs, or unmerge them first).

        Returns:
            A function that reverts this application (as :meth:`revert`).

        Raises:
            BaseModelMismatchError: If ``model`` is another base, or lacks a parameter or its shape.
        """
        host, interface, base = _resolve(model)
        if check_base:
            check_fingerprint(self.base, base, Path(self.origin.get("file", "sparse diff")))
        root, _ = interface.find_blocks(host)
        targets = []
        for key, (shape, indices, values) in self.entries.items():
            param = _parameter(host, root + key)
            param = _parameter(host, key) if param is None else param
            if param is None or tuple(param.shape) != shape:
                raise BaseModelMismatchError(
                    f"sparse diff: the model has no parameter {key} of shape {shape}; apply it to its base model"
                )
            if not param.is_contiguous():
                raise BaseModelMismatchError(f"sparse diff: parameter {key} is not contiguous")
            targets.append((param, indices.to(param.device, torch.long), values.to(param.device)))
        # One matrix at a time: its entries are still in cache when they are written back.
        saved = [(param, idx, gather_add_(param.data.view(-1), idx, values)) for param, idx, values in targets]
        if not _APPLIED.get(host):  # the host stays its base for fingerprints while diffs are in
            pin_weights_probe(host, base.get("weights_probe"))
        _APPLIED.setdefault(host, []).append((self, saved))
        return lambda: self.revert(model)

    @torch.no_grad()
    def revert(self, model: nn.Module) -> None:
        """Restores the entries the last :meth:`apply` of this diff to ``model`` changed, bit-exactly.

        Raises:
            SparseDiffError: If this diff is not the last one applied to ``model`` (revert in reverse order).
        """
        host, _, _ = _resolve(model)
        stack = _APPLIED.get(host, [])
        if not stack or stack[-1][0] is not self:
            raise SparseDiffError(
                "sparse diff: this diff is not the last one applied to the model; revert diffs in reverse order"
            )
        _, saved = stack.pop()
        for param, idx, original in saved:
            param.data.view(-1).index_copy_(0, idx, original)
        if not stack:
            unpin_weights_probe(host)

    # ---------------------------------------------------------------- files
    def save(self, directory: str | os.PathLike[str], name: str = "sparse_diff") -> Path:
        """Writes ``adapter.json`` and ``adapter.safetensors`` (tensor file first, both atomically)."""
        tensors = {}
        for key, (shape, indices, values) in self.entries.items():
            wide = math.prod(shape) >= _INT32_LIMIT
            tensors[f"{key}.indices"] = indices.to(torch.int64 if wide else torch.int32)
            tensors[f"{key}.values"] = values
        meta = {
            "name": name,
            "method": "sparse_ft",
            "config": {},
            "base": self.base,
            "sparse_diff": {
                "parameters": {k: {"shape": list(s), "nnz": i.numel()} for k, (s, i, _) in self.entries.items()},
                "converted_from": self.origin,
            },
        }
        return write_adapter(directory, meta, tensors)

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> SparseDiff:
        """Reads and verifies a diff written by :meth:`save`.

        Raises:
            MissingArtifactError, SchemaVersionError, CorruptArtifactError: Missing, foreign or altered files.
        """
        meta, tensors = read_adapter(directory)
        info = meta.get("sparse_diff")
        if meta["method"] != "sparse_ft" or not isinstance(info, dict):
            raise SchemaVersionError(
                f"{directory}: is a {meta['method']} adapter, not a sparse diff; use AdaptedModel.load_adapter"
            )
        params = info.get("parameters")
        if not isinstance(params, dict):
            raise CorruptArtifactError(f"{directory}: 'sparse_diff.parameters' is missing or not an object")
        entries = {}
        for key, spec in params.items():
            indices, values = tensors.get(f"{key}.indices"), tensors.get(f"{key}.values")
            shape = spec.get("shape") if isinstance(spec, dict) else None
            if indices is None or values is None or not isinstance(shape, list):
                raise CorruptArtifactError(f"{directory}: tensors or shape of {key} are missing")
            entries[key] = (tuple(shape), indices.long(), values)
        try:
            return cls(base=meta["base"], entries=entries, origin=info.get("converted_from") or {})
        except SparseDiffError as err:
            raise SparseDiffError(f"{directory}: {err}") from None


def _validate(key: str, shape: tuple[int, ...], indices: torch.Tensor, values: torch.Tensor) -> None:
    """Raises :class:`SparseDiffError` naming the first problem of one entry."""
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise SparseDiffError(f"sparse diff: shape of {key} is not a tuple of sizes: {shape!r}")
    if indices.dtype not in (torch.int32, torch.int64) or indices.ndim != 1:
        raise SparseDiffError(f"sparse diff: indices of {key} must be a 1-D int32/int64 tensor")
    if not values.dtype.is_floating_point or values.shape != indices.shape:
        raise SparseDiffError(f"sparse diff: values of {key} must be floating and match its {indices.numel()} indices")
    size = math.prod(shape)
    if indices.numel() > size:
        raise SparseDiffError(f"sparse diff: {key} has {indices.numel()} entries but only {size} positions")
    if indices.numel() == 0:
        return
    if int(indices.min()) < 0 or int(indices.max()) >= size:
        raise SparseDiffError(f"sparse diff: an index of {key} is outside [0, {size})")
    steps = indices[1:] - indices[:-1]
    if bool((steps == 0).any()) or torch.unique(indices).numel() != indices.numel():
        raise SparseDiffError(f"sparse diff: {key} repeats an index")
    if bool((steps < 0).any()):
        raise SparseDiffError(f"sparse diff: indices of {key} are not sorted")
    if not bool(torch.isfinite(values).all()):
        raise SparseDiffError(f"sparse diff: values of {key} are not all finite (NaN or inf)")


def _resolve(model: nn.Module) -> tuple[nn.Module, HostInterface, dict[str, Any]]:
    """The unwrapped host, its interface and its base fingerprint, for a plain host or an ``AdaptedModel``."""
    interface = getattr(model, "interface", None)
    base = getattr(model, "base_fingerprint", None)
    if isinstance(interface, HostInterface) and isinstance(base, dict) and isinstance(model.model, nn.Module):
        return model.model, interface, base
    interface = find_interface(model, None)
    return model, interface, fingerprint(model, interface)


def _parameter(host: nn.Module, path: str) -> torch.Tensor | None:
    """The parameter at ``path`` (``a.b.weight``), seeing through adapter wrappers; ``None`` if absent."""
    parent, _, attr = path.rpartition(".")
    try:
        owner = unwrap(host.get_submodule(parent)) if parent else host
    except AttributeError:
        return None
    return owner._parameters.get(attr)
