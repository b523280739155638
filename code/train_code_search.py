r"""Code search (docstring -> function) with a frozen code encoder: task adapter, NER + task adapter, full FT.

Usage:
    python code/train_code_search.py --model runs/code/base/model --out runs/code/search/task --setup task
    python code/train_code_search.py --model runs/code/base/model --out runs/code/search/ner+task \\
        --setup ner+task --ner-adapter runs/code/ner/adapter
    python code/train_code_search.py --model runs/code/base/model --out runs/code/search/gate \\
        --setup gate --ner-adapter runs/code/ner/adapter
    python code/train_code_search.py --model runs/code/base/model --out runs/code/search/ner-low \\
        --setup ner+task --ner-adapter runs/code/ner/adapter --ner-sides code --ner-layers 0-5
    python code/train_code_search.py --model runs/code/base/model --out runs/code/search/full --setup full --lr 1e-4
    python code/train_code_search.py --help                                                  # every option

The recipe is the library's command ``polyglot-adapters code search``. Queries are the first
paragraph of a function's docstring, candidates are the functions without their docstrings
(deduplicated; ``train`` modules for training, ``valid`` to keep the best step, ``test`` for the
reported scores). A bi-encoder (mean pooling, symmetric in-batch InfoNCE, temperature 0.05) is
trained in one of five setups: ``zero-shot``, ``full`` (every encoder parameter), ``task`` (a task
adapter, reduction 16), ``ner+task`` (the frozen NER adapter with the task adapter stacked on
top) or ``gate`` (NER and task adapters mixed by a learned gate). ``--ner-sides code`` keeps the
NER adapter off the queries, ``--ner-layers`` keeps some of its blocks, ``--tune-ner`` trains it
too. OUT/report.json holds the MRR and recall@1/5/10 over all test functions and the trainable
parameters against full fine-tuning.
"""

from __future__ import annotations

import sys

from polyglot_adapters.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["code", "search", *sys.argv[1:]]))
