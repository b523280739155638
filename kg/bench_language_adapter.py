"""Training throughput of a language adapter against full fine-tuning, on the same batch in the same run.

Usage:
    python kg/bench_language_adapter.py                                   # default host, Swahili, 8 x 128, fp32
    python kg/bench_language_adapter.py --precision bf16 --out runs/bench-bf16.json
    python kg/bench_language_adapter.py --model /path/to/xlm-roberta-base --batch-size 16
    python kg/bench_language_adapter.py --layers 6-11 --no-invertible      # adapters in the top 6 blocks only
    python kg/bench_language_adapter.py --device cuda --precision bf16 --batch-size 64

Both configurations run one training step exactly as the shared loop does (forward, masked-LM
loss per window, backward, gradient clipping at 1.0, AdamW) on one batch of real UDHR windows:
"adapter" trains only the language adapter (the default language adapter, invertible part
included, unless ``--layers`` / ``--no-invertible`` choose another placement) with the host
frozen; "full" trains every host parameter (embeddings, decoder and all layers) with the
adapter switched off. After a warm-up step each, rounds time ``--steps``
steps of each configuration in a shuffled order; a round in which other processes took more
than ``--max-other-load`` of the CPUs is recorded but not counted (up to ``--max-rounds``
rounds). Prints a markdown table (median tokens/s, ratio) with the machine, and writes it with
every round's times to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from polyglot_adapters import AdaptedModel
from polyglot_adapters.data import load_udhr
from polyglot_adapters.io import atomic_write_json
from polyglot_adapters.machine import LoadMeter, machine_info
from polyglot_adapters.training.language_adapter import (
    MaskedLmCollate,
    language_adapter_config,
    load_masked_lm,
    masked_lm_window_loss,
    pack_texts,
    parse_layers,
)


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="'default' or a local *ForMaskedLM directory")
    parser.add_argument("--lang", default="sw", help="language whose UDHR windows make the batch")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per step (the recipe's batch)")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per window")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--reduction-factor", type=float, default=16.0)
    parser.add_argument("--layers", default=None, help="blocks with an adapter, e.g. '6-11' (default: all)")
    parser.add_argument("--invertible", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds that must count")
    parser.add_argument("--max-rounds", type=int, default=15)
    parser.add_argument("--max-other-load", type=float, default=0.25, help="share of the CPUs other processes may use")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON record of the run")
    return parser.parse_args()


class Case:
    """One configuration: which parameters train, its optimizer, its step times."""

    def __init__(self, name: str, model: AdaptedModel, params: list[torch.nn.Parameter], active: str | None) -> None:
        self.name, self.model, self.params, self.active = name, model, params, active
        self.optimizer = torch.optim.AdamW(params, lr=1e-5)
        self.times: list[float] = []
        self.loads: list[float | None] = []

    def step(self, batch: dict[str, torch.Tensor], precision: str) -> None:
        """One training step as the shared loop runs it."""
        self.model.set_active(self.active)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        device = batch["input_ids"].device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = masked_lm_window_loss(self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = load_masked_lm(args.model)
    windows = pack_texts(tokenizer, load_udhr().texts(args.lang, "train"), args.max_length)[: args.batch_size]
    if len(windows) < args.batch_size:
        print(f"error: {args.lang} has only {len(windows)} windows of {args.max_length} tokens", file=sys.stderr)
        return 1
    batch = MaskedLmCollate(tokenizer)(windows, list(range(args.batch_size)))
    batch = {key: value.to(args.device) for key, value in batch.items()}
    model.to(args.device)
    tokens = int(batch["attention_mask"].sum())

    am = AdaptedModel(model)
    layers = parse_layers(args.layers) if args.layers is not None else None
    config = language_adapter_config(reduction_factor=args.reduction_factor, invertible=args.invertible, layers=layers)
    am.add_adapter("lang", config)
    am.to(args.device)
    adapter = list(am.adapter_state_dict("lang").values())
    ids = {id(p) for p in adapter}
    host = [p for p in am.parameters() if id(p) not in ids]
    cases = [Case("adapter", am, adapter, "lang"), Case("full", am, host, None)]
    am.train()
    for case in cases:  # warm-up: allocates AdamW state and gradients once
        case.step(batch, args.precision)

    order, counted, index = random.Random(args.seed), [], 0
    while len(counted) < args.rounds and index < args.max_rounds:
        shuffled = list(cases)
        order.shuffle(shuffled)
        for case in shuffled:
            gc.collect()
            with LoadMeter() as meter:
                for _ in range(args.steps):
                    case.step(batch, args.precision)
            case.times.append(meter.seconds / args.steps)
            case.loads.append(meter.other_load)
        worst = max((c.loads[-1] for c in cases if c.loads[-1] is not None), default=0.0)
        if worst <= args.max_other_load:
            counted.append(index)
        print(
            f"round {index + 1}: "
            + ", ".join(f"{c.name} {c.times[-1]:.2f} s/step" for c in cases)
            + f"; other load up to {worst:.0%} ({'counted' if counted and counted[-1] == index else 'not counted'})",
            file=sys.stderr,
            flush=True,
        )
        index += 1
    used = counted or list(range(index))
    record: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "tokens_per_step": tokens,
        "rounds_counted": len(counted),
        "rounds_run": index,
        "all_rounds_used_because_none_was_quiet": not counted,
        "machine": machine_info(),
        "cases": {},
    }
    for case in cases:
        median = statistics.median(case.times[i] for i in used)
        record["cases"][case.name] = {
            "trainable_parameters": sum(p.numel() for p in case.params),
            "seconds_per_step": median,
            "tokens_per_s": tokens / median,
            "times": case.times,
            "other_load": case.loads,
        }
    ratios = [cases[1].times[i] / cases[0].times[i] for i in used]
    record["ratio"] = record["cases"]["adapter"]["tokens_per_s"] / record["cases"]["full"]["tokens_per_s"]
    record["ratio_range"] = [min(ratios), max(ratios)]
    table = render(record)
    print(table, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, record)
    return 0


def render(record: dict[str, Any]) -> str:
    """Markdown: the machine, then one row per configuration and the ratio."""
    m, s = record["machine"], record["settings"]
    lines = [
        f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['torch_threads']} torch threads, "
        f"torch {m['torch']}; device {s['device']}"
        + (f" ({m['cuda']})" if s["device"].startswith("cuda") else "")
        + "; "
        f"batch {s['batch_size']} x {s['max_length']} tokens ({record['tokens_per_step']} real), "
        f"{s['precision']}; adapter in blocks {s['layers'] or 'all'}, invertible {s['invertible']}; "
        f"{record['rounds_counted']} of {record['rounds_run']} rounds counted.",
        "",
        "| training | trainable parameters | s/step (median) | tokens/s |",
        "|---|---|---|---|",
    ]
    for name, case in record["cases"].items():
        cells = [name, f"{case['trainable_parameters']:,}", f"{case['seconds_per_step']:.2f}"]
        lines.append(f"| {' | '.join(cells)} | {case['tokens_per_s']:,.0f} |")
    low, high = record["ratio_range"]
    lines.append(
        f"\nadapter / full fine-tuning: **{record['ratio']:.2f}x** tokens/s (per round {low:.2f}-{high:.2f}x)"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
