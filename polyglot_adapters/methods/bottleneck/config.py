"""Bottleneck adapter configuration and the named presets of the MAD-X and MLKG papers."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...config import AdapterConfig, check

__all__ = ["ACTIVATIONS", "INVERSE_SITES", "PLACEMENTS", "BottleneckConfig"]

ACTIVATIONS = ("relu", "gelu", "silu", "tanh")
PLACEMENTS = ("series", "parallel", "pfeiffer")
INVERSE_SITES = ("head", "decoder")


@dataclasses.dataclass(frozen=True)
class BottleneckConfig(AdapterConfig):
    """A down-projection, a non-linearity and a zero-initialised up-projection per sub-layer.

    Attributes:
        placement: Where the adapter reads; it always adds to the sub-layer output ``h`` before
            the host's residual connection and LayerNorm. ``series``: ``h + s * up(act(down(h)))``
            (Houlsby et al. 2019); ``parallel``: ``h + s * up(act(down(x)))`` from the sub-layer
            input ``x`` (He et al. 2022); ``pfeiffer``: ``h + s * up(act(down(LN(h + x))))``, reading
            the host's own post-residual LayerNorm (Pfeiffer et al. 2021, AdapterHub ``seq_bn``
            and MAD-X; post-LN hosts only). The host then computes ``LN(h' + x)`` as usual, so the
            base LayerNorm runs twice with its own weights, as in AdapterHub.
        positions: Sub-layers that get an adapter: ``attn`` and/or ``ffn``.
        reduction_factor: Hidden size divided by the bottleneck size.
        non_linearity: One of ``relu``, ``gelu``, ``silu``, ``tanh``.
        scaling: Factor ``s`` on the adapter's output.
        invertible: Add an invertible (additive coupling) adapter on the embedding output and
            its exact inverse on the output head's input (MAD-X language adapters).
        invertible_reduction: Reduction factor inside the invertible adapter's coupling nets.
        inverse_at: Where the invertible adapter's inverse runs: ``head``, on the input of the
            whole output head; or ``decoder``, on the output embedding's input, after the head's
            transform (the MAD-X paper and AdapterHub; what their converted adapters use).
        layers: Block indices to adapt, or ``None`` for all.
        outputs: Linear layers outside the blocks that also get a series bottleneck on their
            output, by their name in the host interface's ``outputs`` (the transducer's
            prediction network: ``("predictor",)``); series placement only.
    """

    method: ClassVar[str] = "bottleneck"

    placement: str = "series"
    positions: tuple[str, ...] = ("ffn",)
    reduction_factor: float = 16.0
    non_linearity: str = "relu"
    scaling: float = 1.0
    invertible: bool = False
    invertible_reduction: float = 2.0
    inverse_at: str = "head"
    layers: tuple[int, ...] | None = None
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(
            self.placement in PLACEMENTS,
            f"placement must be one of {PLACEMENTS}, got {self.placement!r}",
        )
        check(
            isinstance(self.positions, tuple)
            and len(self.positions) > 0
            and len(set(self.positions)) == len(self.positions),
            f"positions must be a non-empty tuple without repeats, got {self.positions!r}",
        )
        check(all(isinstance(p, str) for p in self.positions), f"positions must be strings, got {self.positions!r}")
        for name in ("reduction_factor", "invertible_reduction"):
            value = getattr(self, name)
            check(
                isinstance(value, int | float) and not isinstance(value, bool) and value > 0,
                f"{name} must be a positive number, got {value!r}",
            )
        check(
            self.non_linearity in ACTIVATIONS,
            f"non_linearity must be one of {ACTIVATIONS}, got {self.non_linearity!r}",
        )
        check(
            isinstance(self.scaling, int | float) and not isinstance(self.scaling, bool),
            f"scaling must be a number, got {self.scaling!r}",
        )
        check(isinstance(self.invertible, bool), f"invertible must be true or false, got {self.invertible!r}")
        check(self.inverse_at in INVERSE_SITES, f"inverse_at must be one of {INVERSE_SITES}, got {self.inverse_at!r}")
        check(
            self.layers is None
            or (
                isinstance(self.layers, tuple)
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)
            ),
            f"layers must be None or a tuple of block indices, got {self.layers!r}",
        )
        check(
            isinstance(self.outputs, tuple)
            and all(isinstance(o, str) for o in self.outputs)
            and len(set(self.outputs)) == len(self.outputs),
            f"outputs must be a tuple of distinct names, got {self.outputs!r}",
        )
        check(
            not self.outputs or self.placement == "series",
            f"outputs {self.outputs!r} take a series bottleneck, not placement {self.placement!r}",
        )

    @classmethod
    def language(cls, *, invertible: bool = True, reduction_factor: float = 2.0) -> BottleneckConfig:
        """MAD-X language adapter: series after the FFN, reduction 2, ReLU, invertible embedding adapter."""
        return cls(placement="series", positions=("ffn",), reduction_factor=reduction_factor, invertible=invertible)

    @classmethod
    def task(cls, *, reduction_factor: float = 16.0) -> BottleneckConfig:
        """MAD-X task adapter: series after the FFN, reduction 16, stacked on a language adapter."""
        return cls(placement="series", positions=("ffn",), reduction_factor=reduction_factor)

    @classmethod
    def knowledge(cls, *, reduction_factor: float = 16.0) -> BottleneckConfig:
        """MLKG knowledge (triple) adapter: series after the FFN, reduction 16."""
        return cls(placement="series", positions=("ffn",), reduction_factor=reduction_factor)

    @classmethod
    def entity_alignment(cls, *, reduction_factor: float = 16.0) -> BottleneckConfig:
        """MLKG entity-alignment adapter: series after the FFN, reduction 16."""
        return cls(placement="series", positions=("ffn",), reduction_factor=reduction_factor)

    @classmethod
    def houlsby(cls, *, reduction_factor: float = 16.0) -> BottleneckConfig:
        """Houlsby et al. (2019): series adapters after both attention and FFN."""
        return cls(placement="series", positions=("attn", "ffn"), reduction_factor=reduction_factor)

    @classmethod
    def pfeiffer(cls, *, reduction_factor: float = 16.0) -> BottleneckConfig:
        """Pfeiffer et al. (2021), AdapterHub ``seq_bn``: after the FFN, reading the host's LayerNorm output."""
        return cls(placement="pfeiffer", positions=("ffn",), reduction_factor=reduction_factor)

    @classmethod
    def parallel(cls, *, reduction_factor: float = 16.0, scaling: float = 4.0) -> BottleneckConfig:
        """He et al. (2022) parallel adapter beside the FFN, scaled by 4."""
        return cls(placement="parallel", positions=("ffn",), reduction_factor=reduction_factor, scaling=scaling)
