"""Multilingual knowledge graphs: the CLDR MLKG and PyKEEN's bundled benchmarks, KG adapter objectives, evaluation."""

from __future__ import annotations

from .adapters import KGAdapterSettings, kg_composition, load_kg_run, train_kg_adapters
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
from .evaluate import EncoderScorer, NgramScorer, entity_alignment, link_prediction
from .masked import MaskedKGSettings, masked_entity_examples, train_masked_kg_adapter
from .ngram import ngram_similarity
from .objectives import ContrastiveCollate, ContrastiveLoss, alignment_split, entity_examples, triple_examples
from .scoring import TextKGE
from .suite import evaluate_kg_adapters
from .templates import TemplateError

__all__ = [
    "CLDR_CORE_VERSION",
    "KG_NAMES",
    "RELATIONS",
    "ContrastiveCollate",
    "ContrastiveLoss",
    "EncoderScorer",
    "KGAdapterSettings",
    "KGDataset",
    "KGError",
    "MaskedKGSettings",
    "NgramScorer",
    "TemplateError",
    "TextKGE",
    "Triple",
    "UnknownKGError",
    "alignment_split",
    "build_cldr_kg",
    "build_kg",
    "entity_alignment",
    "entity_examples",
    "evaluate_kg_adapters",
    "fetch_cldr_core",
    "format_statistics",
    "kg_composition",
    "link_prediction",
    "load_kg",
    "load_kg_dir",
    "load_kg_run",
    "load_pykeen",
    "masked_entity_examples",
    "ngram_similarity",
    "save_kg",
    "split_triples",
    "train_kg_adapters",
    "train_masked_kg_adapter",
    "triple_examples",
]
