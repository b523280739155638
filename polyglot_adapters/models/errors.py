"""Errors of the base-model builders and loaders (subclasses of :class:`PolyglotAdaptersError`)."""

from __future__ import annotations

from ..errors import PolyglotAdaptersError

__all__ = ["BaseModelError", "ModelFileError"]


class BaseModelError(PolyglotAdaptersError):
    """A base model (a transformers directory or the built-in default) cannot be loaded."""


class ModelFileError(BaseModelError, ValueError):
    """A packed ``e5-small-q4.bin`` file is missing, truncated or not in the format ``e5.c`` reads."""
