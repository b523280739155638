"""Trains a NER adapter with Token Type Classification (TTC) on a frozen CodeBERT-style encoder.

Usage:
    python code/train_ner_adapter.py --model runs/code/base/model --out runs/code/ner --steps 500
    python code/train_ner_adapter.py --model runs/code/base/model --out runs/code/ner-head-only --head-only
    python code/train_ner_adapter.py --model /path/to/codebert-base --out runs/codebert/ner   # any RoBERTa checkpoint
    python code/train_ner_adapter.py --help                                                  # every option

The recipe is the library's command ``polyglot-adapters train ner-adapter``. Every source file of
the corpus is labelled with 17 token types from ``tokenize`` + ``ast`` (keyword, builtin,
function_name, class_name, parameter, local_variable, global_variable, attribute, call, import,
decorator, string, fstring, number, operator, comment, docstring), aligned to the encoder's
subwords (all-subword labelling: each subword takes the type of its first non-blank character;
whitespace-only subwords are unlabelled) and cut into 256-token windows overlapping by 32. A
bottleneck adapter after every block's feed-forward sub-layer (reduction 16) and a linear head
are trained; the encoder stays frozen (``--head-only``: the head alone, the baseline). The
adapter best on held-out ``valid`` modules is kept. Writes OUT/adapter/ (adapter.json,
adapter.safetensors, head.json, head.safetensors) and OUT/report.json (accuracy, macro-F1 and
per-type F1 on held-out ``valid`` and ``test`` modules, each token scored once).
"""

from __future__ import annotations

import sys

from polyglot_adapters.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", "ner-adapter", *sys.argv[1:]]))
