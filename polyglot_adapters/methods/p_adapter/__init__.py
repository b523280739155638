"""P-Adapters (Newman et al., 2022): a small network between the embeddings and the first attention layer.

It turns a natural-language prompt's embeddings into ones that extract facts as well as an
optimised prompt does. Variants: ``rewrite`` and ``prefix`` (the paper's P-Adapters) and the
``ptuning`` and ``moe`` baselines. Per-batch inputs (keep mask, attention mask, relation ids) go
in through :func:`prompt_inputs`; the ``moe`` router's training loss is :func:`router_loss`.
"""

from __future__ import annotations

from ...registry import MethodSpec, register_method
from .config import PAdapterConfig
from .inputs import p_adapter_layers, prompt_inputs, prompt_slots, router_loss
from .layer import PROMPT_INIT_STD, PAdapterLayer, PromptInputError, PromptInputs, build_layer, find_sites

__all__ = [
    "PROMPT_INIT_STD",
    "PAdapterConfig",
    "PAdapterLayer",
    "PromptInputError",
    "PromptInputs",
    "p_adapter_layers",
    "prompt_inputs",
    "prompt_slots",
    "router_loss",
]

register_method(
    MethodSpec(
        name="p_adapter", config_cls=PAdapterConfig, prefix="pa_", find_sites=find_sites, build_layer=build_layer
    )
)
