"""Evaluation of KG adapters: entity alignment per language pair and filtered link prediction per label language.

Entity alignment ranks, for every test entity labelled in both languages, its label in the target
language among the labels of *all* entities labelled in the target language (training entities
included) and reports Hits@1, Hits@10 and MRR. Scorers: an encoder (base model, or adapters
active) by cosine similarity of pooled embeddings, and the name-overlap baseline (character n-gram
TF-IDF cosine, :mod:`.ngram`). By default each query is ranked on its own (nearest neighbour); the
global inferences of :mod:`.alignment` (CSLS, Sinkhorn) rescore all source entities against all
candidates first, without gold alignments.

Link prediction ranks, for every test triple ``(h, r, t)`` whose entities are labelled in a
language, ``t`` among all entities labelled in that language, with the other known objects of
``(h, r)`` (from train, valid and test) filtered out; PyKEEN's ``RankBasedEvaluator`` turns the
scores into realistic ranks (ties count half) and MRR / Hits@k. Only tails are predicted: head
queries ``(?, r, t)`` would need a verbalisation of inverse relations in every language.

Ranks are realistic everywhere: ``1 + #(better) + #(tied, self excluded) / 2``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from .alignment import check_inference, rescore
from .datasets import KGDataset
from .encode import DEFAULT_PREFIX, encode_texts
from .ngram import ngram_similarity
from .objectives import Verbaliser
from .scoring import TextKGE

__all__ = [
    "AlignmentScorer",
    "EncoderScorer",
    "KGEScorer",
    "LinkScorer",
    "NgramScorer",
    "entity_alignment",
    "link_prediction",
    "per_language_table",
    "rank_metrics",
    "realistic_ranks",
]


class AlignmentScorer(Protocol):
    """Scores entities labelled in one language against entities labelled in another."""

    def align(
        self, kg: KGDataset, source: str, target: str, queries: list[str], candidates: list[str]
    ) -> torch.Tensor:
        """``(Q, C)`` similarities (higher is more similar)."""
        ...


class LinkScorer(Protocol):
    """Scores ``(subject, relation)`` queries against candidate objects, all in one label language."""

    def link(
        self, kg: KGDataset, language: str, queries: list[tuple[str, str]], candidates: list[str]
    ) -> torch.Tensor:
        """``(Q, C)`` scores (higher is more plausible)."""
        ...


def realistic_ranks(scores: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Realistic (tie-averaged) 1-based ranks of each row's gold column; NaN scores never count.

    Args:
        scores: ``(Q, C)`` scores, higher better; NaN marks filtered candidates.
        gold: ``(Q,)`` gold column per row (its score must not be NaN).

    Returns:
        ``(Q,)`` float ranks in ``[1, C]``.
    """
    true = scores.gather(1, gold[:, None])  # (Q, 1)
    if bool(true.isnan().any()):
        raise ConfigError("a gold candidate's score is NaN (filtered out or undefined)")
    greater = (scores > true).sum(1).float()
    equal = (scores == true).sum(1).float() - 1.0
    return 1.0 + greater + 0.5 * equal


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int] = (1, 3, 10)) -> dict[str, float]:
    """MRR and Hits@k of 1-based ranks (``count`` is the number of ranks)."""
    if ranks.numel() == 0:
        return {"count": 0, "mrr": float("nan"), **{f"hits@{k}": float("nan") for k in ks}}
    ranks = ranks.double()
    return {
        "count": int(ranks.numel()),
        "mrr": float((1.0 / ranks).mean()),
        **{f"hits@{k}": float((ranks <= k).double().mean()) for k in ks},
    }


class NgramScorer:
    """The name-overlap baseline: character n-gram TF-IDF cosine between labels."""

    def align(
        self, kg: KGDataset, source: str, target: str, queries: list[str], candidates: list[str]
    ) -> torch.Tensor:
        """``(Q, C)`` n-gram similarities of the source labels of ``queries`` and target labels of ``candidates``."""
        return ngram_similarity(
            [kg.entities[e][source] for e in queries], [kg.entities[e][target] for e in candidates]
        )


class EncoderScorer:
    """Cosine similarity of an encoder's pooled embeddings of verbalised entities and queries.

    Embeddings are cached by text, so build a new scorer whenever the model's adapters change.

    Args:
        model: The encoder (a transformers model or an ``AdaptedModel`` with its composition active).
        tokenizer: Its tokenizer.
        form: ``phrase`` (bare labels, EP/TP) or ``sentence`` (training templates, ES/TS).
        prefix: Text prefix (as in training).
        batch_size: Texts per forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        form: str = "phrase",
        prefix: str = DEFAULT_PREFIX,
        batch_size: int = 128,
    ) -> None:
        self.model, self.tokenizer, self.form, self.prefix, self.batch_size = (
            model,
            tokenizer,
            form,
            prefix,
            batch_size,
        )
        self._cache: dict[str, torch.Tensor] = {}

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, H)`` unit-norm embeddings, computed once per distinct text."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = encode_texts(self.model, self.tokenizer, missing, prefix=self.prefix, batch_size=self.batch_size)
            self._cache.update(zip(missing, vectors, strict=True))
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, 0)

    def align(
        self, kg: KGDataset, source: str, target: str, queries: list[str], candidates: list[str]
    ) -> torch.Tensor:
        """``(Q, C)`` cosine similarities of the verbalised entities."""
        verbaliser = Verbaliser(kg, self.form)
        left = self.embed([verbaliser.entity(e, source) for e in queries])
        right = self.embed([verbaliser.entity(e, target) for e in candidates])
        return left @ right.T

    def link(
        self, kg: KGDataset, language: str, queries: list[tuple[str, str]], candidates: list[str]
    ) -> torch.Tensor:
        """``(Q, C)`` cosine similarities of verbalised queries and candidate objects."""
        verbaliser = Verbaliser(kg, self.form)
        left = self.embed([verbaliser.query(h, r, language) for h, r in queries])
        right = self.embed([verbaliser.entity(e, language) for e in candidates])
        return left @ right.T


class KGEScorer:
    """Link scores of a :class:`~.scoring.TextKGE` head: embedded ``(subject, relation)`` queries and object labels."""

    def __init__(self, kge: TextKGE, tokenizer: Any, *, prefix: str = DEFAULT_PREFIX, batch_size: int = 128) -> None:
        self.kge = kge
        self.labels = EncoderScorer(kge.encoder, tokenizer, prefix=prefix, batch_size=batch_size)

    @torch.no_grad()
    def link(
        self, kg: KGDataset, language: str, queries: list[tuple[str, str]], candidates: list[str]
    ) -> torch.Tensor:
        """``(Q, C)`` interaction scores."""
        index = {r: i for i, r in enumerate(kg.relations)}
        verbaliser = Verbaliser(kg, "phrase")
        heads = self.labels.embed([verbaliser.query(h, r, language) for h, r in queries])
        tails = self.labels.embed([kg.entities[e][language] for e in candidates])
        relations = torch.tensor([index[r] for _, r in queries], dtype=torch.long)
        device = self.kge.relations.weight.device
        return self.kge.score(heads.to(device), relations.to(device), tails.to(device)).float().cpu()


def entity_alignment(
    scorer: AlignmentScorer,
    kg: KGDataset,
    source: str,
    target: str,
    entities: Sequence[str],
    *,
    ks: Sequence[int] = (1, 10),
    inference: str = "nearest",
) -> dict[str, float]:
    """Hits@k and MRR of aligning ``entities`` from ``source`` to ``target`` against all target-language entities.

    Args:
        scorer: An :class:`AlignmentScorer` (:class:`EncoderScorer`, :class:`NgramScorer`).
        kg: The knowledge graph.
        source: Query label language.
        target: Candidate label language.
        entities: Test entities (those without labels in both languages are skipped).
        ks: The k of Hits@k.
        inference: ``nearest`` ranks each query's similarities alone; ``csls`` and ``sinkhorn``
            (:mod:`.alignment`) first rescore the similarities of *every* entity labelled in
            ``source`` against every candidate (no gold alignment is used), then rank the queries' rows.

    Returns:
        ``{"count", "mrr", "hits@1", "hits@10", "candidates", "inference"}``.
    """
    check_inference(inference)
    candidates = sorted(e for e, labels in kg.entities.items() if target in labels)
    queries = [e for e in entities if source in kg.entities[e] and target in kg.entities[e]]
    if not queries:
        return {**rank_metrics(torch.zeros(0), ks), "candidates": len(candidates), "inference": inference}
    column = {e: i for i, e in enumerate(candidates)}
    if inference == "nearest":
        scores = scorer.align(kg, source, target, queries, candidates).float()  # (Q, C)
    else:
        sources = sorted(e for e, labels in kg.entities.items() if source in labels)
        row = {e: i for i, e in enumerate(sources)}
        everything = rescore(scorer.align(kg, source, target, sources, candidates).float(), inference)  # (S, C)
        scores = everything[torch.tensor([row[e] for e in queries])]  # (Q, C)
    ranks = realistic_ranks(scores, torch.tensor([column[e] for e in queries]))
    return {**rank_metrics(ranks, ks), "candidates": len(candidates), "inference": inference}


def link_prediction(
    scorer: LinkScorer,
    kg: KGDataset,
    language: str,
    *,
    split: str = "test",
    ks: Sequence[int] = (1, 3, 10),
    batch_size: int = 256,
) -> dict[str, float]:
    """Filtered tail-prediction MRR / Hits@k of one split with labels in one language (PyKEEN's evaluator).

    Args:
        scorer: A :class:`LinkScorer` (:class:`EncoderScorer`, :class:`KGEScorer`).
        kg: The knowledge graph.
        language: Label language of queries and candidates.
        split: Which triples to rank.
        ks: The k of Hits@k.
        batch_size: Queries per scoring call.

    Returns:
        ``{"count", "mrr", "hits@1", "hits@3", "hits@10", "candidates"}`` (realistic ranks).
    """
    os.environ.setdefault("PYSTOW_HOME", _pystow_home())
    from pykeen.evaluation import RankBasedEvaluator

    candidates = sorted(e for e, labels in kg.entities.items() if language in labels)
    column = {e: i for i, e in enumerate(candidates)}
    relation = {r: i for i, r in enumerate(kg.relations)}
    known: dict[tuple[str, str], set[str]] = defaultdict(set)
    for h, r, t in kg.triples():
        known[(h, r)].add(t)
    triples = [(h, r, t) for h, r, t in kg.triples(split) if h in column and t in column]
    if not triples:
        return {**rank_metrics(torch.zeros(0), ks), "candidates": len(candidates)}
    evaluator = RankBasedEvaluator(filtered=True, metrics=["mrr", "hits_at_k"], metrics_kwargs=[{}, {}])
    for start in range(0, len(triples), batch_size):
        chunk = triples[start : start + batch_size]
        scores = scorer.link(kg, language, [(h, r) for h, r, _ in chunk], candidates).float().clone()  # (B, C)
        gold = torch.tensor([column[t] for _, _, t in chunk])
        true = scores.gather(1, gold[:, None])  # (B, 1)
        for row, (h, r, t) in enumerate(chunk):
            others = [column[o] for o in known[(h, r)] if o != t and o in column]
            scores[row, others] = float("nan")  # filtered setting: other correct objects do not count
        hrt = torch.tensor([[column[h], relation[r], column[t]] for h, r, t in chunk], dtype=torch.long)
        evaluator.process_scores_(hrt, target="tail", scores=scores, true_scores=true)
    results = evaluator.finalize()
    out = {
        "count": len(triples),
        "mrr": float(results.get_metric("tail.realistic.inverse_harmonic_mean_rank")),
        **{f"hits@{k}": float(results.get_metric(f"tail.realistic.hits_at_{k}")) for k in ks},
    }
    return {**out, "candidates": len(candidates)}


def _pystow_home() -> str:
    from ..paths import cache_home

    return str(cache_home("pystow"))


def per_language_table(rows: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str) -> list[str]:
    """Markdown rows ``| language | system1 | system2 ... |`` of one metric (percent)."""
    systems = list(dict.fromkeys(s for per in rows.values() for s in per))
    lines = [f"| language | {' | '.join(systems)} |", "|---|" + "---|" * len(systems)]
    for language, per in rows.items():
        cells = [f"{100 * per[s][metric]:.1f}" if s in per else "" for s in systems]
        lines.append(f"| {language} | {' | '.join(cells)} |")
    return lines
