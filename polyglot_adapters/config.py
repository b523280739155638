"""Adapter configurations: frozen dataclasses with validation and a JSON round trip."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from .errors import ConfigError

__all__ = ["AdapterConfig", "config_from_dict"]


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Base class of every method's configuration.

    Subclasses are frozen dataclasses that set the ``method`` class variable (the registry key)
    and validate their fields in ``__post_init__``, raising :class:`ConfigError`.
    """

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dictionary, including the ``method`` discriminator."""
        out: dict[str, Any] = {"method": self.method}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Builds a config of this class from :meth:`to_dict` output.

        Args:
            data: The dictionary; a ``method`` key, if present, must name this class's method.

        Raises:
            ConfigError: On unknown keys, a method mismatch or an invalid value.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} expects a JSON object, got {type(data).__name__}")
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ConfigError(f"config is for method {method!r}, not {cls.method!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.method} config keys {unknown}; known keys: {sorted(names)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            raise ConfigError(f"invalid {cls.method} config: {err}") from err

    def replace(self, **changes: Any) -> AdapterConfig:
        """Returns a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Builds the right config subclass from a dictionary with a ``method`` key.

    Raises:
        UnknownMethodError: If the method is not registered.
        ConfigError: If the dictionary is not a valid config.
    """
    from .registry import get_method

    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise ConfigError("an adapter config must be a JSON object with a string 'method' key")
    return get_method(data["method"]).config_cls.from_dict(data)


def check(condition: bool, message: str) -> None:
    """Raises :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
