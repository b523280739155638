"""Mixed-adapter batches: every row with its own adapter, ours (fused ``Route``) vs PEFT ``adapter_names``.

Measures the forward time of one batch (default 64 rows x 32 tokens) whose rows use 1, 4, 16 or
64 distinct adapters (row ``i`` uses adapter ``i % k``), on the default base (multilingual-e5-small,
hidden 384) and on a BERT-base-sized host (``BertConfig()`` defaults, random init), for:

* LoRA r=8 (alpha 16) on query and value: ours with the fused per-row path (``Route``), ours with
  one pass per adapter (``Route(..., fuse=False)``: the loop that PEFT also runs), PEFT 0.21 with
  ``adapter_names=`` (its mixed-batch inference), and both libraries with one adapter for the
  whole batch;
* a series bottleneck after every FFN (reduction 16): ours fused, ours looping, one adapter
  (PEFT has no bottleneck adapters);
* the bare host.

Every configuration holds the same non-zero adapter weights (PEFT's LoRA tensors are copied from
ours), and the script checks that fused, looping and PEFT outputs agree before timing.
Configurations are interleaved in rounds (shuffled order per round) after a warm-up; each
figure is the median over rounds of the per-round value, so drift and other load hit all
configurations alike. Adapter overhead = time with adapters minus the bare host's time in the
same round.

Targets (CPU, 64 x 32): ours' overhead <= 0.5x PEFT's at 16 and 64 distinct adapters, and ours
at 64 distinct adapters <= 1.3x the single-adapter batch. CUDA: >= 3x PEFT's throughput at 64
distinct adapters, <= 1.2x the single-adapter time.

Usage:
    # smoke run on a tiny host (seconds)
    python kernels/bench_mixed_batch.py --quick

    # the CPU benchmark (both hosts, 5 rounds; about 10 minutes on 2 quiet cores)
    python kernels/bench_mixed_batch.py --rounds 5 --out /tmp/bench_mixed_batch.json

    # on a GPU (10 calls per measurement between synchronisations); e5-small-shape is the default
    # base's architecture with random weights, for machines without the package that carries it
    python kernels/bench_mixed_batch.py --device cuda --hosts e5-small-shape,bert-base --rounds 5 --repeats 10
    python kernels/bench_mixed_batch.py --device cuda --dtype bfloat16 --hosts bert-base --rounds 5 --repeats 10

The markdown tables it prints are meant to be pasted into ``kernels/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, Route
from polyglot_adapters.machine import LoadMeter, machine_info

COUNTS = (1, 4, 16, 64)
HOSTS = {
    "bert-base": {},
    # The default base's architecture with random weights, for machines without its source package.
    "e5-small-shape": dict(hidden_size=384, intermediate_size=1536, vocab_size=250037),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=500),
}
"""``BertConfig`` overrides of the randomly initialised hosts; ``e5-small`` is the real default base."""
TARGETS = {
    "cpu": {"overhead_vs_peft": 0.5, "vs_single": 1.3, "at": (16, 64)},
    "cuda": {"speedup_vs_peft": 3.0, "vs_single": 1.2, "at": (64,)},
}


@dataclasses.dataclass
class Case:
    """One timed configuration: a label and a zero-argument call that runs the batch."""

    name: str
    run: Callable[[], Any]
    times: list[float] = dataclasses.field(default_factory=list)
    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    load: list[float | None] = dataclasses.field(default_factory=list)


def build_host(name: str, seed: int) -> BertModel:
    """The host by name (see ``HOSTS``)."""
    if name == "e5-small":
        from polyglot_adapters.models import default_base

        model, _ = default_base()
        return model.eval()
    if name not in HOSTS:
        raise SystemExit(f"error: unknown host {name!r}; choose from e5-small, {', '.join(HOSTS)}")
    torch.manual_seed(seed)
    return BertModel(BertConfig(**HOSTS[name])).eval()


def lora_config() -> LoraConfig:
    """LoRA r=8, alpha=16 on query and value."""
    return LoraConfig(r=8, alpha=16, targets=("q", "v"))


def bottleneck_config() -> BottleneckConfig:
    """A series bottleneck after every FFN, reduction 16."""
    return BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=16)


@torch.no_grad()
def build_ours(host: nn.Module, n: int, seed: int) -> AdaptedModel:
    """Our model with ``n`` LoRA adapters ``l{i}`` and ``n`` bottlenecks ``b{i}``, all non-zero."""
    am = AdaptedModel(host)
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        am.add_adapter(f"l{i}", lora_config())
        am.add_adapter(f"b{i}", bottleneck_config())
        for name in (f"l{i}", f"b{i}"):
            for key, param in am.adapter_state_dict(name).items():
                if key.endswith(("lora_B", "bn_up", "bn_up_bias")):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return am.eval()


@torch.no_grad()
def build_peft(host: nn.Module, ours: AdaptedModel, n: int) -> nn.Module:
    """PEFT LoRA adapters ``l{i}`` on ``host`` holding the same tensors as ours."""
    import peft

    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"])
    model = peft.get_peft_model(host, config, adapter_name="l0")
    for i in range(1, n):
        model.add_adapter(f"l{i}", config)
    if list(model.active_adapters) != ["l0"]:
        raise RuntimeError(f"PEFT's active adapter should be l0, got {model.active_adapters}")
    params = dict(model.named_parameters())
    for i in range(n):
        for key, value in ours.adapter_state_dict(f"l{i}").items():
            site, kind = key.rsplit(".", 1)
            params[f"base_model.model.{site}.{kind}.l{i}.weight"].copy_(value)
    return model.eval()


def hidden(out: Any) -> torch.Tensor:
    """``last_hidden_state`` of a transformers output."""
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def row_adapters(rows: int, k: int, prefix: str) -> list[str]:
    """Row ``i`` uses adapter ``i % k``."""
    return [f"{prefix}{i % k}" for i in range(rows)]


def build_cases(
    bare: nn.Module, ours: AdaptedModel, peer: nn.Module | None, inputs: dict[str, torch.Tensor]
) -> tuple[list[Case], dict[str, float]]:
    """Every timed configuration, and the output checks (max abs differences) run before timing."""
    rows = inputs["input_ids"].shape[0]

    def call_ours(active: Any) -> Callable[[], Any]:
        def run() -> Any:
            if ours.active is not active:
                ours.set_active(active)
            return ours(**inputs)

        return run

    def call_peft(names: list[str] | None) -> Callable[[], Any]:
        # "l0" stays PEFT's active adapter (add_adapter does not change it): no set_adapter in the timed call.
        def run() -> Any:
            assert peer is not None
            return peer(**inputs) if names is None else peer(**inputs, adapter_names=names)

        return run

    cases = [Case("bare host", lambda: bare(**inputs))]
    for method, prefix in (("LoRA r8 q,v", "l"), ("bottleneck r16 ffn", "b")):
        cases.append(Case(f"{method}: ours, 1 adapter for all rows", call_ours(f"{prefix}0")))
        if prefix == "l" and peer is not None:
            cases.append(Case(f"{method}: PEFT, 1 adapter for all rows", call_peft(None)))
        for k in COUNTS:
            names = row_adapters(rows, k, prefix)
            mapping = {i: f"{prefix}{i}" for i in range(k)}
            ids = torch.arange(rows) % k
            cases.append(Case(f"{method}: ours fused, {k} adapters", call_ours(Route(ids, mapping))))
            if k > 1:
                cases.append(Case(f"{method}: ours loop, {k} adapters", call_ours(Route(ids, mapping, fuse=False))))
            if prefix == "l" and peer is not None:
                cases.append(Case(f"{method}: PEFT adapter_names, {k} adapters", call_peft(names)))
    checks = {}
    with torch.inference_mode():
        outs = {case.name: hidden(case.run()).float() for case in cases}
    k = COUNTS[-1]
    for method in ("LoRA r8 q,v", "bottleneck r16 ffn"):
        fused = outs[f"{method}: ours fused, {k} adapters"]
        checks[f"{method}: fused vs loop, {k} adapters"] = float(
            (fused - outs[f"{method}: ours loop, {k} adapters"]).abs().max()
        )
        checks[f"{method}: fused vs bare host (must differ)"] = float((fused - outs["bare host"]).abs().max())
    if peer is not None:
        fused = outs[f"LoRA r8 q,v: ours fused, {k} adapters"]
        checks[f"LoRA r8 q,v: fused vs PEFT adapter_names, {k} adapters"] = float(
            (fused - outs[f"LoRA r8 q,v: PEFT adapter_names, {k} adapters"]).abs().max()
        )
    return cases, checks


SITE = "encoder.layer.0.attention.self.query"
"""The adapted linear layer timed alone (LoRA's overhead without the rest of the host's noise)."""


def site_cases(
    base: nn.Module, ours: AdaptedModel, peer: nn.Module | None, rows: int, seq: int, seed: int
) -> list[Case]:
    """One LoRA site called directly: the base linear, ours (one adapter, fused, loop) and PEFT, per adapter count."""
    from polyglot_adapters.sites import unwrap

    base_site = unwrap(base.get_submodule(SITE))
    ours_site = ours.model.get_submodule(SITE)
    peer_site = peer.base_model.model.get_submodule(SITE) if peer is not None else None
    gen = torch.Generator().manual_seed(seed + 3)
    weight = base_site.weight
    x = torch.randn(rows, seq, base_site.in_features, generator=gen).to(weight.device, weight.dtype)

    def call_ours(active: Any) -> Callable[[], Any]:
        def run() -> Any:
            if ours.active is not active:
                ours.set_active(active)
            return ours_site(x)

        return run

    cases = [Case("base linear", lambda: base_site(x)), Case("ours, 1 adapter for all rows", call_ours("l0"))]
    if peer_site is not None:
        cases.append(Case("PEFT, 1 adapter for all rows", lambda: peer_site(x)))
    for k in COUNTS:
        ids, mapping = torch.arange(rows) % k, {i: f"l{i}" for i in range(k)}
        cases.append(Case(f"ours fused, {k} adapters", call_ours(Route(ids, mapping))))
        cases.append(Case(f"ours loop, {k} adapters", call_ours(Route(ids, mapping, fuse=False))))
        if peer_site is not None:
            names = row_adapters(rows, k, "l")
            cases.append(
                Case(f"PEFT adapter_names, {k} adapters", lambda names=names: peer_site(x, adapter_names=names))
            )
    return cases


def print_site_table(title: str, cases: list[Case]) -> list[dict[str, Any]]:
    """Markdown table of the one-site timing: per configuration, time and overhead over the base linear."""
    bare = cases[0].times
    by_name = {c.name: c for c in cases}
    rows = []
    print(f"\n### {title}\n")
    print("| configuration | median ms | overhead ms | overhead / PEFT's (same k) |")
    print("|---|---:|---:|---:|")
    for case in cases:
        over = statistics.median(t - b for t, b in zip(case.times, bare, strict=True))
        peer_name = case.name.replace("ours fused", "PEFT adapter_names").replace("ours loop", "PEFT adapter_names")
        peer_name = peer_name.replace("ours, 1", "PEFT, 1")
        ratio = None
        if peer_name != case.name and peer_name in by_name:
            peer_over = statistics.median(t - b for t, b in zip(by_name[peer_name].times, bare, strict=True))
            ratio = over / peer_over if peer_over > 0 else None
        rows.append(
            {"name": case.name, "median_s": statistics.median(case.times), "overhead_s": over, "vs_peft": ratio}
        )
        print(f"| {case.name} | {1e3 * rows[-1]['median_s']:.3f} | {1e3 * over:+.3f} | {fmt(ratio)} |")
    return rows


def timed(case: Case, repeats: int, cuda: bool, clock: str) -> None:
    """Times ``repeats`` calls of one configuration (one measurement) and the other load meanwhile.

    Records wall seconds and this process's CPU seconds per call; ``case.times`` gets the ``clock`` one.
    """
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
        cpu = time.process_time()
        with LoadMeter() as meter:
            for _ in range(repeats):
                case.run()
            if cuda:
                torch.cuda.synchronize()
        cpu = time.process_time() - cpu
    case.wall.append(meter.seconds / repeats)
    case.cpu.append(cpu / repeats)
    case.times.append(case.cpu[-1] if clock == "cpu" else case.wall[-1])
    case.load.append(meter.other_load)


def run_rounds(cases: list[Case], rounds: int, warmup: int, repeats: int, cuda: bool, seed: int, clock: str) -> None:
    """Warm-up calls, then ``rounds`` rounds in which every configuration is timed once, in a shuffled order."""
    for _ in range(warmup):
        for case in cases:
            timed(case, 1, cuda, clock)
        for case in cases:
            for record in (case.times, case.wall, case.cpu, case.load):
                record.clear()
    order = random.Random(seed)
    for index in range(rounds):
        gc.collect()
        shuffled = list(cases)
        order.shuffle(shuffled)
        for case in shuffled:
            timed(case, repeats, cuda, clock)
        loads = [c.load[-1] for c in shuffled if c.load[-1] is not None]
        worst = f"; other load up to {max(loads):.0%}" if loads else ""
        print(f"round {index + 1}/{rounds}: {time.strftime('%H:%M:%S')}{worst}", file=sys.stderr, flush=True)


def summarise(cases: list[Case], device: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-configuration medians and the target comparisons (all from per-round values)."""
    by_name = {c.name: c for c in cases}
    bare = by_name["bare host"].times
    rows = []
    for case in cases:
        overheads = [t - b for t, b in zip(case.times, bare, strict=True)]
        loads = [v for v in case.load if v is not None]
        rows.append(
            {
                "name": case.name,
                "median_s": statistics.median(case.times),
                "median_wall_s": statistics.median(case.wall),
                "median_cpu_s": statistics.median(case.cpu),
                "ratio_to_host": statistics.median(t / b for t, b in zip(case.times, bare, strict=True)),
                "overhead_s": statistics.median(overheads),
                "other_load_max": max(loads) if loads else None,
            }
        )
    targets = TARGETS[device]
    verdicts = []
    for method, peer_name in (("LoRA r8 q,v", "PEFT adapter_names"), ("bottleneck r16 ffn", None)):
        single = by_name[f"{method}: ours, 1 adapter for all rows"].times
        for k in COUNTS:
            fused = by_name[f"{method}: ours fused, {k} adapters"].times
            row: dict[str, Any] = {"method": method, "k": k}
            row["vs_single"] = statistics.median(f / s for f, s in zip(fused, single, strict=True))
            loop = by_name.get(f"{method}: ours loop, {k} adapters")
            row["loop_vs_fused"] = (
                statistics.median(lo / f for lo, f in zip(loop.times, fused, strict=True)) if loop else None
            )
            peer = by_name.get(f"{method}: {peer_name}, {k} adapters") if peer_name else None
            if peer is not None:
                ours_over = statistics.median(f - b for f, b in zip(fused, bare, strict=True))
                peer_over = statistics.median(p - b for p, b in zip(peer.times, bare, strict=True))
                row["overhead_vs_peft"] = ours_over / peer_over if peer_over > 0 else None
                row["speedup_vs_peft"] = statistics.median(p / f for p, f in zip(peer.times, fused, strict=True))
            judged = k in targets["at"]
            checks = []
            if judged and "overhead_vs_peft" in targets and row.get("overhead_vs_peft") is not None:
                checks.append(row["overhead_vs_peft"] <= targets["overhead_vs_peft"])
            if judged and "speedup_vs_peft" in targets and row.get("speedup_vs_peft") is not None:
                checks.append(row["speedup_vs_peft"] >= targets["speedup_vs_peft"])
            if k == COUNTS[-1]:
                checks.append(row["vs_single"] <= targets["vs_single"])
            row["result"] = ("pass" if all(checks) else "FAIL") if checks else "-"
            verdicts.append(row)
    return rows, verdicts


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number for a markdown cell (``-`` when missing)."""
    return "-" if value is None else format(value, spec)


def print_tables(host: str, rows: list[dict[str, Any]], verdicts: list[dict[str, Any]], device: str) -> None:
    """Markdown tables for one host."""
    print(f"\n### {host}\n")
    print("| configuration | median s | ratio to host | overhead s | median wall s | median CPU s | other load max |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        load = "-" if r["other_load_max"] is None else f"{r['other_load_max']:.0%}"
        print(
            f"| {r['name']} | {r['median_s']:.4f} | {r['ratio_to_host']:.3f} | {r['overhead_s']:+.4f} | "
            f"{r['median_wall_s']:.4f} | {r['median_cpu_s']:.4f} | {load} |"
        )
    t = TARGETS[device]
    peft_target = (
        f"overhead vs PEFT <= {t['overhead_vs_peft']}"
        if device == "cpu"
        else f"speed-up vs PEFT >= {t['speedup_vs_peft']}"
    )
    print(f"\nTargets ({device}): {peft_target} at k in {t['at']}; fused at k=64 <= {t['vs_single']}x one adapter.\n")
    header = (
        "| method | distinct adapters | fused / 1 adapter | loop / fused | our overhead / PEFT's | PEFT time / ours |"
    )
    print(header + " result |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for v in verdicts:
        print(
            f"| {v['method']} | {v['k']} | {v['vs_single']:.3f} | {fmt(v['loop_vs_fused'])} | "
            f"{fmt(v.get('overhead_vs_peft'))} | {fmt(v.get('speedup_vs_peft'))} | {v['result']} |"
        )


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints markdown tables and optionally writes every figure as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--hosts", default="e5-small,bert-base", help="comma-separated: e5-small, e5-small-shape, bert-base, tiny"
    )
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=None, help="calls per measurement (default 1 CPU, 10 CUDA)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="time figures are judged on: wall seconds, or this process's CPU seconds (CPU only; with --threads 1 "
        "it is far less sensitive to other load on a shared machine)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--site-repeats", type=int, default=20, help="calls per measurement of the one-site timing")
    parser.add_argument("--sites-only", action="store_true", help="time only one adapted linear layer")
    parser.add_argument("--quick", action="store_true", help="tiny host, 2 rounds")
    parser.add_argument("--out", default=None, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.hosts, args.rounds = "tiny", 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda needs a CUDA device; run on CPU without --device", file=sys.stderr)
        return 1
    if args.rows < COUNTS[-1]:
        print(
            f"error: --rows must be at least {COUNTS[-1]} (one row per adapter at the largest count)", file=sys.stderr
        )
        return 1
    if args.clock == "cpu" and args.device == "cuda":
        print("error: --clock cpu measures CPU work; time CUDA runs with the wall clock", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    repeats = args.repeats or (10 if cuda else 1)
    dtype = getattr(torch, args.dtype)
    with_peft = not args.no_peft
    info = machine_info()
    report: dict[str, Any] = {"machine": info, "args": vars(args), "hosts": {}}
    print(f"Machine: {json.dumps(info)}", file=sys.stderr)
    for host_name in args.hosts.split(","):
        print(f"[{host_name}] building", file=sys.stderr, flush=True)
        base = build_host(host_name, args.seed).to(args.device, dtype)
        ours = build_ours(copy.deepcopy(base), COUNTS[-1], args.seed + 1)
        peer = build_peft(copy.deepcopy(base), ours, COUNTS[-1]) if with_peft else None
        gen = torch.Generator().manual_seed(args.seed + 2)
        ids = torch.randint(5, base.config.vocab_size, (args.rows, args.seq), generator=gen)
        inputs = {"input_ids": ids.to(args.device), "attention_mask": torch.ones_like(ids).to(args.device)}
        cases, checks = build_cases(base, ours, peer, inputs)
        for name, value in checks.items():
            print(f"[{host_name}] check {name}: {value:.2e}", file=sys.stderr)
        if not args.sites_only:
            run_rounds(cases, args.rounds, args.warmup, repeats, cuda, args.seed, args.clock)
            rows, verdicts = summarise(cases, args.device)
        else:
            rows, verdicts = [], []
        site = site_cases(base, ours, peer, args.rows, args.seq, args.seed)
        run_rounds(site, args.rounds + 2, args.warmup, args.site_repeats, cuda, args.seed, args.clock)
        title = f"{host_name} ({args.rows} x {args.seq}, {args.device}, {args.dtype}, {args.clock} clock)"
        site_rows = print_site_table(f"{title}, one adapted linear: {SITE}", site)
        if not args.sites_only:
            print_tables(title, rows, verdicts, args.device)
        print("\nOutput checks (max abs difference of last_hidden_state):")
        for name, value in checks.items():
            print(f"- {name}: {value:.2e}")
        report["hosts"][host_name] = {
            "rows": rows,
            "verdicts": verdicts,
            "site": site_rows,
            "checks": checks,
            "wall_s": {c.name: c.wall for c in cases},
            "cpu_s": {c.name: c.cpu for c in cases},
            "other_load": {c.name: c.load for c in cases},
        }
        del base, ours, peer, cases
        gc.collect()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
