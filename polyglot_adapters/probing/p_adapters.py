"""Training P-Adapters and their baselines on probing facts, and evaluating them on held-out facts and prompts.

The setting of the P-Adapter paper, on the MLKG: the facts (training triples labelled in the
languages) are split per relation into P-Adapter *training* facts and *held-out* facts, the same
split in every language (by a seeded hash of the triple). A P-Adapter trains on training facts
asked with the *training* paraphrases, in all languages at once, with the masked LM (and any KG
adapters) frozen; it is evaluated on held-out facts asked with the *held-out* paraphrases (the
out-of-distribution prompts setting), against the same model queried with those natural prompts.

Loss: for each example, the mean over the gold object's tokens of the negative log-probability
at its mask, normalised over the relation's candidate vocabulary (the softmax the probe scores
with); the mixture-of-experts variant adds the router's cross-entropy over relations. With a
consistency weight, a batch holds whole facts (every training paraphrase of each) and a
consistency term pulls the paraphrases of one fact towards the same answer: the symmetric KL
divergence between their distributions at each mask (as R-Drop does between two dropout masks;
Elazar et al. 2021 train a masked LM for consistency across paraphrases with a pairwise divergence).

Example:
    >>> am = AdaptedModel(mlm); am.load_adapter("runs/kg/kg"); am.set_active("kg")
    >>> report = train_p_adapter(am, tokenizer, kg, PAdapterSettings(variant="rewrite"), out_dir="runs/pa")
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..composition import Stack
from ..errors import ConfigError
from ..io import atomic_write_json
from ..kg.datasets import KGDataset
from ..methods.p_adapter import PAdapterConfig, router_loss
from ..model import AdaptedModel
from ..models.mlm import decode_tokens
from ..training import TrainConfig, train
from .engine import PRECISIONS, build_queries, encode_rows, head_host, pad_rows, probe_frame, query_row
from .facts import Fact, candidate_sets, check_relations, probe_facts
from .templates import load_templates

__all__ = [
    "PAdapterSettings",
    "PromptExample",
    "PromptLoss",
    "cap_per_relation",
    "fact_groups",
    "fact_split",
    "prompt_examples",
    "train_p_adapter",
]

PA_NAME = "pa"


@dataclasses.dataclass(frozen=True)
class PAdapterSettings:
    """A P-Adapter training run.

    Attributes:
        variant: ``rewrite``, ``prefix`` (P-Adapters), ``ptuning`` or ``moe`` (baselines).
        languages: Languages whose facts and training paraphrases train it.
        relations: Relations (``None``: all of the KG's).
        held_out_fraction: Share of each relation's facts kept for evaluation.
        per_relation: At most this many facts per relation and language (``None``: all).
        steps: Optimizer steps.
        batch_size: Training items per step: rows, or with ``consistency_weight`` whole facts (each
            with all its training paraphrases).
        lr: Peak learning rate.
        prompt_length: Prompt slots of ``prefix``, ``ptuning`` and ``moe``.
        hidden: BiLSTM width of ``rewrite`` and ``prefix``.
        router_weight: Weight of the ``moe`` router's cross-entropy.
        consistency_weight: Weight of the paraphrase-consistency term (0: the token NLL alone, a
            batch of independent rows).
        precision: ``fp32`` or ``bf16`` (the training loop's autocast; the candidate softmax of
            the loss stays in the head's dtype).
        seed: Seeds the fact split, initialisation and data order.
    """

    variant: str = "rewrite"
    languages: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "hi", "ja", "ar", "sw", "am", "yo")
    relations: tuple[str, ...] | None = None
    held_out_fraction: float = 0.5
    per_relation: int | None = None
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    prompt_length: int = 4
    hidden: int = 256
    router_weight: float = 1.0
    consistency_weight: float = 0.0
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in ("rewrite", "prefix", "ptuning", "moe"):
            raise ConfigError(f"unknown P-Adapter variant {self.variant!r}; choose rewrite, prefix, ptuning or moe")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ConfigError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")
        if not self.languages or self.steps < 1 or self.batch_size < 1:
            raise ConfigError("languages must be non-empty, steps and batch_size >= 1")
        if self.consistency_weight < 0:
            raise ConfigError(f"consistency_weight must be >= 0, got {self.consistency_weight}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")

    def config(self, num_relations: int) -> PAdapterConfig:
        """The adapter's config for a KG with ``num_relations`` relations."""
        if self.variant == "rewrite":
            return dataclasses.replace(PAdapterConfig.rewrite(), hidden=self.hidden)
        if self.variant == "prefix":
            return dataclasses.replace(PAdapterConfig.prefix(self.prompt_length), hidden=self.hidden)
        if self.variant == "ptuning":
            return PAdapterConfig.ptuning(num_relations, self.prompt_length)
        return PAdapterConfig.moe(num_relations, self.prompt_length)

    @property
    def slots(self) -> int:
        """Prompt slots the variant's rows carry."""
        return 0 if self.variant == "rewrite" else self.prompt_length


def fact_split(facts: Sequence[Fact], fraction: float, seed: int = 0) -> tuple[list[Fact], list[Fact]]:
    """Splits facts into (training, held-out) by a seeded hash of the triple: the same in every language."""

    def draw(fact: Fact) -> float:
        digest = hashlib.sha256(f"{seed}/{fact.subject}/{fact.relation}/{fact.object}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    train_facts = [f for f in facts if draw(f) >= fraction]
    held_out = [f for f in facts if draw(f) < fraction]
    return train_facts, held_out


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One training row: a query row with masks, its gold tokens and its relation.

    Attributes:
        ids: Row token ids (frame, slots, context, one mask per gold token).
        keep: Positions a rewriting P-Adapter keeps.
        start: Position of the first mask.
        target: Positions of the gold tokens in the relation's candidate vocabulary.
        relation: Relation index.
        fact: Index of its fact (language and triple) among the examples' facts.
    """

    ids: tuple[int, ...]
    keep: tuple[int, ...]
    start: int
    target: tuple[int, ...]
    relation: int
    fact: int


def prompt_examples(
    tokenizer: Any,
    kg: KGDataset,
    facts_by_language: dict[str, Sequence[Fact]],
    relations: Sequence[str],
    *,
    kinds: Sequence[str] = ("train",),
    slots: int = 0,
) -> tuple[list[PromptExample], dict[int, torch.Tensor]]:
    """Training examples for every fact and template of ``kinds``, and each relation's candidate vocabulary.

    Returns:
        The examples (the rows of one fact are consecutive) and, per relation index, the sorted
        ``(K,)`` token ids its softmax covers (every token of every candidate in every template and language).
    """
    frame = probe_frame(tokenizer)
    raw: list[tuple[list[int], list[int], int, tuple[int, ...], int, int]] = []
    vocab: dict[int, set[int]] = defaultdict(set)
    fact_index = 0
    for language, facts in facts_by_language.items():
        if not facts:
            continue
        templates = load_templates([language], relations, kinds)
        candidates = candidate_sets(kg, language, relations)
        queries, tables = build_queries(
            tokenizer, facts, templates, lambda e, lang=language: kg.entities[e][lang], candidates, list(kg.relations)
        )
        by_relation = defaultdict(int)
        for t in templates:
            by_relation[t.relation] += 1
        q = 0
        for fact in facts:
            gold = candidates[fact.relation].index(fact.object)
            for _ in range(by_relation[fact.relation]):
                query = queries[q]
                table = tables[query.table]
                tokens = table.tokens[gold]
                ids, keep, start = query_row(query, len(tokens), slots, frame)
                raw.append((ids, keep, start, tokens, query.relation, fact_index))
                vocab[query.relation].update(int(v) for v in table.vocab)
                q += 1
            fact_index += 1
    vocabs = {r: torch.tensor(sorted(v), dtype=torch.long) for r, v in vocab.items()}
    where = {r: {int(t): i for i, t in enumerate(v)} for r, v in vocabs.items()}
    examples = [
        PromptExample(tuple(ids), tuple(keep), start, tuple(where[r][t] for t in tokens), r, fact)
        for ids, keep, start, tokens, r, fact in raw
    ]
    return examples, vocabs


def fact_groups(examples: Sequence[PromptExample]) -> list[tuple[PromptExample, ...]]:
    """The examples grouped by fact (the training loop's items when a batch must hold whole facts)."""
    groups: dict[int, list[PromptExample]] = defaultdict(list)
    for example in examples:
        groups[example.fact].append(example)
    return [tuple(rows) for rows in groups.values()]


class PromptCollate:
    """``(groups, seeds) -> batch``: every row of the groups padded, with masks, targets and paraphrase pairs.

    A group is a fact's rows (:func:`fact_groups`) or a single row.
    """

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def __call__(self, groups: Sequence[Sequence[PromptExample]], seeds: Sequence[int]) -> dict[str, torch.Tensor]:
        """Pads the rows.

        ``mask_row``/``mask_col``/``mask_target`` list every gold token with its row; ``pair_a``/
        ``pair_b`` index into that list the masks at the same gold-token position in two
        paraphrases of one fact (rows of a group whose gold tokens are the same), for the consistency term.
        """
        examples = [e for rows in groups for e in rows]
        batch = pad_rows([e.ids for e in examples], [e.keep for e in examples], self.pad)
        rows, cols, targets, pair_a, pair_b = [], [], [], [], []
        first = 0
        for group in groups:
            starts = []  # index of each row's first mask in the mask list
            for i, e in enumerate(group):
                starts.append(len(rows))
                rows += [first + i] * len(e.target)
                cols += range(e.start, e.start + len(e.target))
                targets += e.target
            for a in range(len(group)):
                for b in range(a + 1, len(group)):
                    if group[a].target == group[b].target:
                        pair_a += range(starts[a], starts[a] + len(group[a].target))
                        pair_b += range(starts[b], starts[b] + len(group[b].target))
            first += len(group)
        batch["relations"] = torch.tensor([e.relation for e in examples], dtype=torch.long)
        batch["mask_row"] = torch.tensor(rows, dtype=torch.long)
        batch["mask_col"] = torch.tensor(cols, dtype=torch.long)
        batch["mask_target"] = torch.tensor(targets, dtype=torch.long)
        batch["pair_a"] = torch.tensor(pair_a, dtype=torch.long)
        batch["pair_b"] = torch.tensor(pair_b, dtype=torch.long)
        return batch


class PromptLoss:
    """Mean over examples of the mean token NLL under each relation's candidate-vocabulary softmax.

    Plus, with ``router_weight``, the router's cross-entropy, and with ``consistency_weight``, the
    mean over paired masks (the batch's ``pair_a``/``pair_b``) of the symmetric KL divergence
    ``(KL(p || q) + KL(q || p)) / 2`` between two paraphrases' candidate-vocabulary distributions.
    """

    def __init__(
        self, vocabs: dict[int, torch.Tensor], *, router_weight: float = 0.0, consistency_weight: float = 0.0
    ) -> None:
        self.vocabs = vocabs
        self.router_weight = router_weight
        self.consistency_weight = consistency_weight

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss of one batch (see the class)."""
        hidden = encode_rows(model, batch["input_ids"], batch["attention_mask"], batch["keep"], batch["relations"])
        at_masks = hidden[batch["mask_row"], batch["mask_col"]]  # (M, H)
        relation_of = batch["relations"][batch["mask_row"]]  # (M,)
        nll = torch.zeros(at_masks.shape[0], device=hidden.device)
        divergence = torch.zeros(batch["pair_a"].shape[0], device=hidden.device)
        pair_relation = relation_of[batch["pair_a"]]  # (P,): both masks of a pair share the fact's relation
        local = torch.empty_like(relation_of)  # mask index -> row in its relation's log-probabilities
        host = head_host(model)
        for r in relation_of.unique().tolist():
            sel = relation_of == r
            logits = decode_tokens(host, at_masks[sel], self.vocabs[r].to(hidden.device)).float()  # (m, K)
            log_probs = logits.log_softmax(-1)
            nll[sel] = -log_probs.gather(1, batch["mask_target"][sel, None])[:, 0]
            pairs = pair_relation == r
            if self.consistency_weight and bool(pairs.any()):
                local[sel] = torch.arange(int(sel.sum()), device=hidden.device)
                p = log_probs[local[batch["pair_a"][pairs]]]  # (p, K)
                q = log_probs[local[batch["pair_b"][pairs]]]  # (p, K)
                divergence[pairs] = 0.5 * ((p.exp() - q.exp()) * (p - q)).sum(-1)  # (KL(p||q) + KL(q||p)) / 2
        rows = batch["input_ids"].shape[0]
        per_row = torch.zeros(rows, device=hidden.device).index_add(0, batch["mask_row"], nll)
        counts = torch.zeros(rows, device=hidden.device).index_add(0, batch["mask_row"], torch.ones_like(nll))
        loss = (per_row / counts).mean()
        if self.consistency_weight and divergence.numel():
            loss = loss + self.consistency_weight * divergence.mean()
        if self.router_weight:
            loss = loss + self.router_weight * router_loss(model, batch["relations"])
        return loss


def train_p_adapter(
    model: AdaptedModel,
    tokenizer: Any,
    kg: KGDataset,
    settings: PAdapterSettings,
    *,
    out_dir: str | os.PathLike[str],
    name: str = PA_NAME,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Adds a P-Adapter (or baseline) under the model's active composition and trains only it.

    Args:
        model: An ``AdaptedModel`` around a masked LM; its active composition (e.g. KG adapters)
            stays active and frozen, the P-Adapter is stacked before it.
        tokenizer: The model's fast tokenizer.
        kg: The KG whose ``train`` split gives the facts.
        settings: The run's settings.
        out_dir: Where the loop's checkpoints, ``run.json``, the adapter (``out_dir/<name>``) and
            ``report.json`` go.
        name: The P-Adapter's adapter name.
        progress: Show the loop's progress bar.
        echo: Where one-line progress messages go.

    Returns:
        The report: settings, fact counts, examples, trainable parameters, loss, seconds, and the
        held-out facts per language (as ``[subject, relation, object]``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    relations = check_relations(kg, settings.relations)
    config = settings.config(len(kg.relations))
    facts_by_language, held_out = {}, {}
    for language in settings.languages:
        facts = probe_facts(kg, language, relations, splits=("train",), per_relation=None, seed=settings.seed)
        train_facts, test_facts = fact_split(facts, settings.held_out_fraction, settings.seed)
        if settings.per_relation is not None:
            train_facts = cap_per_relation(train_facts, settings.per_relation)
        facts_by_language[language], held_out[language] = train_facts, test_facts
    examples, vocabs = prompt_examples(tokenizer, kg, facts_by_language, relations, slots=settings.slots)
    atomic_write_json(out / "run.json", {"settings": dataclasses.asdict(settings)})
    previous = model.active
    model.add_adapter(name, config)
    model.set_active(Stack(name, previous) if previous is not None else name)
    model.train_adapters(name)
    trainable = model.num_parameters(name)
    total = sum(p.numel() for p in model.model.parameters())
    if echo is not None:
        echo(f"{settings.variant}: {len(examples)} examples, {trainable:,} trainable parameters")
    started = time.perf_counter()
    result = train(
        model,
        fact_groups(examples) if settings.consistency_weight else [(e,) for e in examples],
        PromptCollate(probe_frame(tokenizer)[2]),
        PromptLoss(
            vocabs,
            router_weight=settings.router_weight if settings.variant == "moe" else 0.0,
            consistency_weight=settings.consistency_weight,
        ),
        TrainConfig(
            steps=settings.steps,
            lr=settings.lr,
            batch_size=settings.batch_size,
            warmup_steps=max(1, settings.steps // 10),
            seed=settings.seed,
            save_every=max(1, settings.steps // 4),
            precision=settings.precision,
        ),
        out_dir=out / "train",
        progress=progress,
    )
    seconds = time.perf_counter() - started
    model.eval()
    model.save_adapter(name, out / name)
    report = {
        "settings": dataclasses.asdict(settings),
        "examples": len(examples),
        "train_facts": {lang: len(f) for lang, f in facts_by_language.items()},
        "held_out_facts": {lang: [[f.subject, f.relation, f.object] for f in fs] for lang, fs in held_out.items()},
        "trainable_parameters": trainable,
        "trainable_percent": 100.0 * trainable / total,
        "last_loss": result.last_loss,
        "seconds": seconds,
    }
    atomic_write_json(out / "report.json", report)
    return report


def cap_per_relation(facts: Sequence[Fact], per_relation: int) -> list[Fact]:
    """The first ``per_relation`` facts of each relation, in the given order."""
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for fact in facts:
        if seen[fact.relation] < per_relation:
            kept.append(fact)
            seen[fact.relation] += 1
    return kept
