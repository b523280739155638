"""LoRA configuration."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...config import AdapterConfig, check

__all__ = ["LoraConfig"]


@dataclasses.dataclass(frozen=True)
class LoraConfig(AdapterConfig):
    """Low-rank adaptation ``W + (alpha / r) * B @ A`` of selected linear layers.

    Attributes:
        r: Rank.
        alpha: Scaling numerator; the update is scaled by ``alpha / r``.
        dropout: Dropout on the LoRA branch's input.
        targets: Short names of the interface (``q``, ``k``, ``v``, ``o``, ``ffn_in``, ``ffn_out``)
            or regular expressions over linear layers' paths relative to the backbone root.
        layers: Block indices to adapt, or ``None`` for all.
    """

    method: ClassVar[str] = "lora"

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "v")
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check(
            isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0,
            f"r must be a positive int, got {self.r!r}",
        )
        check(
            isinstance(self.alpha, int | float) and not isinstance(self.alpha, bool),
            f"alpha must be a number, got {self.alpha!r}",
        )
        check(
            isinstance(self.dropout, int | float) and 0 <= self.dropout < 1,
            f"dropout must be in [0, 1), got {self.dropout!r}",
        )
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

    @property
    def scaling(self) -> float:
        """The factor ``alpha / r`` applied to the low-rank product."""
        return self.alpha / self.r
