"""P-Adapters (rewrite, prefix) and the P-Tuning and mixture-of-experts baselines against natural prompts.

Usage:
    python kg/train_p_adapters.py --kg-adapter runs/kg-masked/kg --out runs/p-adapters       # on the KG adapter
    python kg/train_p_adapters.py --out runs/p-adapters-base                                  # on the base alone
    python kg/train_p_adapters.py --variants rewrite,ptuning --steps 200 --eval-languages en,sw --out runs/pa-small
    python kg/train_p_adapters.py --variants rewrite --precision bf16 --out runs/pa-bf16   # bf16 autocast
    python kg/train_p_adapters.py --variants rewrite --consistency-weight 1 --batch-size 16 --out runs/pa-c1

The setting of the P-Adapter paper on the CLDR MLKG: the KG's training triples (the facts a KG
adapter was trained on) are split per relation into P-Adapter training facts and held-out facts,
the same in every language. Each variant trains on the training facts asked with the *training*
paraphrases, in all ``--languages`` at once (with ``--consistency-weight`` a batch holds whole facts,
each with all its training paraphrases, and a term pulls a fact's paraphrases towards the same
answer), with the masked LM and the KG adapter frozen. All
systems are evaluated on held-out facts asked with the *held-out* paraphrases (out-of-distribution
prompts): the model alone ("natural prompts") and with each trained variant. Reports macro P@1
and consistency with 95% bootstrap intervals per language, English and the mean over the other
languages, in ``OUT/results.md`` and ``OUT/results.json``; each variant's run is in ``OUT/<variant>/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from polyglot_adapters import AdaptedModel
from polyglot_adapters.io import atomic_write_bytes
from polyglot_adapters.kg import load_kg
from polyglot_adapters.machine import machine_info
from polyglot_adapters.models import default_mlm
from polyglot_adapters.probing import (
    PAdapterSettings,
    ProbeSettings,
    cap_per_relation,
    fact_split,
    json_bytes,
    probe_facts,
    probe_language,
    train_p_adapter,
)

VARIANTS = ("rewrite", "prefix", "ptuning", "moe")


def fresh_model(kg_adapter: Path | None) -> tuple[AdaptedModel, Any]:
    """The default masked LM, with the KG adapter attached, active and frozen if given."""
    mlm, tokenizer = default_mlm()
    model = AdaptedModel(mlm)
    if kg_adapter is not None:
        name = model.load_adapter(kg_adapter)
        model.set_active(name)
    return model.eval(), tokenizer


def evaluate(model, tokenizer, kg, languages, held_out, settings, slots=0) -> dict[str, Any]:
    """Probes every language on its held-out facts with the held-out paraphrases."""
    out = {}
    for language in languages:
        out[language] = probe_language(model, tokenizer, kg, language, settings, slots=slots, facts=held_out[language])
        out[language].pop("top1")
        m = out[language]["metrics"]
        print(
            f"  {language}: P@1 {100 * m['p@1']['value']:.1f}  consistency {100 * m['consistency']['value']:.1f}",
            file=sys.stderr,
        )
    return out


def held_out_facts(kg, language: str, settings: PAdapterSettings, per_relation: int) -> list:
    """The P-Adapter's held-out facts in ``language`` (its split of the KG's training triples), capped per relation."""
    facts = probe_facts(kg, language, list(kg.relations), splits=("train",))
    _, held_out = fact_split(facts, settings.held_out_fraction, settings.seed)
    return cap_per_relation(held_out, per_relation)


def summary_row(system: str, results: dict[str, Any], languages: list[str]) -> str:
    """A markdown row: English and the mean over the other languages, P@1 and consistency."""

    def value(lang: str, metric: str) -> float:
        return 100 * results[lang]["metrics"][metric]["value"]

    def cell(lang: str, metric: str) -> str:
        m = results[lang]["metrics"][metric]
        return f"{100 * m['value']:.1f} [{100 * m['low']:.1f}, {100 * m['high']:.1f}]"

    others = [lang for lang in languages if lang != "en"]
    mean = {m: sum(value(lang, m) for lang in others) / len(others) for m in ("p@1", "consistency")} if others else {}
    en = [cell("en", "p@1"), cell("en", "consistency")] if "en" in languages else ["-", "-"]
    rest = [f"{mean['p@1']:.1f}", f"{mean['consistency']:.1f}"] if others else ["-", "-"]
    per_language = " ".join(f"{lang} {value(lang, 'p@1'):.0f}/{value(lang, 'consistency'):.0f}" for lang in languages)
    return f"| {system} | {' | '.join(en)} | {' | '.join(rest)} | {per_language} |"


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kg-adapter", type=Path, default=None, help="A saved KG adapter (default: the base alone).")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--languages", default=",".join(PAdapterSettings().languages), help="Training languages.")
    parser.add_argument("--eval-languages", default="en,de,ja,hi,ar,sw,am,yo")
    parser.add_argument("--eval-per-relation", type=int, default=15, help="Held-out facts per relation and language.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="Rows per step (with --consistency-weight: facts, with every prompt).",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--consistency-weight",
        type=float,
        default=0.0,
        help="Weight of the symmetric KL between paraphrases of one fact (0: the token NLL alone).",
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="Training and probing (bf16: autocast)."
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    languages = tuple(c for c in args.languages.split(",") if c)
    eval_languages = [c for c in args.eval_languages.split(",") if c]
    torch.manual_seed(args.seed)
    kg = load_kg("cldr")
    probe_settings = ProbeSettings(
        prompts="heldout", per_relation=None, replicates=500, seed=args.seed, precision=args.precision
    )
    systems: dict[str, Any] = {}
    reports: dict[str, Any] = {}
    held_out: dict[str, list] | None = None
    for variant in variants:
        settings = PAdapterSettings(
            variant=variant,
            languages=languages,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            consistency_weight=args.consistency_weight,
            precision=args.precision,
            seed=args.seed,
        )
        model, tokenizer = fresh_model(args.kg_adapter)
        print(f"training {variant}", file=sys.stderr)
        started = time.perf_counter()
        report = train_p_adapter(model, tokenizer, kg, settings, out_dir=args.out / variant, echo=print)
        report["wall_seconds"] = time.perf_counter() - started
        if held_out is None:
            held_out = {lang: held_out_facts(kg, lang, settings, args.eval_per_relation) for lang in eval_languages}
            base, _ = fresh_model(args.kg_adapter)
            print("evaluating natural prompts", file=sys.stderr)
            systems["natural prompts"] = evaluate(base, tokenizer, kg, eval_languages, held_out, probe_settings)
        print(f"evaluating {variant}", file=sys.stderr)
        systems[variant] = evaluate(
            model.eval(), tokenizer, kg, eval_languages, held_out, probe_settings, slots=settings.slots
        )
        reports[variant] = {k: v for k, v in report.items() if k != "held_out_facts"}
    header = [
        f"On: {'KG adapter ' + str(args.kg_adapter) if args.kg_adapter else 'the base alone'}; held-out facts "
        f"(up to {args.eval_per_relation} per relation and language), held-out paraphrases; macro P@1 and "
        "consistency in %, 95% bootstrap intervals for English.",
        "",
        "| system | en P@1 | en consistency | others P@1 (mean) | others consistency (mean) | per language P@1/cons |",
        "|---|---|---|---|---|---|",
    ]
    rows = [summary_row(system, results, eval_languages) for system, results in systems.items()]
    params = [
        f"- {v}: {r['trainable_parameters']:,} trainable parameters ({r['trainable_percent']:.2f}% of the host), "
        f"{r['examples']:,} training examples, last loss {r['last_loss']:.3f}, {r['seconds'] / 60:.1f} min"
        for v, r in reports.items()
    ]
    machine = machine_info()
    footer = [f"Machine: {machine['cpu']}, {machine['usable_cpus']} CPUs, torch {machine['torch']}."]
    text = "\n".join(header + rows + [""] + params + [""] + footer) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "results.md", text.encode())
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine, "systems": systems}
    payload["training"] = reports
    atomic_write_bytes(args.out / "results.json", json_bytes(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
