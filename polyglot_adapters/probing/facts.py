"""Facts to probe and their typed candidate sets, from a multilingual knowledge graph.

A fact is a triple whose subject and object both have a label in the probed language. Querying
is *typed*: the candidates of a relation are the objects that relation has anywhere in the KG
(all splits) and that are labelled in the language, so ``continent`` is asked among five
continents and ``currency`` among currencies. Ranking is *filtered*: the other true objects of
the same ``(subject, relation)`` (``Swahili`` for ``official_language(Tanzania)`` when the gold
is ``English``) are left out of the fact's ranking, as in filtered link prediction.

Example:
    >>> facts = probe_facts(kg, "sw", ["currency"], splits=("train",))
    >>> candidates = candidate_sets(kg, "sw", ["currency"])["currency"]
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence

from ..errors import ConfigError
from ..kg.datasets import SPLIT_NAMES, KGDataset

__all__ = ["Fact", "ProbeError", "candidate_sets", "check_relations", "known_objects", "probe_facts"]


class ProbeError(ConfigError):
    """A probe cannot run: unknown relation or language, empty candidate or fact set, bad template."""


@dataclasses.dataclass(frozen=True)
class Fact:
    """One triple to ask.

    Attributes:
        subject: Subject entity id.
        relation: Relation name.
        object: Gold object entity id.
        split: The KG split the triple comes from (``train`` facts are those KG adapters train on).
    """

    subject: str
    relation: str
    object: str
    split: str


def check_relations(kg: KGDataset, relations: Sequence[str] | None) -> list[str]:
    """The relations to probe (all of the KG's when ``None``), validated.

    Raises:
        ProbeError: If a relation is unknown or none is given.
    """
    if relations is None:
        return list(kg.relations)
    unknown = [r for r in relations if r not in kg.relations]
    if unknown or not relations:
        raise ProbeError(f"unknown relation(s) {unknown or relations!r}; the {kg.name} KG has {list(kg.relations)}")
    return list(dict.fromkeys(relations))


def _labelled(kg: KGDataset, entity: str, language: str) -> bool:
    return language in kg.entities.get(entity, {})


def candidate_sets(kg: KGDataset, language: str, relations: Sequence[str]) -> dict[str, list[str]]:
    """Per relation, the sorted entity ids that are its objects somewhere in the KG and labelled in ``language``.

    Raises:
        ProbeError: If a relation has no labelled candidate in the language.
    """
    objects: dict[str, set[str]] = defaultdict(set)
    for _, relation, tail in kg.triples():
        objects[relation].add(tail)
    out = {}
    for relation in relations:
        labelled = sorted(e for e in objects[relation] if _labelled(kg, e, language))
        if not labelled:
            raise ProbeError(f"relation {relation!r} has no candidate object labelled in {language!r}")
        out[relation] = labelled
    return out


def known_objects(kg: KGDataset) -> dict[tuple[str, str], set[str]]:
    """``(subject, relation) -> objects`` over all splits (for filtered ranking)."""
    known: dict[tuple[str, str], set[str]] = defaultdict(set)
    for head, relation, tail in kg.triples():
        known[(head, relation)].add(tail)
    return dict(known)


def probe_facts(
    kg: KGDataset,
    language: str,
    relations: Sequence[str],
    *,
    splits: Sequence[str] = ("train",),
    per_relation: int | None = None,
    seed: int = 0,
) -> list[Fact]:
    """The facts of ``splits`` whose subject and object are labelled in ``language``.

    Args:
        kg: The knowledge graph.
        language: Label language.
        relations: Relations to include (validated by :func:`check_relations`).
        splits: KG splits to draw from.
        per_relation: Keep at most this many facts per relation (a seeded sample), ``None``: all.
        seed: Seed of the sample.

    Returns:
        Facts ordered by relation (in ``relations`` order), then subject and object.

    Raises:
        ProbeError: If a split is unknown, no entity is labelled in the language, or no fact remains.
    """
    bad = [s for s in splits if s not in SPLIT_NAMES]
    if bad or not splits:
        raise ProbeError(f"unknown split(s) {bad or splits!r}; choose from {SPLIT_NAMES}")
    if language not in kg.languages():
        raise ProbeError(f"no entity of the {kg.name} KG is labelled in {language!r}")
    by_relation: Mapping[str, list[Fact]] = {r: [] for r in relations}
    for split in splits:
        for head, relation, tail in kg.splits[split]:
            if relation in by_relation and _labelled(kg, head, language) and _labelled(kg, tail, language):
                by_relation[relation].append(Fact(head, relation, tail, split))
    facts: list[Fact] = []
    for relation in relations:
        chosen = sorted(by_relation[relation], key=lambda f: (f.subject, f.object))
        if per_relation is not None and len(chosen) > per_relation:
            keep = sorted(random.Random(f"{seed}/{relation}").sample(range(len(chosen)), per_relation))
            chosen = [chosen[i] for i in keep]
        facts.extend(chosen)
    if not facts:
        raise ProbeError(f"no {'/'.join(splits)} fact of {list(relations)} has both entities labelled in {language!r}")
    return facts
