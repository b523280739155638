"""Times base-model training steps: random batches against length-grouped ones, in fp32 and bf16.

Usage:
    python asr/bench_training.py --data runs/asr/corpus/features --out bench-training.json
    python asr/bench_training.py --data runs/asr/corpus/features --steps 10 --rounds 2 --precisions fp32

Each configuration trains a fresh copy of the same initial model (preset ``cpu``, RNN-T + 0.3 CTC,
batch 32, the recipe's settings) through the library's training loop for ``--steps`` steps,
after one warm-up call per configuration; configurations alternate within each round. The
figures are medians over rounds of utterances and audio seconds trained per wall-clock second
and the share of the padded batches that is padding (and the most of the machine that other
processes used during any timed call); speed-ups are of audio seconds per second
(the timed batches of two configurations are different samples of the corpus), relative to
random fp32 batches (the loop without ``group_by_length``) in the same run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from polyglot_adapters.asr.model import conformer_transducer
from polyglot_adapters.asr.recipe import PRESETS, SpeechData
from polyglot_adapters.asr.training import collate_speech, feature_stats, transducer_loss
from polyglot_adapters.machine import LoadMeter, machine_info
from polyglot_adapters.training import TrainConfig, train

_FRAME_SECONDS = 0.01


def _time(model: torch.nn.Module, examples: list[Any], config: TrainConfig) -> dict[str, float]:
    """Trains a copy of ``model``; returns seconds, other load, utterances, audio seconds and padding share."""
    counts = {"frames": 0, "padded": 0, "utterances": 0}

    def collate(batch: list[Any], seeds: list[int]) -> dict[str, torch.Tensor]:
        out = collate_speech(batch, seeds)
        counts["frames"] += int(out["lengths"].sum())
        counts["padded"] += out["features"].shape[0] * out["features"].shape[1]
        counts["utterances"] += len(batch)
        return out

    model = copy.deepcopy(model)
    with LoadMeter() as meter:
        train(
            model,
            examples,
            collate,
            transducer_loss,
            config,
            progress=False,
            lengths=[e.features.shape[0] for e in examples],
        )
    seconds = meter.seconds
    return {
        "seconds": seconds,
        "other_load": meter.other_load,
        "utterances_per_s": counts["utterances"] / seconds,
        "audio_s_per_s": counts["frames"] * _FRAME_SECONDS / seconds,
        "padding": 1 - counts["frames"] / counts["padded"],
    }


def main(argv: list[str] | None = None) -> int:
    """Parses the arguments, times the configurations and prints (and writes) a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="Feature directory written by `asr data`.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16, help="Timed steps per configuration and round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = SpeechData.load(args.data)
    examples = data.select("train_head") + data.select("train_tail")
    torch.manual_seed(0)
    model = conformer_transducer(
        input_dim=80, num_symbols=data.tokenizer.num_symbols, ctc_weight=0.3, **PRESETS[args.preset]
    )
    model.transcriber.set_feature_stats(*feature_stats(examples))
    configs = {
        f"{'grouped' if grouped else 'random'} {precision}": TrainConfig(
            steps=args.steps,
            lr=2e-3,
            warmup_steps=1,
            batch_size=args.batch_size,
            precision=precision,
            group_by_length=grouped,
        )
        for precision in args.precisions.split(",")
        for grouped in (False, True)
    }
    for name, config in configs.items():  # warm-up: allocator, oneDNN primitives
        _time(model, examples, dataclasses.replace(config, steps=2))
        print(f"warmed up {name}", flush=True)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for round_index in range(args.rounds):
        for name, config in configs.items():
            runs[name].append(_time(model, examples, config))
            print(f"round {round_index + 1} {name}: {runs[name][-1]}", flush=True)
    baseline = next(iter(configs))
    base_rate = statistics.median(r["audio_s_per_s"] for r in runs[baseline])
    table = {}
    for name, results in runs.items():
        rate = statistics.median(r["audio_s_per_s"] for r in results)
        table[name] = {
            "utterances_per_s": statistics.median(r["utterances_per_s"] for r in results),
            "audio_s_per_s": rate,
            "padding": statistics.median(r["padding"] for r in results),
            "max_other_load": max((r["other_load"] or 0.0) for r in results),
            "speedup_vs_random_fp32": rate / base_rate,
            "per_round_speedup": [
                r["audio_s_per_s"] / b["audio_s_per_s"] for r, b in zip(results, runs[baseline], strict=True)
            ],
        }
    report = {
        "machine": machine_info(),
        "preset": args.preset,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "results": table,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
