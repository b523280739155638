"""Times streaming decoding: real-time factor and per-chunk compute latency, one CPU thread.

Usage:
    python asr/bench_streaming.py --model runs/asr/base/model --bundle runs/asr/lda/bundle \
        --audio runs/asr/corpus/test/sw/00000-0.wav --audio runs/asr/corpus/test/de/00003-0.wav --out bench.json
    python asr/bench_streaming.py --preset cpu --audio A.wav          # an untrained model of that size

Each chunk size (160, 320, 640 ms) is timed for one stream and for all streams in one batch
(each with its language's adapter, or the base), in interleaved rounds; the figures are the
median over rounds of: wall time over audio time (RTF) and the p50/p95 of per-chunk compute time
as a fraction of the chunk's duration. With a cascaded model, ``second_pass_ms`` is the compute of
the second pass that gives a stream's final text after its end (the largest over the batch's
streams), outside the RTF, which times the streaming pass.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

from polyglot_adapters.asr import read_audio, train_tokenizer
from polyglot_adapters.asr.model import conformer_transducer
from polyglot_adapters.asr.recipe import PRESETS
from polyglot_adapters.asr.streaming import Recognizer


def main(argv: list[str] | None = None) -> int:
    """Parses the arguments, times the streams and prints (and writes) a JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="A model directory (asr train-base).")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="Or an untrained model of this size.")
    parser.add_argument("--adapter", action="append", default=[], help="LANG=DIR, repeatable.")
    parser.add_argument("--bundle", type=Path, help="A bundle of language adapters (asr train-lda --lang a,b,...).")
    parser.add_argument("--audio", action="append", required=True, help="AUDIO or AUDIO:LANG (default sw).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    adapters = dict(pair.split("=", 1) for pair in args.adapter)
    if args.model is not None:
        recognizer = Recognizer.load(args.model, adapters, args.bundle)
    else:
        tokenizer = train_tokenizer(["watu wote wamezaliwa huru na sawa kwa utu na haki"] * 8, vocab_size=64)
        torch.manual_seed(0)
        model = conformer_transducer(input_dim=80, num_symbols=tokenizer.num_symbols, **PRESETS[args.preset or "cpu"])
        recognizer = Recognizer(model, tokenizer)
    streams = [item.rsplit(":", 1) if ":" in item else (item, "sw") for item in args.audio]
    waves = [read_audio(path, resample=True) for path, _ in streams]
    languages = [lang for _, lang in streams]
    runs: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for chunk_ms in (160, 320, 640):
            for label, ws, ls in (("1 stream", waves[:1], languages[:1]), (f"{len(waves)} streams", waves, languages)):
                results = recognizer.stream(ws, ls, chunk_ms=chunk_ms)
                chunk = sorted(results[0].chunk_seconds)
                audio = max(r.audio_seconds for r in results)
                runs.setdefault(f"{chunk_ms} ms, {label}", []).append(
                    {
                        "rtf": sum(chunk) / audio,
                        "p50": statistics.median(chunk) * 1000 / chunk_ms,
                        "p95": chunk[min(len(chunk) - 1, int(0.95 * len(chunk)))] * 1000 / chunk_ms,
                        "second_pass_ms": max(r.final_seconds for r in results) * 1000,
                    }
                )
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s)",
        "parameters": sum(p.numel() for p in recognizer.model.parameters()),
        "audio_seconds": [round(w.numel() / 16000, 2) for w in waves],
        "results": {
            k: {m: statistics.median(r[m] for r in v) for m in ("rtf", "p50", "p95", "second_pass_ms")}
            for k, v in runs.items()
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
