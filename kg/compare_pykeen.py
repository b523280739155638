"""Link prediction on UMLS / Nations: a text-encoded adapter model against PyKEEN TransE and RotatE, same budget.

Usage:
    python kg/compare_pykeen.py --kg nations --epochs 30
    python kg/compare_pykeen.py --kg umls --epochs 10 --device cuda --precision bf16 --json runs/umls.json
    python kg/compare_pykeen.py --kg nations --interaction rotate       # any PyKEEN interaction by name
    python kg/compare_pykeen.py --kg nations --epochs 20 --budget time  # PyKEEN gets our training seconds
    python kg/compare_pykeen.py --kg umls --epochs 5 --budget time --device cuda --precision bf16 --json umls-time.json

Ours: a TP bottleneck adapter on the frozen default base plus a PyKEEN interaction head over the
encoded "(subject, relation)" query and the encoded entity name (relation vectors learned),
trained with PyKEEN's cross-entropy loss over in-batch and hard negatives. PyKEEN's TransE and
RotatE are trained by pykeen.pipeline with the same batch size and, with --budget epochs (the
default), the same epochs; with --budget time ours trains --epochs epochs and each PyKEEN model
trains for the same training seconds (stopped after the epoch ending nearest them). All three are
scored by filtered tail ranking of the test triples with PyKEEN's rank-based evaluator (realistic
ranks). Prints a table (MRR, Hits@1/3/10, epochs, training seconds) and optionally writes it as
JSON. PyKEEN 1.11.1 ships no tuned configurations for these datasets, so PyKEEN runs with its
defaults.
"""

from __future__ import annotations

import argparse
import sys

from polyglot_adapters.errors import PolyglotAdaptersError
from polyglot_adapters.io import atomic_write_json
from polyglot_adapters.kg import load_kg
from polyglot_adapters.kg.compare import BUDGETS, compare_with_pykeen
from polyglot_adapters.models import load_base


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison; library errors print one line and exit 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kg", default="nations", choices=["nations", "kinships", "umls"])
    parser.add_argument("--epochs", type=int, default=30, help="our epochs (and PyKEEN's with --budget epochs)")
    parser.add_argument(
        "--budget", default="epochs", choices=BUDGETS, help="PyKEEN gets the same epochs or the same training seconds"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--interaction", default="transe", help="PyKEEN interaction of our head")
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    try:
        kg = load_kg(args.kg)
        host, tokenizer = load_base(args.model)
        results = compare_with_pykeen(
            host.to(args.device),
            tokenizer,
            kg,
            epochs=args.epochs,
            budget=args.budget,
            batch_size=args.batch_size,
            interaction=args.interaction,
            precision=args.precision,
            device=args.device,
            seed=args.seed,
        )
    except PolyglotAdaptersError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    budget = f"{args.epochs} epochs each" if args.budget == "epochs" else f"ours {args.epochs} epochs, same seconds"
    print(f"{args.kg}, budget: {budget}, batch {args.batch_size}, filtered tail ranking (test)")
    print(f"{'system':<32}{'MRR':>8}{'H@1':>8}{'H@3':>8}{'H@10':>8}{'epochs':>8}{'seconds':>10}")
    for system, m in results.items():
        print(
            f"{system:<32}{m['mrr']:>8.3f}{m['hits@1']:>8.3f}{m['hits@3']:>8.3f}{m['hits@10']:>8.3f}"
            f"{m['epochs']:>8d}{m['seconds']:>10.1f}"
        )
    print("seconds: training only (evaluation excluded)")
    if args.json:
        doc = {
            "kg": args.kg,
            "budget": args.budget,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "results": results,
        }
        atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
