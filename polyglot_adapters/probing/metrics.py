"""Probing metrics: P@1, P@10, MRR and consistency, macro-averaged over relations, with bootstrap intervals.

Per (fact, template) query the gold object's *filtered* realistic rank is taken among the
relation's candidates (other true objects of the same subject and relation left out; ties count
half). Per fact: P@k and reciprocal rank averaged over the templates it was asked with, and
**consistency**, the share of template pairs whose top-1 candidates (unfiltered) agree (the
paraphrase-robustness measure of the P-Adapter paper; undefined with one template). Per
relation: the mean over its facts; reported: the mean over relations (macro), so a relation
with many facts does not dominate.

**95% intervals** come from a bootstrap over facts, stratified by relation (each relation's
facts resampled with replacement, then macro-averaged), 1,000 replicates by default, percentile
method, seeded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..kg.evaluate import realistic_ranks
from .facts import Fact

__all__ = ["METRICS", "bootstrap_macro", "fact_metrics", "summarise"]

METRICS = ("p@1", "p@10", "mrr", "consistency")


def fact_metrics(
    facts: Sequence[Fact],
    scores: Sequence[Sequence[torch.Tensor]],
    candidates: Mapping[str, Sequence[str]],
    known: Mapping[tuple[str, str], set[str]],
) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Per-fact metric values and each query's top-1 candidate.

    Args:
        facts: The facts.
        scores: Per fact, one ``(C,)`` score vector per template it was asked with.
        candidates: Relation -> candidate entity ids (the columns of the score vectors).
        known: ``(subject, relation) -> true objects`` (for filtering).

    Returns:
        Metric name -> ``(F,)`` float64 values (consistency NaN for facts with one template), and
        per fact the top-1 entity of each template.
    """
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    top: list[list[str]] = []
    for fact, per_template in zip(facts, scores, strict=True):
        columns = candidates[fact.relation]
        gold = columns.index(fact.object)
        stacked = torch.stack(list(per_template)).double()  # (P, C)
        others = [c for c, e in enumerate(columns) if e in known.get((fact.subject, fact.relation), ()) and c != gold]
        filtered = stacked.clone()
        filtered[:, others] = float("nan")
        ranks = realistic_ranks(filtered, torch.full((stacked.shape[0],), gold, dtype=torch.long))  # (P,)
        values["p@1"].append(float((ranks <= 1).double().mean()))
        values["p@10"].append(float((ranks <= 10).double().mean()))
        values["mrr"].append(float((1.0 / ranks).mean()))
        best = stacked.argmax(1).tolist()
        top.append([columns[b] for b in best])
        pairs = [(a, b) for a in range(len(best)) for b in range(a + 1, len(best))]
        values["consistency"].append(sum(best[a] == best[b] for a, b in pairs) / len(pairs) if pairs else float("nan"))
    return {m: torch.tensor(v, dtype=torch.float64) for m, v in values.items()}, top


def bootstrap_macro(
    values: torch.Tensor, relations: Sequence[str], *, replicates: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Macro mean over relations and its stratified bootstrap 95% interval.

    Args:
        values: ``(F,)`` per-fact values (NaN entries are left out).
        relations: Each fact's relation.
        replicates: Bootstrap replicates.
        seed: Seed of the resampling.

    Returns:
        ``(mean, low, high)``; NaN when no value is defined.
    """
    groups: dict[str, list[int]] = {}
    for i, relation in enumerate(relations):
        if not math.isnan(float(values[i])):
            groups.setdefault(relation, []).append(i)
    if not groups:
        return float("nan"), float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    means, draws = [], []
    for members in groups.values():
        v = values[members]  # (n,)
        means.append(v.mean())
        pick = torch.randint(len(members), (replicates, len(members)), generator=generator)  # (R, n)
        draws.append(v[pick].mean(1))  # (R,)
    macro = torch.stack(draws).mean(0)  # (R,)
    low, high = torch.quantile(macro, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(torch.stack(means).mean()), low, high


def summarise(
    values: Mapping[str, torch.Tensor], facts: Sequence[Fact], *, replicates: int = 1000, seed: int = 0
) -> dict[str, object]:
    """Macro metrics with intervals, and per-relation means and fact counts.

    Returns:
        ``{"metrics": {name: {"value", "low", "high"}}, "relations": {relation: {"facts", name: value}}}``.
    """
    relations = [f.relation for f in facts]
    metrics = {}
    for name in METRICS:
        mean, low, high = bootstrap_macro(values[name], relations, replicates=replicates, seed=seed)
        metrics[name] = {"value": mean, "low": low, "high": high}
    per_relation: dict[str, dict[str, float]] = {}
    for relation in dict.fromkeys(relations):
        members = [i for i, r in enumerate(relations) if r == relation]
        row: dict[str, float] = {"facts": len(members)}
        for name in METRICS:
            v = values[name][members]
            v = v[~v.isnan()]
            row[name] = float(v.mean()) if v.numel() else float("nan")
        per_relation[relation] = row
    return {"metrics": metrics, "relations": per_relation}
