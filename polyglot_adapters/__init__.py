"""polyglot-adapters: composable adapters for frozen multilingual, speech and code models."""

from __future__ import annotations

from .composition import Average, Gate, Parallel, Route, Stack
from .config import AdapterConfig, config_from_dict
from .errors import PolyglotAdaptersError
from .interfaces import PRESETS, HostInterface, Sublayer
from .merging import average_checkpoints, load_bundle, merge_adapters, merge_per_language
from .methods.bottleneck import BottleneckConfig
from .methods.lora import LoraConfig
from .methods.p_adapter import PAdapterConfig
from .methods.sparse_ft import SparseDiff, SparseFTConfig
from .model import AdaptedModel
from .pool import AdapterPool
from .registry import get_method, register_method, registered_methods

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "AdaptedModel",
    "AdapterPool",
    "AdapterConfig",
    "Average",
    "BottleneckConfig",
    "Gate",
    "HostInterface",
    "LoraConfig",
    "PAdapterConfig",
    "Parallel",
    "PolyglotAdaptersError",
    "Route",
    "SparseDiff",
    "SparseFTConfig",
    "Stack",
    "Sublayer",
    "__version__",
    "average_checkpoints",
    "config_from_dict",
    "get_method",
    "load_bundle",
    "merge_adapters",
    "merge_per_language",
    "register_method",
    "registered_methods",
]
