"""Trains a language sparse fine-tuning (LT-SFT) with masked-LM loss on one language's UDHR text.

Usage:
    python kg/train_language_sft.py --lang sw --out runs/sft/sw                 # 200 + 200 steps
    python kg/train_language_sft.py --lang en --steps 60 --out runs/sft/en      # a reduced budget
    python kg/train_language_sft.py --lang yo --density 0.02 --lr 5e-5 --out runs/sft/yo
    python kg/train_language_sft.py --help                                      # every option

The host is the default masked-LM (``polyglot_adapters.models.default_mlm``, frozen). Phase 1
fully fine-tunes every linear weight of its encoder (q, k, v, o, ffn_in, ffn_out of all blocks)
for ``--steps`` steps as a dense difference; the ``--density`` share of entries that changed most
over all those weights together becomes the mask; phase 2 restarts from the pretrained weights
and trains only those entries for another ``--steps`` steps (their values held in the weights).
Data, masking and held-out scoring are the language adapters': the UDHR ``train`` articles packed
into 128-token windows with BERT masking (15%); masked-LM loss and top-1 accuracy on the
``valid`` and ``test`` articles with a fixed masking, before and after.

Writes OUT/phase1/ and OUT/phase2/ (the loop's checkpoints and metrics), OUT/diff/ (the
SparseDiff: ``adapter.json`` + ``adapter.safetensors``, composable with other diffs of the same
base, e.g. a task SFT: see ``kg/train_task_sft.py``) and OUT/report.json. Bad input (an unknown
language code, a language without UDHR text, impossible settings) prints one ``error:`` line and
exits 1, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from polyglot_adapters import AdaptedModel
from polyglot_adapters.data import load_udhr
from polyglot_adapters.errors import ConfigError, PolyglotAdaptersError
from polyglot_adapters.io import atomic_write_json
from polyglot_adapters.methods.sparse_ft import SparseDiff, SparseFTConfig
from polyglot_adapters.methods.sparse_ft.lt_sft import train_lt_sft
from polyglot_adapters.training import TrainConfig
from polyglot_adapters.training.language_adapter import (
    MaskedLmBatches,
    MaskedLmCollate,
    default_masked_lm,
    masked_lm_window_loss,
    pack_texts,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lang", required=True, help="UDHR language code or name (sw, yor, Amharic ...)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of each phase (default 200)")
    p.add_argument("--density", type=float, default=0.05, help="share of the targeted entries kept (default 0.05)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of both phases (default 1e-4)")
    p.add_argument("--l1", type=float, default=0.0, help="L1 pull of the difference towards zero (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per step (default 8)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--eval-rounds", type=int, default=5, help="maskings of each held-out window (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Trains, evaluates and saves one language SFT; returns the report."""
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_udhr()
    lang = corpus.resolve(args.lang)  # an unknown code fails here, before the model loads
    config = SparseFTConfig(density=args.density, l1=args.l1)
    model, tokenizer = default_masked_lm()
    collate = MaskedLmCollate(tokenizer)
    windows = pack_texts(tokenizer, corpus.texts(lang, "train"), args.max_length)
    held_out = [
        MaskedLmBatches(
            pack_texts(tokenizer, corpus.texts(lang, split), args.max_length),
            collate,
            prefix=split,
            rounds=args.eval_rounds,
        )
        for split in ("valid", "test")
    ]
    am = AdaptedModel(model)

    def evaluate(m: AdaptedModel) -> dict[str, float]:
        return {k: v for batches in held_out for k, v in batches(m).items()}

    before = evaluate(am)
    print(f"{lang.name} ({lang.code}): {len(windows)} training windows; before {before}", flush=True)
    phase = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        warmup_steps=max(1, args.steps // 10),
        log_every=10,
        seed=args.seed,
    )
    started = time.perf_counter()
    result = train_lt_sft(
        am, "lang", config, windows, collate, masked_lm_window_loss, phase, phase, out_dir=args.out, progress=False
    )
    seconds = time.perf_counter() - started
    after = evaluate(am)
    print(f"after {after}", flush=True)
    diff = SparseDiff.from_adapter(am, "lang")
    diff.save(args.out / "diff", name=f"sft-{lang.bcp47}")
    report = {
        "language": {"code": lang.code, "bcp47": lang.bcp47, "name": lang.name},
        "host": "default_mlm",
        "config": {k: v for k, v in config.to_dict().items() if k != "mask"},
        "train": {**vars(args), "out": str(args.out), "windows": len(windows), "seconds": seconds},
        "selected": result.selected,
        "phase1_last_loss": result.phase1.last_loss,
        "phase2_last_loss": result.phase2.last_loss,
        "threads": torch.get_num_threads(),
        "before": before,
        "after": after,
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
