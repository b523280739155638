"""The library's exception types: one base class, one subclass per kind of failure.

The CLI turns every :class:`PolyglotAdaptersError` into a one-line message and a non-zero exit.
"""

from __future__ import annotations

__all__ = [
    "AdapterNotFoundError",
    "ArtifactError",
    "BaseModelMismatchError",
    "CompositionError",
    "ConfigError",
    "CorruptArtifactError",
    "InterfaceError",
    "MissingArtifactError",
    "NotMergeableError",
    "PolyglotAdaptersError",
    "SchemaVersionError",
    "UnknownMethodError",
]


class PolyglotAdaptersError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(PolyglotAdaptersError, ValueError):
    """An adapter configuration is invalid (bad value, unknown key, wrong type)."""


class UnknownMethodError(ConfigError):
    """A method name is not in the registry."""


class InterfaceError(PolyglotAdaptersError):
    """The host model does not match any interface preset, or a preset path is missing."""


class CompositionError(PolyglotAdaptersError, ValueError):
    """A composition tree is malformed or names an adapter that does not exist."""


class AdapterNotFoundError(PolyglotAdaptersError, KeyError):
    """No adapter (or gate) of this name is attached to the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it one plain line.
        return str(self.args[0]) if self.args else ""


class NotMergeableError(PolyglotAdaptersError):
    """The adapter cannot be folded into the base weights (e.g. a non-linear bottleneck)."""


class ArtifactError(PolyglotAdaptersError):
    """A saved adapter directory cannot be read."""


class MissingArtifactError(ArtifactError, FileNotFoundError):
    """A required file of an adapter directory is missing."""


class CorruptArtifactError(ArtifactError):
    """A file exists but is truncated, corrupted or inconsistent with its metadata."""


class SchemaVersionError(ArtifactError):
    """The artifact was written with a schema this version of the library does not know."""


class BaseModelMismatchError(ArtifactError):
    """The adapter was trained for a different base model than the one it is loaded into."""
