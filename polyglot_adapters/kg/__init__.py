"""Multilingual knowledge graphs: the CLDR MLKG and PyKEEN's bundled benchmarks as one dataset type."""

from __future__ import annotations

from .cldr import CLDR_CORE_VERSION, RELATIONS, build_cldr_kg, fetch_cldr_core
from .datasets import (
    KG_NAMES,
    KGDataset,
    KGError,
    Triple,
    UnknownKGError,
    build_kg,
    format_statistics,
    load_kg,
    load_kg_dir,
    load_pykeen,
    save_kg,
    split_triples,
)

__all__ = [
    "CLDR_CORE_VERSION",
    "KG_NAMES",
    "RELATIONS",
    "KGDataset",
    "KGError",
    "Triple",
    "UnknownKGError",
    "build_cldr_kg",
    "build_kg",
    "fetch_cldr_core",
    "format_statistics",
    "load_kg",
    "load_kg_dir",
    "load_pykeen",
    "save_kg",
    "split_triples",
]
