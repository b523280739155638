"""Evaluates a KG-adapter run: entity alignment and filtered link prediction per language, beside baselines.

Usage:
    python kg/evaluate_kg.py --run runs/kg                         # writes runs/kg/eval/
    python kg/evaluate_kg.py --run runs/kg-gpu --device cuda --out runs/kg-gpu/eval
    python kg/evaluate_kg.py --run runs/kg --alignment-languages sw,yo --link-languages en,sw --split valid
    python kg/evaluate_kg.py --help

The recipe is the library's command ``polyglot-adapters kg eval``. Entity alignment: English to
each language, for the entities held out of alignment training, ranked against every entity
labelled in the target language (Hits@1, Hits@10, MRR), for the character n-gram name-overlap
baseline, the base model without adapters, EP, ES, EP+ES (averaged) and the fused gate.
Link prediction: filtered tail ranking of the test triples among all entities labelled in the
language (PyKEEN's rank-based evaluator, realistic ranks) for the base model, TP, TS and the fused
gate; label languages not used in triple training are marked. Writes OUT/results.json,
OUT/results.md (the tables) and OUT/hits_at_1.png (alignment Hits@1 per language).
"""

from __future__ import annotations

import sys

from polyglot_adapters.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["kg", "eval", *sys.argv[1:]]))
