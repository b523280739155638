"""Probing throughput: all typed candidates scored in length-grouped batches vs one candidate per forward pass.

Usage:
    python kg/bench_probe.py                                  # default model, en de sw yo, natural prompts
    python kg/bench_probe.py --languages en,ja --prompts all --per-relation 100 --out runs/bench-probe.json
    python kg/bench_probe.py --naive-facts 2                  # a longer naive loop
    python kg/bench_probe.py --precisions fp32                # float32 only

For each language, the batched probe (:func:`polyglot_adapters.probing.probe_language`) asks
``--per-relation`` training facts of every relation with the chosen templates, scoring every
candidate of the relation; facts/s counts facts over the whole probe (tokenisation, forward
passes, scoring and metrics). In the same run, the naive loop (one forward pass per candidate,
:func:`polyglot_adapters.probing.engine.score_naive`) scores ``--naive-facts`` facts per relation
and its facts/s is extrapolated from them; both give the same scores (the largest difference
is printed). Each precision of ``--precisions`` runs the batched probe once (``bf16``: the
encoder under bfloat16 autocast, the candidate softmax in float32); the table gives each one's
facts/s and how often bf16's top-1 answer is fp32's. Prints a markdown table with the machine
and writes it to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from polyglot_adapters.io import atomic_write_json
from polyglot_adapters.kg import load_kg
from polyglot_adapters.machine import LoadMeter, machine_info
from polyglot_adapters.models import default_mlm
from polyglot_adapters.probing import (
    PROMPT_SETS,
    ProbeSettings,
    build_queries,
    candidate_sets,
    load_templates,
    probe_facts,
    probe_language,
    score_naive,
    score_queries,
)


def naive_check(mlm, tokenizer, kg, language: str, prompts: str, facts_per_relation: int) -> tuple[float, float, int]:
    """Naive facts/s over a few facts, and the largest score difference to the batched path."""
    relations = list(kg.relations)
    facts = probe_facts(kg, language, relations, per_relation=facts_per_relation, seed=1)
    templates = load_templates([language], relations, PROMPT_SETS[prompts])
    candidates = candidate_sets(kg, language, relations)
    started = time.perf_counter()
    queries, tables = build_queries(
        tokenizer, facts, templates, lambda e: kg.entities[e][language], candidates, relations
    )
    slow = score_naive(mlm, tokenizer, queries, tables)
    seconds = time.perf_counter() - started
    fast = score_queries(mlm, tokenizer, queries, tables)
    diff = max(float((a - b).abs().max()) for a, b in zip(fast, slow, strict=True))
    return len(facts) / seconds, diff, len(facts)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--languages", default="en,de,sw,yo")
    parser.add_argument("--prompts", default="natural", choices=sorted(PROMPT_SETS))
    parser.add_argument("--per-relation", type=int, default=50)
    parser.add_argument("--naive-facts", type=int, default=1, help="Facts per relation in the naive loop.")
    parser.add_argument("--precisions", default="fp32,bf16", help="Batched probes to time (fp32 first).")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    languages = [c for c in args.languages.split(",") if c]
    kg = load_kg("cldr")
    mlm, tokenizer = default_mlm()
    precisions = [p for p in args.precisions.split(",") if p]
    if not precisions or precisions[0] != "fp32" or set(precisions) - {"fp32", "bf16"}:
        parser.error("--precisions must start with fp32 and list only fp32 and bf16")
    for precision in precisions:  # warm-up
        probe_language(
            mlm, tokenizer, kg, languages[0], ProbeSettings(prompts="natural", per_relation=1, precision=precision)
        )
    rows = []
    for language in languages:
        with LoadMeter() as meter:
            results = {
                precision: probe_language(
                    mlm,
                    tokenizer,
                    kg,
                    language,
                    ProbeSettings(
                        prompts=args.prompts, per_relation=args.per_relation, replicates=200, precision=precision
                    ),
                )
                for precision in precisions
            }
            naive_rate, diff, naive_facts = naive_check(mlm, tokenizer, kg, language, args.prompts, args.naive_facts)
        exact = results["fp32"]
        row = {
            "language": language,
            "facts": exact["facts"],
            "templates_per_fact": exact["templates_per_fact"],
            "rows": exact["rows"],
            "naive_facts": naive_facts,
            "naive_facts_per_s": naive_rate,
            "max_score_diff": diff,
            "other_load": meter.other_load,
        }
        for precision, result in results.items():
            row[f"{precision}_facts_per_s"] = result["facts_per_second"]
            row[f"{precision}_metrics"] = {k: v["value"] for k, v in result["metrics"].items()}
            same = [a["top1"] == b["top1"] for a, b in zip(exact["top1"], result["top1"], strict=True)]
            row[f"{precision}_top1_agreement"] = sum(same) / len(same)
        rows.append(row)
        print(f"{language}: {row}", file=sys.stderr)
    machine = machine_info()
    loads = [r["other_load"] for r in rows if r["other_load"] is not None]
    lines = [
        f"Machine: {machine['cpu']}, {machine['usable_cpus']} CPUs, {machine['torch_threads']} torch threads, "
        f"torch {machine['torch']}; other processes' CPU share: up to {max(loads, default=float('nan')):.0%}",
        f"Prompts: {args.prompts}; every candidate of the relation scored; naive loop on "
        f"{args.naive_facts} fact(s) per relation",
        "",
        "| language | facts | templates/fact | forward rows | naive facts/s | "
        + " | ".join(f"{p} facts/s | {p} vs naive" for p in precisions)
        + " | max score diff (fp32 vs naive) | "
        + " | ".join(f"{p} vs fp32 | {p} top-1 = fp32's" for p in precisions[1:])
        + " |",
        "|---" * (6 + 2 * len(precisions) + 2 * (len(precisions) - 1)) + "|",
    ]
    for r in rows:
        cells = [r["language"], r["facts"], r["templates_per_fact"], r["rows"], f"{r['naive_facts_per_s']:.2f}"]
        cells += [
            x
            for p in precisions
            for x in (f"{r[p + '_facts_per_s']:.1f}", f"{r[p + '_facts_per_s'] / r['naive_facts_per_s']:.0f}x")
        ]
        cells.append(f"{r['max_score_diff']:.1e}")
        cells += [
            x
            for p in precisions[1:]
            for x in (f"{r[p + '_facts_per_s'] / r['fp32_facts_per_s']:.2f}x", f"{r[p + '_top1_agreement']:.1%}")
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {"machine": machine, "args": vars(args) | {"out": str(args.out)}, "rows": rows}
        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
