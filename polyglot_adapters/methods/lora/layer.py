"""LoRA layer and its placement."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ...interfaces import HostInterface
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


def find_sites(config: LoraConfig, host: nn.Module, interface: HostInterface) -> list[Site]:
    """One site per targeted linear layer."""
    return linear_sites(host, interface, config.targets, config.layers)


def build_layer(config: LoraConfig, site: Site, peer: AdapterLayer | None) -> LoraLayer:
    """Builds the LoRA layer for one linear layer."""
    return LoraLayer(site.in_features, site.out_features, config.r, config.scaling, config.dropout)
