"""LAMA-style factual probing of masked LMs in many languages, and P-Adapters that make it robust to the prompt.

Templates per language and relation (:mod:`.templates`, package data), facts and typed candidates
from the multilingual KG (:mod:`.facts`), batched multi-token scoring (:mod:`.engine`), P@1, P@10,
MRR and consistency with bootstrap intervals (:mod:`.metrics`), a probe per language with table
and chart (:mod:`.probe`), the ``probe`` command's run (:mod:`.run`) and P-Adapter training
(:mod:`.p_adapters`).

Example:
    >>> mlm, tokenizer = default_mlm()
    >>> results = probe_languages(mlm, tokenizer, load_kg("cldr"), ["en", "sw"], ProbeSettings(per_relation=20))
    >>> print(format_table({"base": results}))
"""

from __future__ import annotations

from .engine import CandidateTable, Query, build_queries, candidate_table, score_naive, score_queries
from .facts import Fact, ProbeError, candidate_sets, check_relations, known_objects, probe_facts
from .metrics import METRICS, bootstrap_macro, fact_metrics, summarise
from .p_adapters import (
    PAdapterSettings,
    cap_per_relation,
    fact_groups,
    fact_split,
    prompt_examples,
    train_p_adapter,
)
from .probe import PROMPT_SETS, ProbeSettings, format_table, json_bytes, probe_chart, probe_language, probe_languages
from .run import COMPOSITIONS, compose, probe_run
from .templates import (
    KINDS,
    TEMPLATE_SET,
    ProbeTemplate,
    TemplateError,
    load_templates,
    parse_template,
    template_languages,
)

__all__ = [
    "COMPOSITIONS",
    "KINDS",
    "METRICS",
    "PROMPT_SETS",
    "TEMPLATE_SET",
    "CandidateTable",
    "Fact",
    "PAdapterSettings",
    "ProbeError",
    "ProbeSettings",
    "ProbeTemplate",
    "Query",
    "TemplateError",
    "bootstrap_macro",
    "build_queries",
    "candidate_sets",
    "cap_per_relation",
    "candidate_table",
    "check_relations",
    "compose",
    "fact_groups",
    "fact_metrics",
    "fact_split",
    "format_table",
    "json_bytes",
    "known_objects",
    "load_templates",
    "parse_template",
    "probe_chart",
    "probe_facts",
    "probe_language",
    "probe_languages",
    "probe_run",
    "prompt_examples",
    "score_naive",
    "score_queries",
    "summarise",
    "template_languages",
    "train_p_adapter",
]
