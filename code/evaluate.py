"""Tables for code/RESULTS.md from a run tree, and the labelling throughput on this machine.

Usage:
    python code/evaluate.py runs/code                 # tables from runs/code/{base,ner,ner-head-only,search/*}
    python code/evaluate.py --compare RUN_A RUN_B     # paired bootstrap of two search runs' test MRR difference
    python code/evaluate.py --compare A_S0 B_S0 A_S1 B_S1   # the same over seeds (pairs), with a t interval
    python code/evaluate.py --throughput              # MB of source labelled per CPU second (one core)
    python code/evaluate.py --corpus                  # corpus statistics (files, splits, skipped files)

The tables are read from the ``report.json`` files the other recipes write (nothing is
recomputed or invented); ``--compare`` is ``polyglot-adapters code compare`` (queries resampled
with replacement, both runs' reciprocal ranks together; several pairs are one per training seed), ``--throughput`` is
``polyglot-adapters code throughput`` and ``--corpus`` is ``polyglot-adapters code corpus``.
"""

from __future__ import annotations

import sys

from polyglot_adapters.cli.main import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--throughput"]:
        sys.exit(main(["code", "throughput", *args[1:]]))
    if args[:1] == ["--compare"]:
        sys.exit(main(["code", "compare", *args[1:]]))
    if args[:1] == ["--corpus"]:
        sys.exit(main(["code", "corpus", *args[1:]]))
    sys.exit(main(["code", "report", *args]))
