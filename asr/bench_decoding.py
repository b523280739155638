"""Times offline decoding: batched greedy search against beam search, and their error rates.

Usage:
    python asr/bench_decoding.py --model runs/asr/base/model --bundle runs/asr/lda/bundle \
        --data runs/asr/corpus/features --split test --beams 4,8 --rounds 3 --out bench-decoding.json

Each language's utterances go through its adapter where the bundle has one (the base otherwise),
in batches of 16 (`evaluate`): the encoder runs batched, then either greedy search runs on the
whole batch or torchaudio's beam search on one utterance at a time. Each round times every
search once, in turn; the report has the median over rounds of the decoding time per second of
audio (RTF, encoder included), each beam's time as a multiple of greedy's (per round, then the
median), and the WER/CER of each search: per language, and their mean over the languages.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from polyglot_adapters import AdaptedModel
from polyglot_adapters.asr import SAMPLE_RATE
from polyglot_adapters.asr.features import HOP
from polyglot_adapters.asr.recipe import SpeechData
from polyglot_adapters.asr.training import evaluate, load_transducer
from polyglot_adapters.merging import load_bundle


def main(argv: list[str] | None = None) -> int:
    """Parses the arguments, times each search and prints (and writes) a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="A model directory (asr train-base).")
    parser.add_argument("--bundle", type=Path, help="A bundle of language adapters (asr train-lda --lang a,b,...).")
    parser.add_argument("--data", type=Path, required=True, help="Feature directory written by `asr data`.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beams", default="4,8", help="Beam widths, comma-separated.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [1, *(int(b) for b in args.beams.split(","))]
    data = SpeechData.load(args.data)
    model = AdaptedModel(load_transducer(args.model)[0].requires_grad_(False))
    if args.bundle is not None:
        load_bundle(model, args.bundle)
    languages = [lang for lang in data.languages if data.select(args.split, lang)]
    frames = sum(e.features.shape[0] for e in data.select(args.split))
    audio_seconds = frames * HOP / SAMPLE_RATE  # features are 10 ms frames
    seconds: dict[int, list[float]] = {w: [] for w in widths}
    scores: dict[int, dict[str, dict[str, float]]] = {}
    for _ in range(args.rounds):
        for width in widths:
            start = time.perf_counter()
            for lang in languages:
                model.set_active(lang if lang in model.adapters else None)
                scores.setdefault(width, {})[lang] = evaluate(
                    model, data.select(args.split, lang), data.tokenizer, beam_width=width
                )
            seconds[width].append(time.perf_counter() - start)

    def mean(width: int, key: str) -> float:
        return statistics.mean(scores[width][lang][key] for lang in languages)

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
        "torch": torch.__version__,
        "utterances": len(data.select(args.split)),
        "audio_seconds": audio_seconds,
        "adapters": sorted(model.adapters),
        "searches": {
            ("greedy" if w == 1 else f"beam {w}"): {
                "rtf": statistics.median(seconds[w]) / audio_seconds,
                "time_vs_greedy": statistics.median(s / g for s, g in zip(seconds[w], seconds[1], strict=True)),
                "mean_wer": mean(w, "wer"),
                "mean_cer": mean(w, "cer"),
                "per_language": {lang: {k: scores[w][lang][k] for k in ("wer", "cer")} for lang in languages},
            }
            for w in widths
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
