"""Trains one MAD-X language adapter with masked-LM loss on a language's UDHR text.

Usage:
    python kg/train_language_adapter.py --lang sw --steps 200 --out runs/language-adapters/sw
    python kg/train_language_adapter.py --lang amh --model /path/to/xlm-roberta-base --out runs/xlmr/am
    python kg/train_language_adapter.py --lang yo --reduction-factor 2 --no-invertible --out runs/yo-rf2
    torchrun --nproc_per_node 2 kg/train_language_adapter.py --lang sw --out runs/sw   # data parallel
    python kg/train_language_adapter.py --help                                          # every option

The recipe is the library's command ``polyglot-adapters train language-adapter`` with the same
options: a bottleneck adapter after every block's feed-forward sub-layer (reduction 16, ReLU)
plus the invertible embedding adapter, trained on the UDHR ``train`` articles packed into
128-token windows (BERT masking, 15%), AdamW lr 1e-3 with 10% warm-up and linear decay,
batch 8. The adapter best on the ``valid`` articles is kept.

Writes OUT/run.json (settings), OUT/checkpoint/ (a rerun resumes from it), OUT/best/,
OUT/metrics.jsonl, then OUT/adapter/ (adapter.json + adapter.safetensors) and OUT/report.json
(held-out masked-LM loss and top-1 accuracy on the valid and test articles before and after,
adapter size against the base's non-embedding parameters, training tokens/s). Bad input (an
unknown language code, a language without UDHR text, a directory that is no masked-LM
checkpoint, a tokenizer that does not fit the model) prints one ``error:`` line and exits 1.
"""

from __future__ import annotations

import sys

from polyglot_adapters.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", "language-adapter", *sys.argv[1:]]))
