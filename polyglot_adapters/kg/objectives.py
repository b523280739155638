"""The four MLKG adapter objectives (EP, TP, ES, TS) as contrastive tasks on the shared training loop.

Every objective is a list of :class:`ContrastiveExample` (a query text, its positive text, the keys
of all correct answers and a pool of hard negatives), one collate and one loss:

* **EP** (phrase-level entity alignment): an entity's label in one language against its label in
  another; symmetric InfoNCE over in-batch and hard negatives.
* **TP** (phrase-level triple completion): ``"(subject label, relation)"`` against the object's
  label; other true objects of the same (subject, relation) are never negatives.
* **ES** / **TS**: the same with per-language training templates (:mod:`.templates`): entities in
  their kind's sentence, triples as cloze sentences ``"Sarafu ya Ufaransa ni ___."`` against the
  object in its sentence.

Hard negatives are mined once, deterministically: the most similar labels (character n-grams,
:func:`.ngram.ngram_similarity`) among entities of the positive's kind in the positive's language,
so that ``Niger``/``Nigeria`` or ``Guinea``/``Guinea-Bissau`` meet in training. Each collate call
draws its hard negatives from that pool with the example's seed (so batches are the same however
the loop shards or resumes them).

Example:
    >>> train_entities, test_entities = alignment_split(kg)
    >>> examples = entity_examples(kg, [("en", "sw")], entities=train_entities)
    >>> collate = ContrastiveCollate(tokenizer, hard_negatives=4)
    >>> train(am, examples, collate, ContrastiveLoss(symmetric=True), TrainConfig(steps=200, batch_size=32))
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from .datasets import KGDataset, KGError
from .encode import DEFAULT_MAX_LENGTH, DEFAULT_PREFIX, pooled, tokenize_texts
from .ngram import ngram_similarity
from .templates import check_templates, verbalise_entity, verbalise_triple

__all__ = [
    "BLANK",
    "FORMATS",
    "OBJECTIVES",
    "ContrastiveCollate",
    "ContrastiveExample",
    "ContrastiveLoss",
    "Verbaliser",
    "alignment_split",
    "entity_examples",
    "objective_format",
    "triple_examples",
]

OBJECTIVES = ("ep", "tp", "es", "ts")
FORMATS = ("phrase", "typed", "sentence")
BLANK = "___"
"""The object slot of a cloze query (a plain blank: the contrastive encoders read it as text)."""


def objective_format(objective: str) -> str:
    """``phrase`` for EP/TP, ``sentence`` for ES/TS.

    Raises:
        ConfigError: For an unknown objective.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown KG objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    return "phrase" if objective in ("ep", "tp") else "sentence"


@dataclasses.dataclass(frozen=True)
class Verbaliser:
    """How entities and (subject, relation) queries become text, at phrase or sentence level.

    Attributes:
        kg: The knowledge graph (labels and kinds).
        form: ``phrase`` (bare labels; queries ``"(France, official language)"``), ``typed`` (labels
            tagged with the entity's kind, ``"language: Arabic"`` against ``"script: Arabic"``: the
            kind is part of the KG and the only way to tell apart entities that share a label;
            queries as ``phrase``) or ``sentence`` (training templates; queries are cloze
            sentences with :data:`BLANK`).
    """

    kg: KGDataset
    form: str = "phrase"

    def __post_init__(self) -> None:
        if self.form not in FORMATS:
            raise ConfigError(f"format must be one of {FORMATS}, got {self.form!r}")

    def check(self, languages: Iterable[str], relations: Iterable[str] = ()) -> None:
        """Raises :class:`.templates.TemplateError` if a sentence-level language lacks a template."""
        if self.form == "sentence":
            check_templates(languages, relations, sorted(set(self.kg.kinds.values())))

    def entity(self, entity: str, language: str) -> str:
        """The entity as text in a language (its label must exist)."""
        label = self.kg.entities[entity][language]
        if self.form == "phrase":
            return label
        if self.form == "typed":
            return f"{self.kg.kinds[entity]}: {label}"
        return verbalise_entity(language, self.kg.kinds[entity], label)

    def query(self, subject: str, relation: str, language: str) -> str:
        """The text of the query ``(subject, relation, ?)``."""
        label = self.kg.entities[subject][language]
        if self.form in ("phrase", "typed"):
            return f"({label}, {relation.replace('_', ' ')})"
        return verbalise_triple(language, relation, label, BLANK)


@dataclasses.dataclass(frozen=True)
class ContrastiveExample:
    """One query with its positive, the keys of every correct answer, and hard negatives.

    Attributes:
        query: Query text.
        positive: Text of the correct answer that is the training target.
        key: The positive's key (an entity id).
        answers: Keys that are also correct: never used as negatives for this query.
        negatives: Hard-negative pool as ``(key, text)`` pairs, hardest first.
        relation: Relation index (for KGE heads), or -1.
    """

    query: str
    positive: str
    key: str
    answers: frozenset[str]
    negatives: tuple[tuple[str, str], ...] = ()
    relation: int = -1


def alignment_split(kg: KGDataset, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[list[str], list[str]]:
    """Splits entities into alignment-training and alignment-test entities by a hash of their ids.

    Stable under adding or removing other entities (each entity's side depends on its id alone).

    Returns:
        ``(train_entities, test_entities)``, each sorted.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    train, test = [], []
    for entity in sorted(kg.entities):
        digest = hashlib.sha256(f"{seed}:{entity}".encode()).digest()
        (test if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else train).append(entity)
    return train, test


def _mine(
    kg: KGDataset,
    verbaliser: Verbaliser,
    language: str,
    targets: Sequence[str],
    pool_size: int,
) -> dict[str, tuple[tuple[str, str], ...]]:
    """For each target entity: the ``pool_size`` entities of its kind whose labels in ``language`` are closest."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for entity in sorted(kg.entities):
        if language in kg.entities[entity]:
            by_kind[kg.kinds[entity]].append(entity)
    wanted: dict[str, list[str]] = defaultdict(list)
    for entity in dict.fromkeys(targets):
        wanted[kg.kinds[entity]].append(entity)
    pools: dict[str, tuple[tuple[str, str], ...]] = {}
    for kind, entities in wanted.items():
        candidates = by_kind[kind]
        if pool_size == 0 or len(candidates) < 2:
            pools.update({e: () for e in entities})
            continue
        labels = [kg.entities[e][language] for e in candidates]
        scores = ngram_similarity([kg.entities[e][language] for e in entities], labels)  # (E, K)
        index = {e: i for i, e in enumerate(candidates)}
        for row, entity in enumerate(entities):
            scores[row, index[entity]] = -1.0
        top = scores.topk(min(pool_size, len(candidates) - 1), dim=1).indices  # (E, pool)
        for row, entity in enumerate(entities):
            chosen = [candidates[int(c)] for c in top[row]]
            pools[entity] = tuple((c, verbaliser.entity(c, language)) for c in chosen)
    return pools


def entity_examples(
    kg: KGDataset,
    pairs: Sequence[tuple[str, str]],
    *,
    entities: Iterable[str] | None = None,
    form: str = "phrase",
    pool_size: int = 8,
) -> list[ContrastiveExample]:
    """EP (``phrase``) or ES (``sentence``) examples: an entity in language ``a`` against itself in ``b``.

    Args:
        kg: The knowledge graph.
        pairs: Language pairs ``(a, b)``; entities without a label in both are skipped.
        entities: Entities to use (e.g. :func:`alignment_split`'s training side); default all.
        form: ``phrase``, ``typed`` or ``sentence`` (:class:`Verbaliser`).
        pool_size: Hard negatives mined per entity and pair.

    Raises:
        ConfigError: If a pair repeats a language, or no example results.
        TemplateError: If ``form`` is ``sentence`` and a language lacks a template.
    """
    verbaliser = Verbaliser(kg, form)
    chosen = sorted(kg.entities) if entities is None else sorted(set(entities))
    unknown = [e for e in chosen if e not in kg.entities]
    if unknown:
        raise KGError(f"dataset {kg.name!r}: unknown entities {unknown[:3]}")
    verbaliser.check({lang for pair in pairs for lang in pair})
    examples = []
    for a, b in pairs:
        if a == b:
            raise ConfigError(f"language pair ({a}, {b}) aligns a language with itself")
        both = [e for e in chosen if a in kg.entities[e] and b in kg.entities[e]]
        pools = _mine(kg, verbaliser, b, both, pool_size)
        examples.extend(
            ContrastiveExample(
                query=verbaliser.entity(e, a),
                positive=verbaliser.entity(e, b),
                key=e,
                answers=frozenset({e}),
                negatives=pools[e],
            )
            for e in both
        )
    if not examples:
        raise ConfigError(f"no entity of {kg.name!r} has labels in both languages of any pair {list(pairs)}")
    return examples


def triple_examples(
    kg: KGDataset,
    languages: Sequence[str],
    *,
    split: str = "train",
    form: str = "phrase",
    pool_size: int = 8,
    known: Iterable[tuple[str, str, str]] | None = None,
) -> list[ContrastiveExample]:
    """TP (``phrase``) or TS (``sentence``) examples: the query ``(subject, relation)`` against the object.

    Args:
        kg: The knowledge graph.
        languages: Label languages; a triple yields one example per language labelling both entities.
        split: Which triples to train on.
        form: ``phrase``, ``typed`` (objects tagged with their kind) or ``sentence``.
        pool_size: Hard negatives per object and language (the object's kind, closest labels; known
            answers of the query are dropped from the pool).
        known: Triples whose objects count as correct answers (default: the ``split``'s triples).

    Raises:
        ConfigError: If no example results.
        TemplateError: If ``form`` is ``sentence`` and a language lacks a relation's template.
    """
    verbaliser = Verbaliser(kg, form)
    triples = kg.triples(split)
    verbaliser.check(languages, sorted({r for _, r, _ in triples}))
    answers: dict[tuple[str, str], set[str]] = defaultdict(set)
    for h, r, t in triples if known is None else known:
        answers[(h, r)].add(t)
    relation_index = {r: i for i, r in enumerate(kg.relations)}
    examples = []
    for language in languages:
        usable = [(h, r, t) for h, r, t in triples if language in kg.entities[h] and language in kg.entities[t]]
        pools = _mine(kg, verbaliser, language, [t for _, _, t in usable], pool_size + 4)
        for h, r, t in usable:
            correct = frozenset(answers[(h, r)] | {t})
            examples.append(
                ContrastiveExample(
                    query=verbaliser.query(h, r, language),
                    positive=verbaliser.entity(t, language),
                    key=t,
                    answers=correct,
                    negatives=tuple(n for n in pools[t] if n[0] not in correct)[:pool_size],
                    relation=relation_index[r],
                )
            )
    if not examples:
        raise ConfigError(f"no {split} triple of {kg.name!r} has both entities labelled in {list(languages)}")
    return examples


class ContrastiveCollate:
    """``(examples, seeds) -> batch``: tokenized queries, candidates (positives, then hard negatives), masks.

    Args:
        tokenizer: The encoder's tokenizer.
        hard_negatives: Hard negatives drawn per example from its pool (fewer if the pool is smaller).
        prefix: Text prefix of every query and candidate (see :mod:`.encode`).
        max_length: Tokens per text.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        hard_negatives: int = 4,
        prefix: str = DEFAULT_PREFIX,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        if not isinstance(hard_negatives, int) or hard_negatives < 0:
            raise ConfigError(f"hard_negatives must be an integer >= 0, got {hard_negatives!r}")
        self.tokenizer, self.hard_negatives, self.prefix, self.max_length = (
            tokenizer,
            hard_negatives,
            prefix,
            max_length,
        )

    def __call__(self, examples: list[ContrastiveExample], seeds: list[int]) -> dict[str, Any]:
        """Tokenizes a batch; candidates are the positives (one per row, in order), then the hard negatives.

        Returns:
            ``queries`` and ``candidates`` (token dicts), ``answers`` ``(B, C)`` (true where a
            candidate is a correct answer of a query; the diagonal is the target), ``same``
            ``(B, B)`` (two rows' positives have the same key) and ``relations`` ``(B,)``.
        """
        keys = [ex.key for ex in examples]
        texts = [ex.positive for ex in examples]
        for ex, seed in zip(examples, seeds, strict=True):
            if ex.negatives and self.hard_negatives:
                generator = torch.Generator().manual_seed(seed)
                take = torch.randperm(len(ex.negatives), generator=generator)[: self.hard_negatives]
                for i in sorted(int(j) for j in take):
                    keys.append(ex.negatives[i][0])
                    texts.append(ex.negatives[i][1])
        answers = torch.tensor([[k in ex.answers for k in keys] for ex in examples])  # (B, C)
        answers[torch.arange(len(examples)), torch.arange(len(examples))] = True
        same = torch.tensor([[a.key == b.key for b in examples] for a in examples])  # (B, B)
        return {
            "queries": tokenize_texts(
                self.tokenizer, [ex.query for ex in examples], prefix=self.prefix, max_length=self.max_length
            ),
            "candidates": tokenize_texts(self.tokenizer, texts, prefix=self.prefix, max_length=self.max_length),
            "answers": answers,
            "same": same,
            "relations": torch.tensor([ex.relation for ex in examples], dtype=torch.long),
        }


class ContrastiveLoss:
    """InfoNCE of each query against its positive among all candidates of the batch (the loop's ``loss_fn``).

    Other correct answers of a query are left out of its softmax (they are not negatives). With
    ``symmetric``, each positive is also classified against the batch's queries (EP/ES: the two
    languages play both roles), again without rows of the same key.

    Args:
        temperature: Softmax temperature on cosine similarities.
        symmetric: Add the positive-to-query direction and average the two.
    """

    def __init__(self, temperature: float = 0.05, *, symmetric: bool = False) -> None:
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature!r}")
        self.temperature, self.symmetric = temperature, symmetric

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """Mean InfoNCE loss over the batch's queries (and positives, if symmetric)."""
        queries = pooled(model, batch["queries"])  # (B, H)
        candidates = pooled(model, batch["candidates"])  # (C, H)
        size = queries.shape[0]
        target = torch.arange(size, device=queries.device)
        diagonal = torch.eye(size, dtype=torch.bool, device=queries.device)
        answers = batch["answers"].clone()
        answers[:, :size] &= ~diagonal  # (B, C): correct answers other than the row's own positive
        logits = (queries @ candidates.T / self.temperature).masked_fill(answers, float("-inf"))  # (B, C)
        loss = F.cross_entropy(logits, target)
        if self.symmetric:
            back = (candidates[:size] @ queries.T / self.temperature).masked_fill(
                batch["same"] & ~diagonal, float("-inf")
            )
            loss = 0.5 * (loss + F.cross_entropy(back, target))
        return loss
