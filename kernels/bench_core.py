"""Benchmark of the adapter core on CPU: forward overhead and training memory, next to PEFT LoRA.

Measures, on a BERT-base-sized host (transformers ``BertModel`` with ``BertConfig()`` defaults,
random init), batch 32 x 128 tokens:

* forward time (``torch.inference_mode``, eval) of the bare host, of one series bottleneck adapter
  after the FFN of every layer (reduction 16), of LoRA r=8 on q and v merged and unmerged, and of
  PEFT LoRA (r=8, lora_alpha=16, ``target_modules=["query", "value"]``) merged and unmerged.
  Configurations are interleaved in rounds, in a shuffled order per round, after a warm-up; the
  figure is the median over rounds, reported as a ratio to the bare host of the same run. Each
  call also records how much of the CPUs other processes used meanwhile (``/proc/stat``); a round
  in which that exceeded ``--max-other-load`` is discarded and redone, up to ``--max-rounds``;
* memory besides activations of one training step (AdamW): the exact bytes of parameters, of the
  ``.grad`` tensors that exist after the step and of the optimizer state, for full fine-tuning,
  bottleneck training, LoRA training and PEFT LoRA training; plus each one's peak RSS (``VmHWM``
  on Linux), measured in a separate subprocess per configuration.

Targets: bottleneck forward <= 1.15x the host, merged LoRA 1.00x (judged at <= 1.02x, measurement
noise), unmerged LoRA <= 1.10x; adapter training memory besides activations <= 0.3x full
fine-tuning's. PEFT rows are the peer's figures, with no target.

Usage:
    # smoke run on a tiny host (about 25 s, mostly the four memory subprocesses starting torch)
    python kernels/bench_core.py --quick

    # defaults (5 clean rounds), after installing the [bench] extra
    make bench

    # the real benchmark (BERT-base, 32 x 128, about 7 minutes on 2 quiet cores)
    python kernels/bench_core.py --rounds 7 --out /tmp/bench_core.json

    # other sizes
    python kernels/bench_core.py --rounds 7 --batch 16 --seq 256 --train-batch 8

The markdown tables it prints are meant to be pasted into ``kernels/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig

MERGED_TOLERANCE = 0.02
"""A ``1.00x`` target passes at ``ratio <= 1 + MERGED_TOLERANCE`` (measurement noise)."""

QUICK_HOST = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=1000)
"""``BertConfig`` overrides for ``--quick``; the real run uses ``BertConfig()`` unchanged."""

MEMORY_KINDS = ("full", "bottleneck", "lora", "peft_lora")
MEMORY_LABELS = {
    "full": "full fine-tuning",
    "bottleneck": "bottleneck r16 (ours)",
    "lora": "LoRA r8 q,v (ours)",
    "peft_lora": "PEFT LoRA r8 q,v",
}
MEMORY_TARGET = 0.3


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved sizes of one run.

    Attributes:
        host: ``BertConfig`` overrides (empty: BERT-base defaults).
        batch: Rows of the timed forward batch.
        seq: Tokens per row.
        train_batch: Rows of the training step of the memory part.
        rounds: Clean timed rounds wanted; every configuration runs once per round.
        warmup: Untimed forward calls per configuration before the rounds.
        threads: ``torch.set_num_threads`` value.
        seed: Seed of the host's init, the adapters' init, the inputs and the round order.
        max_other_load: A round counts only if, in each of its calls, other processes used at
            most this share of the machine's CPUs.
        max_rounds: Most rounds to run, clean or not.
    """

    host: dict[str, int]
    batch: int
    seq: int
    train_batch: int
    rounds: int
    warmup: int
    threads: int
    seed: int
    max_other_load: float
    max_rounds: int


@dataclasses.dataclass
class Case:
    """One timed configuration.

    Attributes:
        name: Row label.
        model: The module called with the inputs.
        target: Largest passing ratio to the host, or ``None`` (host, peer rows).
        target_label: How the target is printed.
        reference: Name of the case whose output this one must reproduce, if any.
        times: Seconds of each round.
        foreign: Share of the machine's CPU time that other processes (or the hypervisor) used
            during each round's call, or ``None`` where ``/proc/stat`` is missing.
    """

    name: str
    model: nn.Module
    target: float | None = None
    target_label: str = "-"
    reference: str | None = None
    times: list[float] = dataclasses.field(default_factory=list)
    foreign: list[float | None] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------- machine


def machine_info(threads: int) -> dict[str, Any]:
    """Describes the machine and the software the figures come from."""
    cpu = platform.processor() or "unknown"
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # end of the first processor's block
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        cpu = fields["model name"]
        if "cpu family" in fields and "model" in fields:
            cpu += f" (family {fields['cpu family']}, model {fields['model']})"
    isa = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if flag in fields.get("flags", "").split()]
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": isa,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "requested_threads": threads,
    }
    try:
        import psutil

        info["physical_cores"] = psutil.cpu_count(logical=False)
        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    import transformers

    info["transformers"] = transformers.__version__
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        info["peft"] = None
    return info


# ------------------------------------------------------------------------------ models


def build_host(settings: Settings) -> BertModel:
    """A randomly initialised ``BertModel`` (seeded, so every process builds the same weights)."""
    torch.manual_seed(settings.seed)
    return BertModel(BertConfig(**settings.host)).eval()


def make_inputs(config: BertConfig, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids and an all-ones attention mask, ``(batch, seq)`` each."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def bottleneck_config() -> BottleneckConfig:
    """One series bottleneck adapter after the FFN of every layer, reduction 16."""
    return BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=16)


def lora_config() -> LoraConfig:
    """LoRA r=8, alpha=16 on the query and value projections."""
    return LoraConfig(r=8, alpha=16, targets=("q", "v"))


def peft_lora(host: nn.Module) -> nn.Module:
    """Wraps ``host`` (in place) with PEFT LoRA r=8, lora_alpha=16 on query and value."""
    import peft

    return peft.get_peft_model(host, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))


def ours_lora(host: nn.Module, seed: int) -> AdaptedModel:
    """Our LoRA on ``host`` with a non-zero ``B`` (so merging changes weights and outputs)."""
    am = AdaptedModel(host)
    torch.manual_seed(seed + 1)
    am.add_adapter("lora", lora_config())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 2)
        for key, param in am.adapter_state_dict("lora").items():
            if key.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    am.set_active("lora")
    return am.eval()


@torch.no_grad()
def copy_lora_into_peft(ours: AdaptedModel, peer: nn.Module) -> int:
    """Copies our LoRA ``A``/``B`` into the PEFT model so both compute the same function.

    Returns:
        The number of tensors copied.

    Raises:
        RuntimeError: If a PEFT LoRA tensor has no counterpart of the same shape.
    """
    source = ours.adapter_state_dict("lora")
    copied = 0
    for name, param in peer.named_parameters():
        if ".lora_" not in name:
            continue
        key = name.removeprefix("base_model.model.")
        key = key.replace(".lora_A.default.weight", ".lora_A").replace(".lora_B.default.weight", ".lora_B")
        if key not in source or source[key].shape != param.shape:
            raise RuntimeError(f"PEFT tensor {name} has no matching LoRA tensor of ours")
        param.copy_(source[key])
        copied += 1
    if copied != len(source):
        raise RuntimeError(f"copied {copied} PEFT LoRA tensors, ours has {len(source)}")
    return copied


def build_cases(settings: Settings, with_peft: bool) -> list[Case]:
    """Builds every timed configuration on deep copies of one host."""
    host = build_host(settings)
    cases = [Case("bare host", host)]

    bn = AdaptedModel(copy.deepcopy(host))
    torch.manual_seed(settings.seed + 1)
    bn.add_adapter("bn", bottleneck_config())
    bn.set_active("bn")
    # A fresh bottleneck adapter (zero up-projection) is the identity.
    cases.append(Case("bottleneck r16 series ffn (ours)", bn.eval(), 1.15, "<= 1.15", reference="bare host"))

    # Every LoRA variant holds the same non-zero A and B, so all must match ours unmerged.
    unmerged = ours_lora(copy.deepcopy(host), settings.seed)
    lora_ref = "LoRA r8 q,v unmerged (ours)"
    merged = ours_lora(copy.deepcopy(host), settings.seed)
    merged.merge("lora")
    merged_label = f"1.00 (<= {1 + MERGED_TOLERANCE:.2f})"
    cases.append(Case("LoRA r8 q,v merged (ours)", merged, 1.0 + MERGED_TOLERANCE, merged_label, reference=lora_ref))
    cases.append(Case(lora_ref, unmerged, 1.10, "<= 1.10"))

    if with_peft:
        peer_merged = peft_lora(copy.deepcopy(host)).eval()
        copy_lora_into_peft(unmerged, peer_merged)
        peer_merged.merge_adapter()
        cases.append(Case("PEFT LoRA r8 q,v merged (merge_adapter)", peer_merged, None, "peer", reference=lora_ref))
        peer_unmerged = peft_lora(copy.deepcopy(host)).eval()
        copy_lora_into_peft(unmerged, peer_unmerged)
        cases.append(Case("PEFT LoRA r8 q,v unmerged", peer_unmerged, None, "peer", reference=lora_ref))
    return cases


# ------------------------------------------------------------------------------ timing


def hidden_of(out: Any) -> torch.Tensor:
    """The ``last_hidden_state`` of a transformers output or tuple."""
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (``/proc/stat``, steal included), or ``None``."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(v) for v in fields[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def forward_seconds(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[float, float | None]:
    """Times one forward call under ``torch.inference_mode``.

    Returns:
        Wall seconds, and the share of the machine's CPU capacity over that time that went to
        anything but this process (other processes, the hypervisor's steal), or ``None`` if
        unknown or the call is too short to tell.
    """
    with torch.inference_mode():
        busy0, own0 = busy_cpu_seconds(), time.process_time()
        start = time.perf_counter()
        model(**inputs)
        wall = time.perf_counter() - start
        busy1, own1 = busy_cpu_seconds(), time.process_time()
    capacity = wall * (os.cpu_count() or 1)
    # /proc/stat counts in clock ticks (10 ms): below a second of capacity the share is noise.
    if busy0 is None or busy1 is None or capacity < 1.0:
        return wall, None
    return wall, min(1.0, max(0.0, (busy1 - busy0) - (own1 - own0)) / capacity)


def check_outputs(cases: list[Case], inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Runs each configuration once (a warm-up call) and compares outputs that must agree.

    Returns:
        ``"<case> vs <reference>"`` to the max absolute difference of their ``last_hidden_state``,
        plus each LoRA reference against the host (which must differ: the adapter is non-zero).
    """
    with torch.inference_mode():
        outs = {case.name: hidden_of(case.model(**inputs)).float() for case in cases}
    host = cases[0].name
    diffs = {}
    for case in cases:
        if case.reference is not None:
            diffs[f"{case.name} vs {case.reference}"] = float((outs[case.name] - outs[case.reference]).abs().max())
    for ref in sorted({c.reference for c in cases} - {None, host}):
        diffs[f"{ref} vs {host} (must differ)"] = float((outs[ref] - outs[host]).abs().max())
    return diffs


def run_rounds(cases: list[Case], inputs: dict[str, torch.Tensor], settings: Settings) -> list[int]:
    """Warms every configuration up, then times one call of each per round, in a shuffled order.

    A round in which any call saw other load above ``settings.max_other_load`` is kept in the
    record but does not count: rounds go on until ``settings.rounds`` clean ones are in or
    ``settings.max_rounds`` have run.

    Returns:
        Indices of the clean rounds.
    """
    for _ in range(settings.warmup):
        for case in cases:
            forward_seconds(case.model, inputs)
    order = random.Random(settings.seed)
    clean: list[int] = []
    index = 0
    while len(clean) < settings.rounds and index < settings.max_rounds:
        gc.collect()
        shuffled = list(cases)
        order.shuffle(shuffled)
        for case in shuffled:
            wall, foreign = forward_seconds(case.model, inputs)
            case.times.append(wall)
            case.foreign.append(foreign)
        foreign = [c.foreign[-1] for c in shuffled if c.foreign[-1] is not None]
        worst = max(foreign, default=0.0)
        if worst <= settings.max_other_load:
            clean.append(index)
        line = ", ".join(f"{c.name}={c.times[-1]:.3f}s" for c in shuffled)
        if foreign:
            line += f"; other load up to {worst:.0%} of the CPUs"
        status = "clean" if clean and clean[-1] == index else "DISCARDED"
        print(
            f"round {index + 1} ({status}, {len(clean)}/{settings.rounds} clean): {line}", file=sys.stderr, flush=True
        )
        index += 1
    return clean


def summarise_speed(cases: list[Case], used: list[int]) -> list[dict[str, Any]]:
    """Median seconds, ratio of medians to the host, per-round ratio range and verdict per configuration.

    Args:
        cases: Timed configurations, the bare host first.
        used: Indices of the rounds the figures are taken from.
    """
    host = cases[0]
    host_median = statistics.median(host.times[i] for i in used)
    rows = []
    for case in cases:
        median = statistics.median(case.times[i] for i in used)
        ratio = median / host_median
        per_round = [case.times[i] / host.times[i] for i in used]
        rows.append(
            {
                "configuration": case.name,
                "median_s": median,
                "ratio": ratio,
                "per_round_ratio_min": min(per_round),
                "per_round_ratio_median": statistics.median(per_round),
                "per_round_ratio_max": max(per_round),
                "times_s": case.times,
                "foreign_cpu_share": case.foreign,
                "target": case.target,
                "target_label": case.target_label,
                "passed": None if case.target is None else ratio <= case.target,
            }
        )
    return rows


# ------------------------------------------------------------------------------ memory


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of distinct tensors (shared storage counted once per tensor identity)."""
    seen: dict[int, torch.Tensor] = {}
    for t in tensors:
        seen.setdefault(id(t), t)
    return sum(t.numel() * t.element_size() for t in seen.values())


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux it is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` is not usable there, as a
    child keeps the high-water mark of the parent it was forked from across ``exec`` (every worker
    would report the benchmark process's RSS). Elsewhere ``ru_maxrss`` (KiB, bytes on macOS).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int | None:
    """Current resident set size, or ``None`` without psutil."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


def memory_worker(kind: str, settings: Settings) -> dict[str, Any]:
    """Builds the host, sets up ``kind`` and does one AdamW training step; counts bytes and peak RSS.

    Runs in its own process so that the peak RSS is this configuration's alone. Every kind
    imports the same modules (PEFT included, when installed) so their baselines compare.
    """
    torch.set_num_threads(settings.threads)
    try:
        import peft  # noqa: F401  (same imports in every worker)
    except ImportError:
        if kind == "peft_lora":
            raise
    # The import floor (torch alone maps several hundred MiB) is the peak so far.
    rss_imports = peak_rss_bytes()
    host = build_host(settings)
    rss_built = current_rss_bytes()
    torch.manual_seed(settings.seed + 1)
    if kind == "full":
        model: nn.Module = host
        host.requires_grad_(True)
    elif kind in ("bottleneck", "lora"):
        am = AdaptedModel(host)
        name = "bn" if kind == "bottleneck" else "lora"
        am.add_adapter(name, bottleneck_config() if kind == "bottleneck" else lora_config())
        am.set_active(name)
        am.train_adapters(name)
        model = am
    elif kind == "peft_lora":
        model = peft_lora(host)
    else:
        raise ValueError(f"unknown memory kind {kind!r}; expected one of {MEMORY_KINDS}")
    model.train()
    params = list(dict.fromkeys(model.parameters()))
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    inputs = make_inputs(host.config, settings.train_batch, settings.seq, settings.seed + 3)
    start = time.perf_counter()
    loss = hidden_of(model(**inputs)).pow(2).mean()
    loss.backward()
    optimizer.step()
    step_s = time.perf_counter() - start
    grads = [p.grad for p in params if p.grad is not None]
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    param_b, grad_b, state_b = tensor_bytes(params), tensor_bytes(grads), tensor_bytes(state)
    return {
        "kind": kind,
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "parameters_without_grad_after_step": sum(p.numel() for p in trainable if p.grad is None),
        "param_bytes": param_b,
        "grad_bytes": grad_b,
        "optimizer_bytes": state_b,
        "total_bytes": param_b + grad_b + state_b,
        "rss_after_imports_bytes": rss_imports,
        "rss_after_build_bytes": rss_built,
        "peak_rss_bytes": peak_rss_bytes(),
        "step_s": step_s,
        "loss": float(loss),
    }


def run_memory(settings: Settings, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """Runs :func:`memory_worker` for each kind in a fresh subprocess and adds ratios to full fine-tuning."""
    rows = []
    for kind in kinds:
        blob = json.dumps(dataclasses.asdict(settings))
        cmd = [sys.executable, __file__, "--memory-worker", kind, "--settings-json", blob]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory worker {kind!r} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"memory {kind}: peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
        rows.append(row)
    full = next(r for r in rows if r["kind"] == "full")
    for row in rows:
        row["label"] = MEMORY_LABELS[row["kind"]]
        row["ratio"] = row["total_bytes"] / full["total_bytes"]
        row["peak_rss_ratio"] = row["peak_rss_bytes"] / full["peak_rss_bytes"]
        row["peak_rss_above_imports_bytes"] = row["peak_rss_bytes"] - row["rss_after_imports_bytes"]
        full_above = full["peak_rss_bytes"] - full["rss_after_imports_bytes"]
        above = row["peak_rss_above_imports_bytes"]
        row["peak_rss_above_imports_ratio"] = above / full_above if full_above > 0 else None
        is_ours = row["kind"] in ("bottleneck", "lora")
        row["target"] = MEMORY_TARGET if is_ours else None
        row["passed"] = row["ratio"] <= MEMORY_TARGET if is_ours else None
    return rows


# ------------------------------------------------------------------------------ report


def verdict(passed: bool | None) -> str:
    """``pass``/``FAIL``/``-`` for a table cell."""
    return "-" if passed is None else ("pass" if passed else "FAIL")


def ratio_cell(value: float | None) -> str:
    """A ratio with three decimals, or ``-`` when undefined."""
    return "-" if value is None else f"{value:.3f}"


def mib(n: int | None) -> str:
    """Bytes as MiB with one decimal."""
    return "-" if n is None else f"{n / 2**20:.1f}"


def render(report: dict[str, Any]) -> str:
    """Markdown: machine, settings, forward table, memory table, output checks."""
    m, s, rounds = report["machine"], report["settings"], report["rounds"]
    host = "BertConfig() defaults" if not s["host"] else f"BertConfig({s['host']})"
    lines = [
        f"Machine: {m['cpu']} [{' '.join(m['cpu_flags'])}], {m['usable_cpus']} usable CPUs "
        f"({m.get('physical_cores', '?')} physical cores, {m.get('memory_gib', '?')} GiB), "
        f"torch {m['torch']} with {m['torch_threads']} threads ({m['torch_interop_threads']} inter-op), "
        f"transformers {m['transformers']}, peft {m['peft']}, Python {m['python']}.",
        "",
        f"Host: BertModel, {host}, random init, attention `{report['attn_implementation']}`. "
        f"Forward batch {s['batch']} x {s['seq']} tokens, {s['warmup']} warm-up call(s) per configuration, "
        f"interleaved rounds (shuffled order per round) until {s['rounds']} clean ones; a round is clean when "
        f"other load (CPU time of other processes or hypervisor steal, from `/proc/stat`) stayed at or below "
        f"{s['max_other_load']:.0%} of the CPUs in each of its calls. {len(rounds['clean'])} clean of "
        f"{rounds['run']} rounds run; figures are medians over {len(rounds['used'])} rounds.",
        "",
        "| configuration | median s | ratio to host | per-round ratio min-max | target | result | other load max |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for r in report["speed"]:
        foreign = [r["foreign_cpu_share"][i] for i in rounds["used"] if r["foreign_cpu_share"][i] is not None]
        lines.append(
            f"| {r['configuration']} | {r['median_s']:.4f} | {r['ratio']:.3f} | "
            f"{r['per_round_ratio_min']:.3f}-{r['per_round_ratio_max']:.3f} | {r['target_label']} | "
            f"{verdict(r['passed'])} | {f'{max(foreign):.0%}' if foreign else '-'} |"
        )
    if not rounds["clean"]:
        lines += ["", "**Warning: no clean round; the figures use every round and are contaminated by other load.**"]
    elif len(rounds["clean"]) < s["rounds"]:
        lines += ["", f"**Warning: only {len(rounds['clean'])} of {s['rounds']} wanted clean rounds.**"]
    if report["memory"]:
        lines += [
            "",
            f"Training step (AdamW, loss `last_hidden_state.pow(2).mean()`, batch {s['train_batch']} x {s['seq']}), "
            "one subprocess per configuration. Memory besides activations = parameters + `.grad` tensors after "
            "the step + optimizer state, counted exactly in bytes.",
            "",
            "| configuration | trainable params | params MiB | grads MiB | AdamW state MiB | total MiB | "
            "ratio to full FT | target | result |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in report["memory"]:
            target = "-" if r["target"] is None else f"<= {r['target']:.2f}"
            lines.append(
                f"| {r['label']} | {r['trainable_parameters']:,} | {mib(r['param_bytes'])} | {mib(r['grad_bytes'])} | "
                f"{mib(r['optimizer_bytes'])} | {mib(r['total_bytes'])} | {r['ratio']:.3f} | {target} | "
                f"{verdict(r['passed'])} |"
            )
        lines += [
            "",
            "Peak RSS of the same training step (`VmHWM` of the worker process). The import floor is the peak RSS "
            "after importing torch, transformers, polyglot_adapters and peft, before the host is built.",
            "",
            "| configuration | import floor MiB | peak RSS MiB | peak RSS ratio to full FT | peak above floor MiB | "
            "above-floor ratio to full FT |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in report["memory"]:
            lines.append(
                f"| {r['label']} | {mib(r['rss_after_imports_bytes'])} | {mib(r['peak_rss_bytes'])} | "
                f"{r['peak_rss_ratio']:.3f} | {mib(r['peak_rss_above_imports_bytes'])} | "
                f"{ratio_cell(r['peak_rss_above_imports_ratio'])} |"
            )
    lines += [
        "",
        "Output checks (max abs difference of `last_hidden_state`):",
    ]
    lines += [f"- {name}: {value:.2e}" for name, value in report["output_checks"].items()]
    return "\n".join(lines)


# -------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="clean timed rounds wanted (default 5; 3 with --quick)")
    p.add_argument(
        "--max-other-load",
        type=float,
        default=0.05,
        help="a round in which other processes used more of the CPUs than this share is redone (default 0.05)",
    )
    p.add_argument("--max-rounds", type=int, default=None, help="most rounds to run, clean or not (3 x --rounds)")
    p.add_argument("--batch", type=int, default=None, help="forward batch rows (default 32; 4 with --quick)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (default 128; 16 with --quick)")
    p.add_argument("--train-batch", type=int, default=None, help="training-step rows (default 8; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per configuration (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny host and batch: a smoke run of seconds")
    p.add_argument("--no-peft", action="store_true", help="skip the PEFT rows (PEFT not installed)")
    p.add_argument("--skip-memory", action="store_true", help="skip the training-memory part")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    p.add_argument("--memory-worker", choices=MEMORY_KINDS, help=argparse.SUPPRESS)
    p.add_argument("--settings-json", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def resolve(args: argparse.Namespace) -> Settings:
    """Fills the size defaults of the real or the ``--quick`` run."""

    def pick(value: int | None, real: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else real)

    return Settings(
        host=dict(QUICK_HOST) if args.quick else {},
        batch=pick(args.batch, 32, 4),
        seq=pick(args.seq, 128, 16),
        train_batch=pick(args.train_batch, 8, 2),
        rounds=pick(args.rounds, 5, 3),
        warmup=args.warmup,
        threads=args.threads,
        seed=args.seed,
        max_other_load=args.max_other_load,
        max_rounds=args.max_rounds if args.max_rounds is not None else 3 * pick(args.rounds, 5, 3),
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark (or one memory worker) and prints the markdown report."""
    args = parse_args(argv)
    if args.memory_worker:
        settings = Settings(**json.loads(args.settings_json))
        print(json.dumps(memory_worker(args.memory_worker, settings)))
        return 0
    settings = resolve(args)
    sizes = (settings.rounds, settings.batch, settings.seq, settings.train_batch, settings.threads)
    if min(sizes) < 1 or settings.warmup < 0 or settings.max_rounds < settings.rounds:
        raise SystemExit(
            "--rounds, --batch, --seq, --train-batch and --threads must be >= 1, --warmup >= 0, "
            "--max-rounds >= --rounds"
        )
    torch.set_num_threads(settings.threads)
    with_peft = not args.no_peft
    started = time.perf_counter()

    # Memory first, while this process is small: the workers are its children.
    kinds = tuple(k for k in MEMORY_KINDS if with_peft or k != "peft_lora") if not args.skip_memory else ()
    memory = run_memory(settings, kinds) if kinds else []

    cases = build_cases(settings, with_peft)
    inputs = make_inputs(cases[0].model.config, settings.batch, settings.seq, settings.seed + 3)
    checks = check_outputs(cases, inputs)
    clean = run_rounds(cases, inputs, settings)
    ran = len(cases[0].times)
    used = clean or list(range(ran))
    speed = summarise_speed(cases, used)
    attn = cases[0].model.config._attn_implementation

    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": machine_info(settings.threads),
        "settings": dataclasses.asdict(settings),
        "attn_implementation": attn,
        "rounds": {"run": ran, "clean": clean, "used": used},
        "speed": speed,
        "memory": memory,
        "output_checks": checks,
        "wall_s": time.perf_counter() - started,
    }
    if args.quick:
        print("Quick smoke run on a tiny host: the figures below say nothing about performance.\n")
    print(render(report))
    print(f"\nTotal wall time {report['wall_s']:.0f} s.")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
