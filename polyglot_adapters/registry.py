"""The one map from a method's name to its configuration class and layer factory.

A method folder calls :func:`register_method` once, in its ``__init__.py``; nothing outside the
folder branches on the method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from .errors import UnknownMethodError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .config import AdapterConfig
    from .interfaces import HostInterface
    from .sites import AdapterLayer, Site

__all__ = ["DeltaCodec", "MethodSpec", "get_method", "register_method", "registered_methods"]


@dataclasses.dataclass(frozen=True)
class DeltaCodec:
    """How a method's saved tensors map to dense per-site weight changes and back (merging in delta space).

    Methods whose adapters are linear weight updates (LoRA) merge best as dense deltas: adapters of
    different ranks or targets then combine exactly. Methods without a codec merge parameter by parameter.

    Attributes:
        deltas: ``(config, tensors) -> {site key: thunk}``; each thunk returns that site's dense
            ``(out, in)`` weight change. Thunks let a merge hold one site's deltas at a time.
        factorise: ``(configs, deltas, rank) -> (config, tensors)``: an adapter of the method whose
            weight changes approximate ``deltas`` (exactly when ``rank`` allows). ``configs`` are the
            merged adapters' configs; ``rank`` is the caller's rule (an int, ``"max"``, ``"sum"``,
            ``"full"`` or ``None`` for "all inputs agree").
    """

    deltas: Callable[[AdapterConfig, Mapping[str, torch.Tensor]], dict[str, Callable[[], torch.Tensor]]]
    factorise: Callable[
        [Sequence[AdapterConfig], Mapping[str, torch.Tensor], int | str | None],
        tuple[AdapterConfig, dict[str, torch.Tensor]],
    ]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What the core needs to know about an adapter method.

    Attributes:
        name: Registry key, also the ``method`` field of configs and saved files.
        config_cls: The method's frozen config dataclass.
        prefix: Prefix of every parameter name of the method's layers (e.g. ``lora_``).
        find_sites: ``(config, host, interface) -> sites`` where layers are attached.
        build_layer: ``(config, site, peer) -> layer``; ``peer`` is the layer already built at
            ``site.peer`` (for modules that share parameters across two sites), else ``None``.
        mergeable: Whether the method's layers can be folded into the base weights.
        delta_codec: Optional :class:`DeltaCodec`: merge adapters of this method as dense weight
            deltas instead of parameter by parameter.
    """

    name: str
    config_cls: type[AdapterConfig]
    prefix: str
    find_sites: Callable[[AdapterConfig, nn.Module, HostInterface], list[Site]]
    build_layer: Callable[[AdapterConfig, Site, AdapterLayer | None], AdapterLayer]
    mergeable: bool = False
    delta_codec: DeltaCodec | None = None


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Adds a method to the registry.

    Raises:
        ValueError: If the name is taken or the config class's ``method`` disagrees.
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.config_cls.method != spec.name:
        raise ValueError(f"{spec.config_cls.__name__}.method is {spec.config_cls.method!r}, expected {spec.name!r}")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    """Looks a method up by name.

    Raises:
        UnknownMethodError: If no such method is registered.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(f"unknown adapter method {name!r}; known methods: {sorted(_REGISTRY)}") from None


def registered_methods() -> list[str]:
    """Returns the names of all registered methods, sorted."""
    return sorted(_REGISTRY)
