r"""Makes a CodeBERT-style base: masked-LM training of a RoBERTa encoder on the Python code corpus.

Usage:
    python code/pretrain_code_base.py --out runs/code/base --preset small --steps 2000 --batch-size 16
    python code/pretrain_code_base.py --out runs/code/base --preset medium --budget-seconds 170 \\
        --batch-size 64 --max-length 256 --lr 5e-4 --precision bf16 --device cuda   # the RESULTS.md run
    python code/pretrain_code_base.py --out runs/code/e5 --init default --steps 500  # continue the multilingual base
    python code/pretrain_code_base.py --help                                          # every option

The recipe is the library's command ``polyglot-adapters code pretrain``. With ``--init scratch``
(the default) it trains a byte-level BPE tokenizer (8,192 tokens) on the corpus's ``train`` files
and a fresh RoBERTa (``--preset``: tiny, small, medium, base = RoBERTa-base size) with BERT
masking (15%); ``--init default`` or ``--init DIR`` continues an existing masked-LM instead
(CodeBERT's own recipe continued a natural-language encoder). The corpus is the interpreter's
standard library (``--package NAME`` and ``--root DIR`` add more; ``--no-stdlib`` leaves it out),
split by top-level module. Writes OUT/checkpoint/ (a rerun resumes), OUT/best/, OUT/metrics.jsonl,
OUT/model/ (transformers model + tokenizer: pass it as ``--model`` to the other recipes) and
OUT/report.json (held-out masked-LM loss and top-1 before and after).
"""

from __future__ import annotations

import sys

from polyglot_adapters.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["code", "pretrain", *sys.argv[1:]]))
