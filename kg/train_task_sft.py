"""Task sparse fine-tuning (LT-SFT) on CLDR entity typing, and zero-shot transfer with language SFTs.

Usage:
    # language SFTs first (kg/train_language_sft.py), then:
    python kg/train_task_sft.py --source-sft runs/sft/en/diff --target sw=runs/sft/sw/diff --out runs/sft/typing
    python kg/train_task_sft.py --steps 40 --source-sft runs/sft/en/diff --target sw=runs/sft/sw/diff --out runs/t
    python kg/train_task_sft.py --help                                                  # every option

Task: the kind of a CLDR entity (``territory``, ``language``, ``currency``, ``script`` or
``region``: five classes) from its name alone, as a cloze for the default masked-LM host:
``<cls> {name} : <mask> <sep>``, scored on the five single-token words ``country``, ``language``,
``currency``, ``script`` and ``region`` (cross-entropy over those five logits). Entities are split
once (seeded) into train (60%), valid (20%) and test (20%); the task SFT trains on the English
names of the train entities only, with the source-language SFT applied to the weights (as in
LT-SFT), and is evaluated zero-shot on the names of the test entities in each target language.

For every target language it reports test accuracy of: the host alone (the cloze prior), the
task SFT alone, the task SFT composed with the target-language SFT (``task + lang``, one
``SparseDiff``), and the task SFT with the source-language SFT it was trained with. Writes
OUT/phase1/, OUT/phase2/, OUT/task/ (the task SFT's diff) and OUT/report.json. Bad input (a diff
for another base, a missing or corrupt diff directory, an unknown language) prints one ``error:``
line and exits 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from polyglot_adapters import AdaptedModel
from polyglot_adapters.errors import ConfigError, PolyglotAdaptersError
from polyglot_adapters.io import atomic_write_json
from polyglot_adapters.kg.datasets import load_kg
from polyglot_adapters.methods.sparse_ft import SparseDiff, SparseFTConfig
from polyglot_adapters.methods.sparse_ft.lt_sft import train_lt_sft
from polyglot_adapters.training import TrainConfig
from polyglot_adapters.training.language_adapter import default_masked_lm, masked_lm_targets

KINDS = {
    "territory": "country",
    "language": "language",
    "currency": "currency",
    "script": "script",
    "region": "region",
}
"""Entity kind -> the answer word of the cloze (one token of the default host's vocabulary each)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--source", default="en", help="language of the training names (default en)")
    p.add_argument("--source-sft", type=Path, default=None, help="the source language's SFT diff directory")
    p.add_argument(
        "--target", action="append", default=[], metavar="LANG=DIR", help="target language and its SFT diff"
    )
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of each phase (default 100)")
    p.add_argument("--density", type=float, default=0.01, help="share of the targeted entries kept (default 0.01)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="names per step (default 32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def split_entities(kinds: dict[str, str], seed: int) -> dict[str, list[str]]:
    """Entities of the task's kinds, shuffled once and cut 60/20/20 into train, valid and test."""
    ids = sorted(e for e, kind in kinds.items() if kind in KINDS)
    random.Random(seed).shuffle(ids)
    a, b = int(0.6 * len(ids)), int(0.8 * len(ids))
    return {"train": ids[:a], "valid": ids[a:b], "test": ids[b:]}


class ClozeCollate:
    """``(examples, seeds) -> batch``: ``<cls> name : <mask> <sep>``, the answer word as the mask's label."""

    def __init__(self, tokenizer: Any) -> None:
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.mask, self.pad = tokenizer.mask_token_id, tokenizer.pad_token_id
        self.colon = tokenizer(" :", add_special_tokens=False)["input_ids"]
        answers = [tokenizer(" " + word, add_special_tokens=False)["input_ids"] for word in KINDS.values()]
        if any(len(ids) != 1 for ids in answers):
            raise ConfigError(
                f"the host's vocabulary splits an answer word: {dict(zip(KINDS.values(), answers, strict=True))}"
            )
        self.answers = torch.tensor([ids[0] for ids in answers])  # (5,)
        self.tokenizer = tokenizer

    def __call__(self, examples: Sequence[tuple[str, int]], seeds: Sequence[int]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` ``(B, T)`` and ``classes`` ``(B,)``."""
        rows = [
            [self.cls, *self.tokenizer(name, add_special_tokens=False)["input_ids"][:32], *self.colon, self.mask]
            + [self.sep]
            for name, _ in examples
        ]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)  # (B, T)
        attention = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (row, (_, cls)) in enumerate(zip(rows, examples, strict=True)):
            ids[i, : len(row)] = torch.tensor(row)
            attention[i, : len(row)] = 1
            labels[i, len(row) - 2] = self.answers[cls]
        classes = torch.tensor([cls for _, cls in examples])
        return {"input_ids": ids, "attention_mask": attention, "labels": labels, "classes": classes}


def class_logits(model: AdaptedModel, batch: dict[str, torch.Tensor], answers: torch.Tensor) -> torch.Tensor:
    """``(B, 5)`` logits of the answer words at each row's mask (one mask per row)."""
    logits, _ = masked_lm_targets(model, batch)  # (B, V)
    return logits[:, answers.to(logits.device)]


def accuracy(model: AdaptedModel, examples: list[tuple[str, int]], collate: ClozeCollate) -> float:
    """Top-1 accuracy over the five classes, in eval mode."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(examples), 64):
            batch = collate(examples[i : i + 64], [])
            correct += int((class_logits(model, batch, collate.answers).argmax(-1) == batch["classes"]).sum())
    return correct / len(examples)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the task SFT and evaluates every composition; returns the report."""
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    targets = {}
    for spec in args.target:
        lang, sep, directory = spec.partition("=")
        if not sep or not lang or not directory:
            raise ConfigError(f"--target takes LANG=DIR (e.g. sw=runs/sft/sw/diff), got {spec!r}")
        targets[lang] = SparseDiff.read(directory)  # a missing or corrupt diff fails before training
    source_sft = SparseDiff.read(args.source_sft) if args.source_sft is not None else None
    if args.threads:
        torch.set_num_threads(args.threads)
    kg = load_kg("cldr")
    for lang in [args.source, *targets]:
        if not any(lang in labels for labels in kg.entities.values()):
            raise ConfigError(f"the CLDR KG has no names in {lang!r}; languages: {', '.join(kg.languages()[:20])} ...")
    model, tokenizer = default_masked_lm()
    am = AdaptedModel(model)
    collate = ClozeCollate(tokenizer)
    split = split_entities(dict(kg.kinds), args.seed)
    classes = {kind: i for i, kind in enumerate(KINDS)}

    def examples(part: str, lang: str) -> list[tuple[str, int]]:
        return [(kg.entities[e][lang], classes[kg.kinds[e]]) for e in split[part] if lang in kg.entities[e]]

    train_set = examples("train", args.source)

    def loss_fn(model: AdaptedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(
            class_logits(model, batch, collate.answers).float(), batch["classes"].to(batch["labels"].device)
        )

    phase = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        warmup_steps=max(1, args.steps // 10),
        log_every=10,
        seed=args.seed,
    )
    revert_source = source_sft.apply(am) if source_sft is not None else None
    started = time.perf_counter()
    result = train_lt_sft(
        am, "task", SparseFTConfig(density=args.density), train_set, collate, loss_fn, phase, phase,
        out_dir=args.out, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    task = SparseDiff.from_adapter(am, "task")
    am.delete_adapter("task")
    if revert_source is not None:
        revert_source()
    task.save(args.out / "task", name="sft-entity-typing")

    def scored(diff: SparseDiff | None, lang: str) -> float:
        revert = diff.apply(am) if diff is not None else None
        try:
            return accuracy(am, examples("test", lang), collate)
        finally:
            if revert is not None:
                revert()

    rows = {}
    for lang in [args.source, *targets]:
        row = {"test_names": len(examples("test", lang)), "base": scored(None, lang), "task": scored(task, lang)}
        if lang in targets:
            row["task+lang"] = scored(task + targets[lang], lang)
        if source_sft is not None:
            row["task+source"] = scored(task + source_sft, lang)
        rows[lang] = row
        print(f"{lang}: {row}", flush=True)
    report = {
        "task": "cldr entity typing (5 kinds) as a cloze",
        "host": "default_mlm",
        "train": {**{k: str(v) for k, v in vars(args).items()}, "names": len(train_set), "seconds": seconds},
        "selected": result.selected,
        "phase1_last_loss": result.phase1.last_loss,
        "phase2_last_loss": result.phase2.last_loss,
        "threads": torch.get_num_threads(),
        "accuracy": rows,
    }
    atomic_write_json(args.out / "report.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point: one ``error:`` line and exit 1 on bad input."""
    args = parse_args(argv)
    try:
        run(args)
    except PolyglotAdaptersError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
