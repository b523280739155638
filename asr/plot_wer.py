"""Draws the recipe's test WER per language as a PNG: base, base + LDA, full fine-tuning, Whisper-base.

Usage:
    python asr/plot_wer.py runs/asr --out asr/wer.png
    python asr/plot_wer.py runs/asr --whisper runs/asr/whisper.json --out asr/wer.png

Reads OUT/eval.json (`asr evaluate`: base and base + LDA per language), OUT/full/<lang>/report.json
(`asr train-lda --full`) where present and, with --whisper, the report of asr/whisper_baseline.py.
WER above 100% (insertions) is drawn at 100; a system without a figure for a language draws nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from polyglot_adapters.io import atomic_write_bytes
from polyglot_adapters.kg.plot import bar_chart_png


def main(argv: list[str] | None = None) -> int:
    """Reads the recipe's reports and writes the chart; a missing eval.json exits 1 with one line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="The recipe's output directory (asr/run_recipe.sh OUT).")
    parser.add_argument("--whisper", type=Path, help="JSON written by asr/whisper_baseline.py --out.")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write.")
    args = parser.parse_args(argv)
    eval_path = args.run / "eval.json"
    if not eval_path.is_file():
        print(f"error: {eval_path}: missing; run `polyglot-adapters asr evaluate ... --out {eval_path}` first")
        return 1
    table = json.loads(eval_path.read_text())
    languages = list(table)
    series = {
        "base": [table[lang]["base_wer"] for lang in languages],
        "base + LDA": [table[lang].get("lda_wer", math.nan) for lang in languages],
    }
    full = [args.run / "full" / lang / "report.json" for lang in languages]
    if any(path.is_file() for path in full):
        series["full fine-tuning"] = [
            json.loads(path.read_text())["test_after"]["wer"] if path.is_file() else math.nan for path in full
        ]
    if args.whisper is not None:
        rows = {row["language"]: row for row in json.loads(args.whisper.read_text())["languages"]}
        wers = [rows.get(lang, {}).get("wer") for lang in languages]  # None: a language Whisper lacks
        series["Whisper-base"] = [math.nan if wer is None else wer for wer in wers]
    clipped = {name: [min(v, 1.0) for v in values] for name, values in series.items()}
    png = bar_chart_png(languages, clipped, title="test WER (%) per language")
    atomic_write_bytes(args.out, png)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
