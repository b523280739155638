"""Sparse fine-tuning (LT-SFT) configuration and the compact mask encoding it carries."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import zlib
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch

from ...config import AdapterConfig, check
from ...errors import ConfigError

__all__ = ["SparseFTConfig", "decode_mask", "encode_mask"]


def encode_mask(indices: torch.Tensor) -> str:
    """Encodes sorted unique flat positions as text: zlib-compressed uint32 gaps in base64."""
    flat = indices.detach().to("cpu", torch.int64).numpy()
    gaps = np.diff(flat, prepend=0).astype("<u4")
    return base64.b64encode(zlib.compress(gaps.tobytes(), 9)).decode("ascii")


def decode_mask(text: str) -> torch.Tensor:
    """Inverse of :func:`encode_mask`: ``(k,)`` int64 sorted unique flat positions.

    Raises:
        ConfigError: If the text is not an encoded mask.
    """
    try:
        raw = zlib.decompress(base64.b64decode(text.encode("ascii"), validate=True))
    except (binascii.Error, zlib.error, UnicodeEncodeError, ValueError) as err:
        raise ConfigError(f"sparse_ft mask entry is not an encoded mask ({err})") from None
    if len(raw) % 4:
        raise ConfigError("sparse_ft mask entry is truncated (not a whole number of uint32 gaps)")
    gaps = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if gaps.size > 1 and not (gaps[1:] > 0).all():
        raise ConfigError("sparse_ft mask entry repeats a position (positions must be strictly increasing)")
    return torch.from_numpy(np.cumsum(gaps))


@dataclasses.dataclass(frozen=True)
class SparseFTConfig(AdapterConfig):
    """Composable sparse fine-tuning (LT-SFT, Ansell et al. 2022) of selected linear layers' weights.

    Without a ``mask`` the adapter is in phase 1: a dense difference ``sft_delta`` per targeted
    weight (full fine-tuning of those tensors, the base weights stay untouched). With a mask it
    is in phase 2: only the masked entries of each weight change, held as ``sft_values``.
    :func:`polyglot_adapters.methods.sparse_ft.lt_sft.train_lt_sft` runs both phases.

    Attributes:
        targets: Short names of the interface (``q``, ``k``, ``v``, ``o``, ``ffn_in``, ``ffn_out``)
            or regular expressions over linear layers' paths relative to the backbone root.
        layers: Block indices to adapt, or ``None`` for all.
        density: Entries kept after phase 1 over all targeted weights together: an int count
            or a float fraction in ``(0, 1]``.
        l1: Weight of the L1 pull of the difference towards zero (towards the base weights),
            added to the loss in both phases.
        mask: Per site key, the selected row-major flat positions (:func:`encode_mask`), or
            ``None`` in phase 1.
    """

    method: ClassVar[str] = "sparse_ft"

    targets: tuple[str, ...] = ("q", "k", "v", "o", "ffn_in", "ffn_out")
    layers: tuple[int, ...] | None = None
    density: int | float = 0.05
    l1: float = 0.0
    mask: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        check(
            isinstance(self.targets, tuple)
            and len(self.targets) > 0
            and all(isinstance(t, str) and t for t in self.targets),
            f"targets must be a non-empty tuple of names or patterns, got {self.targets!r}",
        )
        check(
            self.layers is None
            or (
                isinstance(self.layers, tuple)
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)
            ),
            f"layers must be None or a tuple of block indices, got {self.layers!r}",
        )
        check(
            (isinstance(self.density, int) and not isinstance(self.density, bool) and self.density > 0)
            or (isinstance(self.density, float) and 0 < self.density <= 1),
            f"density must be a positive int count or a float fraction in (0, 1], got {self.density!r}",
        )
        check(
            isinstance(self.l1, int | float) and not isinstance(self.l1, bool) and self.l1 >= 0,
            f"l1 must be a non-negative number, got {self.l1!r}",
        )
        if self.mask is not None:
            # JSON gives lists of [key, text] pairs; store them as tuples.
            object.__setattr__(
                self, "mask", tuple(tuple(item) if isinstance(item, list) else item for item in self.mask)
            )
            check(
                all(
                    isinstance(item, tuple) and len(item) == 2 and all(isinstance(s, str) for s in item)
                    for item in self.mask
                ),
                "mask must be a tuple of (site key, encoded positions) pairs",
            )
            keys = [key for key, _ in self.mask]
            check(len(set(keys)) == len(keys), "mask names a site twice")

    def count(self, total: int) -> int:
        """The number of entries to keep out of ``total`` targeted entries.

        Raises:
            ConfigError: If a count ``density`` exceeds ``total``.
        """
        if isinstance(self.density, int):
            check(self.density <= total, f"density {self.density} exceeds the {total} targeted entries")
            return self.density
        return max(1, round(self.density * total))

    def positions(self) -> dict[str, torch.Tensor]:
        """The mask decoded: site key -> ``(k,)`` int64 sorted flat positions (empty in phase 1)."""
        return {key: decode_mask(text) for key, text in self.mask or ()}

    def with_mask(self, positions: Mapping[str, torch.Tensor]) -> SparseFTConfig:
        """This config in phase 2 with the given per-site flat positions (sorted, unique)."""
        return dataclasses.replace(self, mask=tuple((key, encode_mask(idx)) for key, idx in positions.items()))
