"""The one map from a method's name to its configuration class and layer factory.

A method folder calls :func:`register_method` once, in its ``__init__.py``; nothing outside the
folder branches on the method's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import UnknownMethodError

if TYPE_CHECKING:
    from torch import nn

    from .config import AdapterConfig
    from .interfaces import HostInterface
    from .sites import AdapterLayer, Site

__all__ = ["MethodSpec", "get_method", "register_method", "registered_methods"]


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
    """

    name: str
    config_cls: type[AdapterConfig]
    prefix: str
    find_sites: Callable[[AdapterConfig, nn.Module, HostInterface], list[Site]]
    build_layer: Callable[[AdapterConfig, Site, AdapterLayer | None], AdapterLayer]
    mergeable: bool = False


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
