"""LoRA: low-rank updates of linear layers, mergeable into the base weights exactly."""

from __future__ import annotations

from ...registry import DeltaCodec, MethodSpec, register_method
from .config import LoraConfig
from .layer import LoraLayer, build_layer, find_sites
from .merge import lora_deltas, lora_factorise

__all__ = ["LoraConfig", "LoraLayer"]

register_method(
    MethodSpec(
        name="lora",
        config_cls=LoraConfig,
        prefix="lora_",
        find_sites=find_sites,
        build_layer=build_layer,
        mergeable=True,
        delta_codec=DeltaCodec(deltas=lora_deltas, factorise=lora_factorise),
    )
)
