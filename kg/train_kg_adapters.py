"""Trains the multilingual knowledge-graph adapters EP, TP, ES and TS (and optionally a fusion gate).

Usage:
    python kg/train_kg_adapters.py --out runs/kg                                   # CLDR MLKG, all four, CPU
    python kg/train_kg_adapters.py --out runs/kg --layers 6-11 --steps 100         # cheaper: top six blocks only
    python kg/train_kg_adapters.py --out runs/kg-gpu --device cuda --precision bf16 --steps 1000 --fuse-steps 300
    python kg/train_kg_adapters.py --objectives ep,es --alignment-languages sw,yo,zu --out runs/ep-africa
    python kg/train_kg_adapters.py --out runs/kg-sw --model default-mlm --language-adapter runs/la/sw/adapter
    python kg/train_kg_adapters.py --kg nations --objectives tp --out runs/nations-tp
    python kg/train_kg_adapters.py --help                                          # every option

The recipe is the library's command ``polyglot-adapters train kg-adapters`` with the same options.
Each objective trains its own bottleneck adapter (reduction 16, after every feed-forward
sub-layer) on the frozen default base (multilingual-e5-small) with mean-pooled embeddings and
InfoNCE over in-batch and mined hard negatives (temperature 0.05), AdamW lr 1e-3, 10% warm-up,
linear decay, batch 32:

    ep  English label <-> label in each of 12 languages, alignment-training entities only (70%)
    tp  "(subject, relation)" -> object label, labels in en de fr es ru zh ja ar hi
    es  entity sentences ("Ufaransa ni nchi au eneo."), English <-> de fr es sw
    ts  cloze sentences ("Sarafu ya ___") -> object sentence, en de fr es

Low-resource label languages (sw yo zu ha am so ig) are kept out of triple training so that link
prediction with their labels measures transfer. With --fuse-steps N, a gate (MixDA-style) over
the trained adapters is trained N steps on a mix of all four tasks. Writes OUT/run.json,
OUT/<objective>/ (checkpoint, metrics.jsonl, adapter/), OUT/kg-gate/ and OUT/report.json; a
rerun with the same settings resumes. Evaluate with kg/evaluate_kg.py.

A language adapter from kg/train_language_adapter.py was trained on the default masked-LM host,
whose top four blocks are its own retrained copies: stack on it with --model default-mlm (and
evaluate with the same --model); with --model default its loading is refused.
"""

from __future__ import annotations

import sys

from polyglot_adapters.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", "kg-adapters", *sys.argv[1:]]))
