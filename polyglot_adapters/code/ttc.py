"""Token Type Classification (TTC): NER adapters that teach a frozen code encoder the AST's token types.

After "Model-Agnostic Syntactical Information for Pre-Trained Programming Language Models": a
bottleneck adapter in every block of a frozen CodeBERT-style encoder, plus a linear token
classification head, trained to predict each subword's token type (:mod:`.token_types`).

Alignment is **all-subword labelling**: every subword gets the type of the first labelled
(non-blank) character it covers; subwords made only of whitespace (indentation, newlines) get
no label (-100) and are neither trained nor scored. Files longer than a window are cut into
windows of ``max_length`` tokens that overlap by ``overlap`` tokens; in evaluation every token
is scored exactly once, in the first window where it has at least ``overlap`` tokens of left
context (or the file's first window).

Example:
    >>> model, tokenizer = load_code_base("runs/code-base/model")
    >>> result = train_ner_adapter(model, tokenizer, load_code_corpus(), out_dir="runs/ner")
    >>> result.report["test"]["accuracy"], result.report["test"]["macro_f1"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError, CorruptArtifactError, MissingArtifactError
from ..io import atomic_write_bytes, atomic_write_json, check_fingerprint
from ..methods.bottleneck import BottleneckConfig
from ..model import AdaptedModel
from ..training.config import TrainConfig
from ..training.loop import eval_mode, train
from .budget import fit_to_steps, steps_within
from .corpus import CodeCorpus, CodeFile
from .token_types import NO_TYPE, TOKEN_TYPES, LabelledSource, SourceError, label_source

__all__ = [
    "HEAD_NAME",
    "NerAdapterResult",
    "TokenTypeBatches",
    "TokenTypeTagger",
    "align_labels",
    "backbone",
    "encoder_parameters",
    "label_windows",
    "load_tagger_head",
    "ner_adapter_config",
    "save_tagger",
    "token_type_loss",
    "token_type_metrics",
    "train_ner_adapter",
]

HEAD_NAME = "head"
_HEAD_SCHEMA = "polyglot-adapters/token-type-head"


def ner_adapter_config(*, reduction_factor: float = 16.0) -> BottleneckConfig:
    """The NER adapter: a series bottleneck after every block's feed-forward sub-layer (reading its output)."""
    return BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=reduction_factor)


def backbone(model: AdaptedModel) -> nn.Module:
    """The encoder without its task head (``base_model`` of a transformers model, else the model)."""
    return getattr(model.model, "base_model", model.model)


def align_labels(labelled: LabelledSource, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Subword ids of a labelled source and each subword's token type (all-subword labelling).

    Args:
        labelled: A source and its per-character labels.
        tokenizer: A fast transformers tokenizer (character offsets needed).

    Returns:
        ``(ids, labels)`` of equal length; a label is an index into :data:`TOKEN_TYPES`, or
        -100 for a subword of whitespace only.
    """
    encoding = tokenizer(labelled.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = encoding["input_ids"]
    if not ids:
        return [], []
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)  # (N, 2)
    chars = labelled.labels
    n = len(chars)
    position = np.where(chars != NO_TYPE, np.arange(n), n)
    first = np.append(np.minimum.accumulate(position[::-1])[::-1], n)  # first labelled char at or after i
    padded = np.append(chars, NO_TYPE).astype(np.int64)
    starts, ends = np.clip(offsets[:, 0], 0, n), np.clip(offsets[:, 1], 0, n)
    found = first[starts]  # (N,)
    labels = np.where(found < ends, padded[found], -100)
    return ids, labels.tolist()


def label_windows(
    ids: Sequence[int],
    labels: Sequence[int],
    *,
    cls: int,
    sep: int,
    max_length: int,
    overlap: int,
    score_once: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cuts one file's subwords into ``<s> ... </s>`` windows of at most ``max_length`` tokens.

    Args:
        ids: The file's subword ids.
        labels: Their labels (-100 for none).
        cls: Id framing each window's start.
        sep: Id framing each window's end.
        max_length: Window length with the two framing tokens.
        overlap: Tokens shared by consecutive windows (context for the next window's first tokens).
        score_once: Keep each token's label in one window only (evaluation): positions in a
            window's leading overlap (all windows but the first) get -100.

    Returns:
        ``(ids, labels)`` pairs of 1-D tensors, framing tokens labelled -100.
    """
    width = max_length - 2
    if width < 1 or not 0 <= overlap < width:
        raise ConfigError(f"need max_length >= 3 and 0 <= overlap < max_length - 2, got {max_length} and {overlap}")
    out = []
    start = 0
    while True:
        piece_ids = list(ids[start : start + width])
        piece_labels = list(labels[start : start + width])
        if score_once and start > 0:
            piece_labels[:overlap] = [-100] * min(overlap, len(piece_labels))
        out.append((torch.tensor([cls, *piece_ids, sep]), torch.tensor([-100, *piece_labels, -100])))
        if start + width >= len(ids):
            return out
        start += width - overlap


class TokenTypeTagger(nn.Module):
    """An (adapted) encoder with a linear token-type head.

    Args:
        adapted: The encoder, wrapped; adapters and the active composition are set on it.
        num_types: Number of token types.
        dropout: Dropout before the head.
    """

    def __init__(self, adapted: AdaptedModel, num_types: int = len(TOKEN_TYPES), dropout: float = 0.1) -> None:
        super().__init__()
        self.adapted = adapted
        hidden = adapted.model.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_types)

    @property
    def base_fingerprint(self) -> dict[str, Any]:
        """The encoder's fingerprint (checkpoints made by the training loop record it)."""
        return self.adapted.base_fingerprint

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token-type logits.

        Args:
            input_ids: ``(B, T)`` ids.
            attention_mask: ``(B, T)``, 1 on real tokens, 0 on padding.

        Returns:
            ``(B, T, C)`` logits over the ``C`` token types.
        """
        hidden = backbone(self.adapted)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.dropout(hidden))  # (B, T, C)


def _collate(windows: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(ids) for ids, _ in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full_like(ids, -100)
    attention = torch.zeros_like(ids)
    for row, (w_ids, w_labels) in enumerate(windows):
        ids[row, : len(w_ids)], labels[row, : len(w_ids)], attention[row, : len(w_ids)] = w_ids, w_labels, 1
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def token_type_loss(model: TokenTypeTagger, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over labelled subwords, averaged per window, then over windows (the loop's contract)."""
    logits = model(batch["input_ids"], batch["attention_mask"])  # (B, T, C)
    labels = batch["labels"]
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (B, T)
    counts = (labels != -100).sum(1).clamp_min(1)  # (B,)
    return (losses.sum(1) / counts).mean()


def token_type_metrics(predicted: torch.Tensor, gold: torch.Tensor, names: Sequence[str] = TOKEN_TYPES) -> dict:
    """Accuracy, macro-F1 (over the types present in ``gold``) and per-type precision/recall/F1/support.

    Args:
        predicted: ``(N,)`` predicted type ids.
        gold: ``(N,)`` gold type ids.
        names: Type names by id.
    """
    k = len(names)
    confusion = torch.bincount(gold * k + predicted, minlength=k * k).reshape(k, k).double()  # (gold, predicted)
    tp, support, guessed = confusion.diag(), confusion.sum(1), confusion.sum(0)
    precision = tp / guessed.clamp_min(1)
    recall = tp / support.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    present = support > 0
    per_type = {
        names[i]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(k)
        if present[i]
    }
    return {
        "accuracy": float(tp.sum() / max(1.0, float(support.sum()))),
        "macro_f1": float(f1[present].mean()) if bool(present.any()) else 0.0,
        "tokens": int(support.sum()),
        "per_type": per_type,
    }


class TokenTypeBatches:
    """A fixed held-out set of windows (each token scored once), evaluated the same way every call.

    Args:
        windows: Windows from :func:`label_windows` with ``score_once=True``.
        pad_id: Padding id.
        prefix: Metric name prefix (``valid``, ``test``).
        batch_size: Windows per forward pass.
    """

    def __init__(
        self, windows: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int, *, prefix: str, batch_size: int = 32
    ) -> None:
        if not windows:
            raise ConfigError(f"the {prefix} split has no labelled code")
        ordered = sorted(windows, key=lambda w: len(w[0]))  # similar lengths share a batch: little padding
        self.batches = [_collate(ordered[i : i + batch_size], pad_id) for i in range(0, len(ordered), batch_size)]
        self.prefix = prefix
        self.tokens = sum(int((b["labels"] != -100).sum()) for b in self.batches)

    @torch.no_grad()
    def predict(self, model: TokenTypeTagger) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted, gold)`` type ids of every scored token, in eval mode (modes restored)."""
        device = next(model.parameters()).device
        predicted, gold = [], []
        with eval_mode(model):
            for batch in self.batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(batch["input_ids"], batch["attention_mask"])  # (B, T, C)
                scored = batch["labels"] != -100
                predicted.append(logits[scored].argmax(-1).cpu())
                gold.append(batch["labels"][scored].cpu())
        return torch.cat(predicted), torch.cat(gold)

    def __call__(self, model: TokenTypeTagger) -> dict[str, float]:
        """``{prefix}_accuracy`` and ``{prefix}_macro_f1``."""
        metrics = token_type_metrics(*self.predict(model))
        return {f"{self.prefix}_accuracy": metrics["accuracy"], f"{self.prefix}_macro_f1": metrics["macro_f1"]}


@dataclasses.dataclass
class _Labelled:
    train: list[tuple[torch.Tensor, torch.Tensor]]
    held_out: dict[str, TokenTypeBatches]
    skipped: dict[str, int]
    type_counts: dict[str, int]


def _label_corpus(
    corpus: CodeCorpus,
    tokenizer: Any,
    *,
    max_length: int,
    overlap: int,
    eval_files: int | None,
    batch_size: int,
) -> _Labelled:
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sep
    if cls is None or sep is None:
        raise ConfigError("the tokenizer needs a CLS (or BOS) and a SEP (or EOS) token to frame windows")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("token-type labels need a fast tokenizer (character offsets); load one with use_fast=True")
    skipped: Counter[str] = Counter()
    counts: Counter[int] = Counter()

    def windows(files: list[CodeFile], score_once: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for file in files:
            try:
                labelled = label_source(file.text, name=file.path)
            except SourceError as err:
                skipped[err.reason] += 1
                continue
            ids, labels = align_labels(labelled, tokenizer)
            if not ids:
                skipped["empty"] += 1
                continue
            if not score_once:
                counts.update(x for x in labels if x != -100)
            out.extend(
                label_windows(
                    ids, labels, cls=cls, sep=sep, max_length=max_length, overlap=overlap, score_once=score_once
                )
            )
        return out

    train_windows = windows(corpus.split("train"), False)
    held_out = {}
    for split in ("valid", "test"):
        files = corpus.split(split)
        if eval_files is not None and len(files) > eval_files:
            step = len(files) / eval_files
            files = [files[int(i * step)] for i in range(eval_files)]  # evenly over modules
        held_out[split] = TokenTypeBatches(windows(files, True), pad, prefix=split, batch_size=batch_size)
    if not train_windows:
        raise ConfigError("the train split has no labelled code")
    return _Labelled(
        train=train_windows,
        held_out=held_out,
        skipped=dict(skipped),
        type_counts={TOKEN_TYPES[k]: v for k, v in sorted(counts.items())},
    )


def save_tagger(model: TokenTypeTagger, adapter: str | None, directory: str | os.PathLike[str]) -> Path:
    """Saves the head (``head.json`` + ``head.safetensors``) and, if named, the adapter, into one directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        model.adapted.save_adapter(adapter, out)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    blob = st_save(tensors)
    import hashlib

    meta = {
        "schema": _HEAD_SCHEMA,
        "version": 1,
        "types": list(TOKEN_TYPES),
        "hidden_size": model.head.in_features,
        "base": model.base_fingerprint,
        "adapter": adapter,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_bytes(out / f"{HEAD_NAME}.safetensors", blob)
    atomic_write_json(out / f"{HEAD_NAME}.json", meta)
    return out


def load_tagger_head(model: TokenTypeTagger, directory: str | os.PathLike[str]) -> None:
    """Loads a head saved by :func:`save_tagger` into ``model.head`` (checks schema, types, base and checksum).

    Raises:
        MissingArtifactError: No ``head.json``/``head.safetensors``.
        CorruptArtifactError: Unreadable, altered, or saved for other token types.
        BaseModelMismatchError: Saved for another base model.
    """
    import hashlib

    source = Path(directory)
    meta_path, weights = source / f"{HEAD_NAME}.json", source / f"{HEAD_NAME}.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise MissingArtifactError(
            f"{source}: no {HEAD_NAME}.json and {HEAD_NAME}.safetensors; pass a directory written by train_ner_adapter"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        blob = weights.read_bytes()
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CorruptArtifactError(f"{meta_path}: unreadable ({err}); retrain or copy it again") from None
    if not isinstance(meta, dict) or meta.get("schema") != _HEAD_SCHEMA or meta.get("types") != list(TOKEN_TYPES):
        raise CorruptArtifactError(
            f"{meta_path}: not a token-type head for these {len(TOKEN_TYPES)} token types; retrain it"
        )
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise CorruptArtifactError(f"{weights}: checksum mismatch (truncated or altered); copy it again")
    check_fingerprint(meta["base"], model.base_fingerprint, source)
    model.head.load_state_dict(st_load(blob))


@dataclasses.dataclass
class NerAdapterResult:
    """What :func:`train_ner_adapter` did.

    Attributes:
        name: The adapter's name (``None`` for a head-only run).
        tagger: The encoder with the trained adapter (active) and head.
        directory: Where adapter and head were saved (``OUT/adapter``).
        report: The JSON report (also ``OUT/report.json``).
    """

    name: str | None
    tagger: TokenTypeTagger
    directory: Path
    report: dict[str, Any]


def train_ner_adapter(
    model: nn.Module,
    tokenizer: Any,
    corpus: CodeCorpus,
    *,
    out_dir: str | os.PathLike[str],
    config: BottleneckConfig | None = None,
    train_config: TrainConfig | None = None,
    name: str | None = "ner",
    max_length: int = 256,
    overlap: int = 32,
    eval_files: int | None = 60,
    eval_batch_size: int = 32,
    budget_seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> NerAdapterResult:
    """Trains a NER adapter and token-type head with TTC on the frozen encoder; evaluates on held-out modules.

    Writes ``OUT/run.json`` (settings), the loop's ``checkpoint/`` (a rerun resumes), ``best/`` and
    ``metrics.jsonl``, then ``OUT/adapter/`` (adapter + head best on ``valid`` accuracy) and
    ``OUT/report.json`` (``valid``/``test`` accuracy, macro-F1, per-type scores, sizes, speed).

    Args:
        model: A transformers encoder or masked-LM (its ``base_model`` is used), or an
            ``AdaptedModel`` on one; its weights stay frozen.
        tokenizer: Its fast tokenizer.
        corpus: The code corpus (train files for training, valid/test modules held out).
        out_dir: Run directory.
        config: The adapter; default :func:`ner_adapter_config`.
        train_config: Loop settings; ``best_metric`` is set to ``valid_accuracy``.
        name: Adapter name; ``None`` trains the head alone on the frozen encoder (the baseline).
        max_length: Tokens per window.
        overlap: Tokens shared by consecutive windows of a long file.
        eval_files: Held-out files per split (evenly spaced), ``None`` for all.
        eval_batch_size: Windows per evaluation forward pass.
        budget_seconds: Replace ``train_config.steps`` by the steps that fit in this many
            seconds of training on this machine (timed trial).
        log: Receives progress lines.

    Raises:
        ConfigError: Invalid settings, a slow tokenizer, or no labelled code in a split.
    """
    say = log or (lambda _: None)
    am = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    config = config if config is not None else ner_adapter_config()
    train_config = train_config if train_config is not None else TrainConfig(steps=500, lr=1e-3, batch_size=16)
    train_config = dataclasses.replace(
        train_config, best_metric="valid_accuracy", best_mode="max", out_dir=str(out_dir)
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    data = _label_corpus(
        corpus, tokenizer, max_length=max_length, overlap=overlap, eval_files=eval_files, batch_size=eval_batch_size
    )
    label_seconds = time.perf_counter() - clock
    with torch.random.fork_rng():  # adapter and head initial values follow the run's seed
        torch.manual_seed(train_config.seed)
        if name is not None:
            am.add_adapter(name, config)
        tagger = TokenTypeTagger(am)
    if name is not None:
        am.set_active(name)
        am.train_adapters(name)
    else:
        am.set_active(None)
        for p in am.parameters():
            p.requires_grad_(False)
    tagger.to(next(am.model.parameters()).device)
    adapter_params = am.num_parameters(name) if name is not None else 0
    head_params = sum(p.numel() for p in tagger.head.parameters())
    encoder_params = encoder_parameters(am)
    settings = {
        "adapter_name": name,
        "adapter_config": config.to_dict() if name is not None else None,
        "train_config": train_config.to_dict(),
        "max_length": max_length,
        "overlap": overlap,
        "labelling": "all-subword (first labelled character of each subword; whitespace-only subwords unlabelled)",
        "types": list(TOKEN_TYPES),
        "corpus": corpus.statistics(),
        "eval_files": eval_files,
    }
    say(
        f"TTC: {len(data.train)} training windows, held-out tokens valid {data.held_out['valid'].tokens:,} "
        f"test {data.held_out['test'].tokens:,}; trainable: adapter {adapter_params:,} + head {head_params:,} "
        f"({100 * (adapter_params + head_params) / encoder_params:.2f}% of the encoder's {encoder_params:,})"
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.sep_token_id

    def evaluate(m: TokenTypeTagger) -> dict[str, float]:
        metrics = data.held_out["valid"](m)
        say(f"valid accuracy {100 * metrics['valid_accuracy']:.2f}% macro-F1 {100 * metrics['valid_macro_f1']:.2f}")
        return metrics

    def collate(windows: list[tuple[torch.Tensor, torch.Tensor]], seeds: list[int]) -> dict[str, torch.Tensor]:
        return _collate(windows, pad)

    if budget_seconds is not None:
        steps = steps_within(budget_seconds, tagger, data.train, collate, token_type_loss, train_config)
        train_config = fit_to_steps(train_config, steps)
        say(f"{steps} steps fit in {budget_seconds:g} s")
    settings["train_config"] = train_config.to_dict()
    atomic_write_json(out / "run.json", settings)
    started = time.perf_counter()
    result = train(
        tagger,
        data.train,
        collate,
        token_type_loss,
        train_config,
        eval_fn=evaluate,
        save_fn=lambda m, d: save_tagger(m, name, d),
    )
    seconds = time.perf_counter() - started
    best = out / "best"
    if result.best is not None and (best / f"{HEAD_NAME}.json").is_file():
        if name is not None:
            am.delete_adapter(name)
            am.load_adapter(best, name=name)
            am.set_active(name)
        load_tagger_head(tagger, best)
    scores = {split: token_type_metrics(*batches.predict(tagger)) for split, batches in data.held_out.items()}
    directory = save_tagger(tagger, name, out / "adapter")
    report = {
        "schema": "polyglot-adapters/ner-adapter-report",
        "version": 1,
        **settings,
        "adapter_parameters": adapter_params,
        "head_parameters": head_params,
        "encoder_parameters": encoder_params,
        "percent_of_encoder": 100 * (adapter_params + head_params) / encoder_params,
        "train_windows": len(data.train),
        "train_type_counts": data.type_counts,
        "skipped_files": data.skipped,
        "label_seconds": label_seconds,
        "train": {
            "steps": result.steps,
            "resumed_from": result.resumed_from,
            "best": result.best,
            "seconds": seconds,
            "threads": torch.get_num_threads(),
            "device": str(next(am.model.parameters()).device),
        },
        **scores,
    }
    atomic_write_json(out / "report.json", report)
    say(
        f"test accuracy {100 * scores['test']['accuracy']:.2f}% macro-F1 {100 * scores['test']['macro_f1']:.2f} "
        f"({scores['test']['tokens']:,} tokens)"
    )
    return NerAdapterResult(name=name, tagger=tagger, directory=directory, report=report)


def encoder_parameters(model: AdaptedModel) -> int:
    """Parameters of the encoder (``base_model``, embeddings included), adapters and gates excluded.

    The denominator of trainable-parameter percentages: what full fine-tuning of the encoder trains.
    """
    return sum(
        p.numel() for n, p in backbone(model).named_parameters() if ".adapters." not in n and ".gates." not in n
    )
