"""The masked-entity variant of the MLKG triple objective: KG facts trained into an adapter through the masked-LM head.

A triple ``(subject, relation, object)`` becomes a text with both labels filled in, and the
object's tokens, *as tokenised inside that text* (:func:`.cloze.split_by_spans`), are replaced by
as many mask tokens; the masked-LM head must predict them. Two forms per triple and language:

* **phrase** (:data:`PHRASE_FORMAT`, every language in ``languages``): ``"Ufaransa ; currency ; Yuro"``:
  the two labels around the relation's English name (underscores as spaces), separated by
  ``" ; "``, so no language needs a template;
* **sentence** (``sentence_languages``): the training template of :mod:`.templates`
  (``kg-train-v1``), ``"Die Währung von Frankreich ist Euro."``.

:func:`train_masked_kg_adapter` trains one bottleneck adapter (knowledge preset) on a frozen
BERT-layout masked-LM (:func:`polyglot_adapters.models.default_mlm`) with the shared loop
(checkpoints and exact resume under ``out_dir``), optionally stacked on a frozen saved language
adapter. The low-resource label languages of :data:`.adapters.HELD_OUT_LANGUAGES` are not among
the default languages: probing them measures transfer.

Example:
    >>> mlm, tokenizer = default_mlm()
    >>> result = train_masked_kg_adapter(mlm, tokenizer, load_kg("cldr"), MaskedKGSettings(), out_dir="runs/kg-mlm")
    >>> test = masked_entity_examples(load_kg("cldr"), languages=("en",), sentence_languages=(), split="test")
    >>> masked_entity_accuracy(result.model, tokenizer, test)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..composition import Stack
from ..errors import ConfigError
from ..io import atomic_write_json
from ..methods.bottleneck import BottleneckConfig
from ..model import AdaptedModel
from ..models.mlm import masked_lm_loss
from ..training import TrainConfig, eval_mode, train
from ..training.checkpoint import check_run_record
from ..training.language_adapter import non_embedding_parameters
from .adapters import HELD_OUT_LANGUAGES
from .cloze import split_by_spans
from .datasets import KGDataset, KGError
from .encode import frame_ids
from .templates import TEMPLATE_SET, check_templates, verbalise_triple

__all__ = [
    "BASE_ADAPTER_NAME",
    "PHRASE_FORMAT",
    "REPORT_SCHEMA",
    "MaskedEntityCollate",
    "MaskedEntityExample",
    "MaskedKGResult",
    "MaskedKGSettings",
    "masked_entity_accuracy",
    "masked_entity_examples",
    "masked_entity_loss",
    "train_masked_kg_adapter",
]

PHRASE_FORMAT = "{s} ; {r} ; {o}"
"""Phrase-level text of a triple: subject label, relation name (``_`` as spaces), object label."""
REPORT_SCHEMA = "polyglot-adapters/masked-kg-adapter-report"
BASE_ADAPTER_NAME = "language"
"""Name under which :func:`train_masked_kg_adapter` attaches its frozen ``base_adapters``."""
_SLOTS = re.compile(r"(\{s\}|\{o\})")


@dataclasses.dataclass(frozen=True)
class MaskedEntityExample:
    """A triple as a filled text whose object is the masked-LM target.

    Attributes:
        text: The text with both labels filled in.
        object_span: ``(start, end)`` characters of the object's label in ``text``.
        subject_span: ``(start, end)`` characters of the subject's label in ``text``.
        relation: Relation name.
        subject: Subject entity id.
        object: Object entity id.
        language: Label language.
        form: ``phrase`` (:data:`PHRASE_FORMAT`) or ``sentence`` (training template).
    """

    text: str
    object_span: tuple[int, int]
    subject_span: tuple[int, int]
    relation: str
    subject: str
    object: str
    language: str
    form: str


def _fill(template: str, subject: str, obj: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Fills ``{s}`` and ``{o}`` (once each) and returns the text with the subject's and object's spans."""
    text, spans = "", {}
    for part in _SLOTS.split(template):
        if part in ("{s}", "{o}"):
            label = subject if part == "{s}" else obj
            spans[part] = (len(text), len(text) + len(label))
            text += label
        else:
            text += part
    return text, spans["{s}"], spans["{o}"]


def masked_entity_examples(
    kg: KGDataset,
    *,
    languages: Sequence[str],
    sentence_languages: Sequence[str],
    split: str = "train",
    seed: int = 0,
) -> list[MaskedEntityExample]:
    """Phrase examples in ``languages`` and sentence examples in ``sentence_languages`` for a split's triples.

    A triple yields an example in a language only where both its subject and its object have a
    label there.

    Args:
        kg: The knowledge graph.
        languages: Label languages of phrase-level examples (:data:`PHRASE_FORMAT`).
        sentence_languages: Label languages of sentence-level examples (need ``kg-train-v1`` templates).
        split: ``train``, ``valid`` or ``test``.
        seed: Seeds the order of the returned list (shuffled, so that any prefix is a fair sample).

    Raises:
        KGError: If a language has no label in the dataset.
        TemplateError: If a sentence language lacks a relation's template.
        ConfigError: If no example results.
    """
    missing = sorted({*languages, *sentence_languages} - set(kg.languages()))
    if missing:
        raise KGError(
            f"dataset {kg.name!r} has no labels in {missing}; it has labels in {len(kg.languages())} languages, "
            f"e.g. {kg.languages()[:8]}"
        )
    triples = kg.triples(split)
    check_templates(sentence_languages, sorted({r for _, r, _ in triples}))
    examples = []
    for form, chosen in (("phrase", languages), ("sentence", sentence_languages)):
        for language in chosen:
            for h, r, t in triples:
                labels_h, labels_t = kg.entities[h], kg.entities[t]
                if language not in labels_h or language not in labels_t:
                    continue
                if form == "phrase":
                    template = PHRASE_FORMAT.replace("{r}", r.replace("_", " "))
                else:
                    template = verbalise_triple(language, r, "{s}", "{o}")
                text, subject_span, object_span = _fill(template, labels_h[language], labels_t[language])
                examples.append(MaskedEntityExample(text, object_span, subject_span, r, h, t, language, form))
    if not examples:
        raise ConfigError(
            f"no {split} triple of {kg.name!r} has both entities labelled in {list(languages)} "
            f"or {list(sentence_languages)}"
        )
    random.Random(seed).shuffle(examples)
    return examples


def _framing(tokenizer: Any) -> tuple[int, int, int, int]:
    """``(bos, eos, pad, mask)`` ids (see :func:`.encode.frame_ids`)."""
    if tokenizer.mask_token_id is None:
        raise ConfigError("the tokenizer has no mask token; the masked-entity objective needs one")
    return (*frame_ids(tokenizer), tokenizer.mask_token_id)


class MaskedEntityCollate:
    """``(examples, seeds) -> batch``: the object's in-context tokens masked, one mask token per object token.

    Rows are ``<cls> ... <mask> * n ... <sep>``, right-padded; ``seeds`` are accepted for the
    loop's collate signature and unused (the batch is deterministic).

    Args:
        tokenizer: The masked-LM's *fast* tokenizer (character offsets; mask, CLS/BOS, SEP/EOS tokens).
        max_length: Longest row, special tokens included; a longer row is refused, not cut (its
            targets could be lost).
    """

    def __init__(self, tokenizer: Any, *, max_length: int = 64) -> None:
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 3:
            raise ConfigError(f"max_length must be an integer >= 3, got {max_length!r}")
        self.tokenizer, self.max_length = tokenizer, max_length
        self.bos, self.eos, self.pad, self.mask = _framing(tokenizer)

    def row(self, example: MaskedEntityExample) -> tuple[list[int], list[int]]:
        """One example's input ids and labels (``-100`` off the object), framed, unpadded."""
        spans = sorted([example.subject_span, example.object_span])
        pieces = split_by_spans(self.tokenizer, example.text, spans)
        target = 2 * spans.index(example.object_span) + 1
        ids, labels = [self.bos], [-100]
        for i, piece in enumerate(pieces):
            ids.extend([self.mask] * len(piece) if i == target else piece)
            labels.extend(piece if i == target else [-100] * len(piece))
        ids.append(self.eos)
        labels.append(-100)
        if len(ids) > self.max_length:
            raise ConfigError(f"{example.text!r} needs {len(ids)} tokens > max_length {self.max_length}; raise it")
        return ids, labels

    def __call__(self, examples: Sequence[MaskedEntityExample], seeds: Sequence[int]) -> dict[str, torch.Tensor]:
        """Returns ``input_ids``, ``attention_mask`` and ``labels`` (object ids at masks, else -100), ``(B, T)``."""
        if not examples:
            raise ConfigError("cannot collate an empty batch")
        rows = [self.row(ex) for ex in examples]
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.pad, dtype=torch.long)  # (B, T)
        labels = torch.full((len(rows), length), -100, dtype=torch.long)  # (B, T)
        attention = torch.zeros((len(rows), length), dtype=torch.long)  # (B, T)
        for i, (ids, targets) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(targets)
            attention[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _mlm(model: nn.Module) -> nn.Module:
    """The BERT-layout masked-LM inside ``model`` (an ``AdaptedModel`` or the bare model)."""
    host = model.model if isinstance(model, AdaptedModel) else model
    if not (hasattr(host, "bert") and hasattr(host, "cls")):
        raise ConfigError(
            f"the masked-entity objective needs a BertForMaskedLM-layout host (e.g. default_mlm()), "
            f"got {type(host).__name__}"
        )
    return host


def masked_entity_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The loop's ``loss_fn``: masked-LM cross-entropy at the object tokens (mean over targets).

    Args:
        model: An ``AdaptedModel`` on a ``BertForMaskedLM`` (its active adapters act), or the bare model.
        batch: A :class:`MaskedEntityCollate` batch.
    """
    loss, _ = masked_lm_loss(_mlm(model), batch["input_ids"], batch["attention_mask"], batch["labels"])
    return loss


@torch.no_grad()
def masked_entity_accuracy(
    adapted_mlm: nn.Module, tokenizer: Any, examples: Sequence[MaskedEntityExample], batch_size: int = 64
) -> float:
    """Share of examples whose every object token is the argmax at its mask (exact match), in eval mode.

    Args:
        adapted_mlm: An ``AdaptedModel`` on a ``BertForMaskedLM`` (with its active composition) or the bare model.
        tokenizer: Its tokenizer.
        examples: Examples to score.
        batch_size: Examples per forward pass.

    Raises:
        ConfigError: No examples, or a bad batch size.
    """
    if not examples:
        raise ConfigError("no examples to score")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    mlm = _mlm(adapted_mlm)
    collate = MaskedEntityCollate(tokenizer)
    device = next(adapted_mlm.parameters()).device
    correct = 0
    with eval_mode(adapted_mlm):
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, [0] * len(chunk)).items()}
            _, predicted = masked_lm_loss(mlm, batch["input_ids"], batch["attention_mask"], batch["labels"])
            targets = batch["labels"] != -100  # (B, T)
            rows = targets.nonzero()[:, 0]  # (N,) row of each target, row-major like the predictions
            wrong = (predicted != batch["labels"][targets]).long()  # (N,)
            misses = torch.zeros(len(chunk), dtype=torch.long, device=device).index_add_(0, rows, wrong)  # (B,)
            correct += int((misses == 0).sum())
    return correct / len(examples)


@dataclasses.dataclass(frozen=True)
class MaskedKGSettings:
    """What :func:`train_masked_kg_adapter` trains.

    Attributes:
        languages: Label languages of phrase-level examples.
        sentence_languages: Label languages of sentence-level examples (``kg-train-v1`` templates).
        steps: Optimizer steps (the default host does about 0.65 steps/s on one CPU thread at batch 32).
        batch_size: Examples per step.
        lr: Peak learning rate (AdamW, 10% warm-up, linear decay).
        reduction_factor: Bottleneck reduction factor of the knowledge adapter.
        layers: Blocks that get the adapter (``None``: all); leaving out the lowest blocks makes
            training cheaper (no gradient flows below the lowest adapter).
        seed: Seeds the adapter's initialisation, the example order and the data order.
    """

    languages: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi")
    sentence_languages: tuple[str, ...] = ("en", "de", "fr", "es")
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    reduction_factor: float = 16.0
    layers: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("languages", "sentence_languages"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{name} must be a tuple of language codes, got {value!r}")
            if len(set(value)) != len(value):
                raise ConfigError(f"{name} repeats a language: {value!r}")
        if not self.languages and not self.sentence_languages:
            raise ConfigError("languages and sentence_languages are both empty; name at least one language")
        for name, minimum in (("steps", 1), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        for name in ("lr", "reduction_factor"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if self.layers is not None and (
            not isinstance(self.layers, tuple)
            or not self.layers
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)
        ):
            raise ConfigError(f"layers must be None or a non-empty tuple of block indices, got {self.layers!r}")

    def adapter_config(self) -> BottleneckConfig:
        """The knowledge preset with this run's reduction factor and blocks."""
        preset = BottleneckConfig.knowledge(reduction_factor=self.reduction_factor)
        return dataclasses.replace(preset, layers=self.layers)

    def train_config(self) -> TrainConfig:
        """The loop's settings: 10% warm-up, a checkpoint every 10% of the run, 20 log lines."""
        return TrainConfig(
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            warmup_steps=self.steps // 10,
            save_every=max(1, self.steps // 10),
            log_every=max(1, self.steps // 20),
            seed=self.seed,
        )


@dataclasses.dataclass
class MaskedKGResult:
    """What :func:`train_masked_kg_adapter` did.

    Attributes:
        model: The ``AdaptedModel`` with the trained adapter active (on the base adapter, if any).
        adapter_dir: Where the adapter was saved (``out_dir/<name>``).
        report: The JSON report, also in ``out_dir/report.json``.
    """

    model: AdaptedModel
    adapter_dir: Path
    report: dict[str, Any]


def train_masked_kg_adapter(
    mlm: nn.Module,
    tokenizer: Any,
    kg: KGDataset,
    settings: MaskedKGSettings,
    *,
    out_dir: str | os.PathLike[str],
    name: str = "kg",
    progress: bool = True,
    base_adapters: str | os.PathLike[str] | None = None,
) -> MaskedKGResult:
    """Trains a knowledge adapter on masked-entity examples of the KG's training triples and saves it.

    Writes into ``out_dir``: ``run.json`` (settings and data, first), the loop's ``checkpoint/``
    and ``metrics.jsonl``, ``<name>/`` (``adapter.json`` + ``adapter.safetensors``) and
    ``report.json`` (last). A rerun with the same settings resumes from the checkpoint.

    Args:
        mlm: A ``BertForMaskedLM`` (wrapped in place by an ``AdaptedModel``) or an ``AdaptedModel``
            on one; its weights stay frozen.
        tokenizer: Its fast tokenizer.
        kg: The knowledge graph (its ``train`` triples are used).
        settings: What to train.
        out_dir: Run directory.
        name: The adapter's name.
        progress: Show the loop's progress bar (loss, examples/s; on stderr when it is a terminal).
        base_adapters: A saved language adapter to stack the knowledge adapter on (attached as
            :data:`BASE_ADAPTER_NAME`, kept frozen).

    Raises:
        ConfigError: Invalid settings or name, a host that is not BERT-layout masked-LM, or a run
            directory holding another run.
        KGError: A language without labels in the dataset.
        TemplateError: A sentence language without training templates.
    """
    am = mlm if isinstance(mlm, AdaptedModel) else AdaptedModel(mlm)
    _mlm(am)
    if name in am.adapters or name == BASE_ADAPTER_NAME:
        raise ConfigError(f"adapter name {name!r} is taken (or reserved for base_adapters); pass another name")
    collate = MaskedEntityCollate(tokenizer)
    examples = masked_entity_examples(
        kg, languages=settings.languages, sentence_languages=settings.sentence_languages, seed=settings.seed
    )
    counts: dict[str, dict[str, int]] = {}
    for ex in examples:
        counts.setdefault(ex.language, {"phrase": 0, "sentence": 0})[ex.form] += 1
    config = settings.train_config()
    adapter_config = settings.adapter_config()
    record = {
        "schema": REPORT_SCHEMA,
        "version": 1,
        "kg": kg.name,
        "kg_sources": dict(kg.sources),
        "settings": dataclasses.asdict(settings),
        "adapter_name": name,
        "adapter_config": adapter_config.to_dict(),
        "train_config": config.resume_key(),
        "base_adapters": str(base_adapters) if base_adapters is not None else None,
        "phrase_format": PHRASE_FORMAT,
        "template_set": TEMPLATE_SET,
        "held_out_languages_used": sorted(set(counts) & set(HELD_OUT_LANGUAGES)),
        "examples": counts,
        "base": am.base_fingerprint,
    }
    out = Path(out_dir)
    check_run_record(out, record, "masked KG-adapter run")
    if base_adapters is not None:
        am.load_adapter(base_adapters, name=BASE_ADAPTER_NAME)
    with torch.random.fork_rng():  # the adapter's initial values follow the run's seed, not the caller's RNG
        torch.manual_seed(settings.seed)
        am.add_adapter(name, adapter_config)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", record)
    am.set_active(Stack(BASE_ADAPTER_NAME, name) if base_adapters is not None else name)
    am.train_adapters(name)
    started = time.perf_counter()
    result = train(am, examples, collate, masked_entity_loss, config, out_dir=out, progress=progress)
    seconds = time.perf_counter() - started
    adapter_dir = am.save_adapter(name, out / name)
    losses = [e["loss"] for e in _read_log(out / "metrics.jsonl") if "loss" in e]
    parameters = am.num_parameters(name)
    base_non_embedding = non_embedding_parameters(am)
    steps_run = result.steps - result.resumed_from
    report = {
        **record,
        "adapter_dir": name,
        "parameters": parameters,
        "base_parameters": am.num_parameters(),
        "percent_of_base": 100 * parameters / am.num_parameters(),
        "base_non_embedding_parameters": base_non_embedding,
        "percent_of_base_non_embedding": 100 * parameters / base_non_embedding,
        "train": {
            "steps": result.steps,
            "resumed_from": result.resumed_from,
            "first_loss": losses[0] if losses else result.last_loss,
            "last_loss": result.last_loss,
            "seconds": seconds,
            "steps_per_s": steps_run / seconds if steps_run and seconds > 0 else None,
            "threads": torch.get_num_threads(),
        },
    }
    atomic_write_json(out / "report.json", report)
    return MaskedKGResult(model=am, adapter_dir=adapter_dir, report=report)


def _read_log(path: Path) -> list[dict[str, Any]]:
    """The loop's metrics records (lines cut short by a kill are skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
