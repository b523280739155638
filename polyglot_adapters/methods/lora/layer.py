"""LoRA layer and its placement."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...interfaces import HostInterface
from ...kernels.rows import lora_rows, stack_padded
from ...sites import AdapterLayer, Site
from ..targets import linear_sites
from .config import LoraConfig

__all__ = ["LoraLayer", "build_layer", "find_sites"]


class LoraLayer(AdapterLayer):
    """Adds ``scaling * B @ A @ x`` to a linear layer's output; ``B`` starts at zero (identity)."""

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float, dropout: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Returns ``y + scaling * dropout(x) @ A.T @ B.T``; ``x`` is ``(..., in)``, ``y`` is ``(..., out)``."""
        return y + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """Returns ``scaling * B @ A``, shape ``(out, in)``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def route_key(self) -> Hashable:
        """Every LoRA layer fuses with every other (ranks are zero-padded, scalings are per layer)."""
        return ()

    @classmethod
    def route_weights(cls, layers: Sequence[AdapterLayer]) -> tuple[torch.Tensor, ...]:
        """``A`` ``(n, r, in)`` and ``B`` ``(n, out, r)`` stacked (mixed ranks zero-padded), scalings ``(n,)``."""
        lora_a = stack_padded([layer.lora_A for layer in layers])
        lora_b = stack_padded([layer.lora_B for layer in layers])
        scaling = torch.tensor([layer.scaling for layer in layers], dtype=torch.float32).to(lora_a.device)
        return lora_a, lora_b, scaling

    @classmethod
    def route(
        cls,
        layers: Sequence[AdapterLayer],
        weights: tuple[torch.Tensor, ...],
        index: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        tap: torch.Tensor | None,
    ) -> torch.Tensor:
        """Row ``b`` gets ``layers[index[b]]``'s update, all rows in two gathered products (shrink, expand).

        Args:
            layers: LoRA layers, possibly of different ranks.
            weights: Their :meth:`route_weights`.
            index: ``(B,)`` int64 in ``[-1, len(layers))``.
            x: ``(B, T, in)``.
            y: ``(B, T, out)``.
            tap: Unused.

        Returns:
            ``(B, T, out)``.
        """
        if any(layer.training for layer in layers):
            rates = [layer.dropout.p if isinstance(layer.dropout, nn.Dropout) else 0.0 for layer in layers]
            if any(rates):
                # Each row is dropped at its own adapter's rate, as that adapter's forward would.
                rate = torch.tensor(rates, dtype=x.dtype, device=x.device)[index.clamp(min=0)]  # (B,)
                rate = torch.where(index >= 0, rate, 0.0)[:, None, None]
                x = x * (torch.rand_like(x) >= rate) / (1 - rate)
        return lora_rows(x, y, *weights, index)


def find_sites(config: LoraConfig, host: nn.Module, interface: HostInterface) -> list[Site]:
    """One site per targeted linear layer."""
    return linear_sites(host, interface, config.targets, config.layers)


def build_layer(config: LoraConfig, site: Site, peer: AdapterLayer | None) -> LoraLayer:
    """Builds the LoRA layer for one linear layer."""
    return LoraLayer(site.in_features, site.out_features, config.r, config.scaling, config.dropout)
