"""Bottleneck adapters (series or parallel) with an optional invertible embedding adapter."""

from __future__ import annotations

from ...registry import MethodSpec, register_method
from .config import BottleneckConfig
from .layer import BottleneckLayer, InverseCoupling, InvertibleCoupling, build_layer, find_sites

__all__ = ["BottleneckConfig", "BottleneckLayer", "InverseCoupling", "InvertibleCoupling"]

register_method(
    MethodSpec(
        name="bottleneck", config_cls=BottleneckConfig, prefix="bn_", find_sites=find_sites, build_layer=build_layer
    )
)
