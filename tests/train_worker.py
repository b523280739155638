"""Trains a tiny adapter with the shared loop; run by tests in subprocesses (plain or under torchrun).

Usage:
    python tests/train_worker.py OUT_DIR [--steps N] [--save-every N] [--stall-at STEP]
    python -m torch.distributed.run --nproc_per_node 2 tests/train_worker.py OUT_DIR ...

The tests import ``dataset``, ``collate``, ``loss_fn`` and ``build`` from here too, so the
in-process and the subprocess runs train the very same task: a bottleneck + LoRA stack on a tiny
random BERT learning to fill masked tokens of ``a, a+1, a+2, ...`` sequences.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, Stack
from polyglot_adapters.demo import tiny_bert
from polyglot_adapters.training import TrainConfig, train

VOCAB, LENGTH = 64, 12


def dataset(n: int = 40) -> list[torch.Tensor]:
    """``n`` rows ``a, a+1, ..., a+LENGTH-1`` (mod the vocabulary, ids 1..VOCAB-1)."""
    gen = torch.Generator().manual_seed(123)
    starts = torch.randint(1, VOCAB, (n, 1), generator=gen)
    return list((starts + torch.arange(LENGTH)) % (VOCAB - 1) + 1)


def collate(examples: list[torch.Tensor], seeds: list[int]) -> dict[str, torch.Tensor]:
    """Masks 30% of each row (id 0) with the row's own seed, so shards and resumes mask alike."""
    ids = torch.stack(examples)  # (B, T)
    mask = torch.stack([torch.rand(LENGTH, generator=torch.Generator().manual_seed(s)) < 0.3 for s in seeds])
    mask[:, 0] = True  # every row has a target, so the per-row mean is defined
    return {"input_ids": ids.masked_fill(mask, 0), "labels": torch.where(mask, ids, -100)}


def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Masked-token cross-entropy, averaged per row, then over rows (shard-invariant)."""
    logits = model(input_ids=batch["input_ids"]).logits  # (B, T, V)
    per_token = F.cross_entropy(logits.float().transpose(1, 2), batch["labels"], reduction="none")  # (B, T)
    counts = (batch["labels"] != -100).sum(1)  # (B,)
    return (per_token.sum(1) / counts).mean()


def build() -> AdaptedModel:
    """The tiny host with two trainable adapters (dropout off: processes would draw different masks)."""
    host = tiny_bert(seed=0)
    for module in host.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    am = AdaptedModel(host)
    am.add_adapter("lang", BottleneckConfig(reduction_factor=4))
    am.add_adapter("task", LoraConfig(r=2))
    am.set_active(Stack("lang", "task"))
    am.train_adapters("lang", "task")
    return am


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-every", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument(
        "--stall-at", type=int, default=0, help="write OUT/stalled/RANK.pid and hang after the checkpoint of this step"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    am = build()
    config = TrainConfig(
        steps=args.steps,
        lr=1e-2,
        warmup_steps=2,
        batch_size=args.batch,
        grad_accumulation=args.accumulation,
        save_every=args.save_every,
        log_every=1,
    )
    calls = [0]

    def stalling_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # The first call of step `stall_at` comes right after that step's checkpoint was written.
        if args.stall_at and calls[0] == args.stall_at * args.accumulation:
            # Tell the test whom to kill: torchrun starts its workers in sessions of their own.
            stalled = args.out / "stalled"
            stalled.mkdir(exist_ok=True)
            (stalled / f"{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))
            time.sleep(600)
        calls[0] += 1
        return loss_fn(model, batch)

    result = train(am, dataset(), collate, stalling_loss, config, out_dir=args.out, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        for name in ("lang", "task"):
            am.save_adapter(name, args.out / "final" / name)
        print(f"done resumed_from={result.resumed_from} loss={result.last_loss:.6f}", flush=True)


if __name__ == "__main__":
    main()
