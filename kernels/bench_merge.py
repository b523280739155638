"""Benchmark: merging 100 adapters of a BERT-base-sized model on CPU (target: <= 30 s per merge).

For each configuration, 100 adapters with random weights are saved for a BERT-base host
(``BertConfig()`` defaults: 12 layers, hidden 768; the host is built on the meta device, the
merge needs only its fingerprint), then merged from disk with the library's functions. Each
row times the whole job (read and verify the 100 directories, merge, write the result
atomically), best of ``--repeats`` runs: wall-clock seconds (judged against the target), the
process's CPU seconds, and the 1-minute load average seen before the run (other processes'
demand for the CPUs: wall-clock figures are only comparable on a quiet machine).

Rows:
* LoRA r=8 on q and v (24 sites): linear (task arithmetic), TIES and DARE-TIES at density 0.2,
  re-factorised to rank 8 by SVD (dense 768 x 768 delta per site and adapter);
* bottleneck, reduction 16, after the FFN (12 sites): linear, TIES, DARE (parameter space);
* checkpoint averaging (uniform and EMA) of 100 checkpoints of one bottleneck adapter;
* sparse diffs (LT-SFT), each storing 1% of every encoder linear weight (72 weights, 0.85M
  entries) at random positions: linear, TIES at density 0.2 and 0.01, DARE-TIES at 0.5
  (relative to each weight's union of stored positions), and the uniform checkpoint average,
  all over the union of positions.

Usage:
    python kernels/bench_merge.py                 # 100 adapters, 3 repeats
    python kernels/bench_merge.py --threads 1     # one thread (a machine shared with other jobs)
    python kernels/bench_merge.py --quick         # 10 adapters, 1 repeat (smoke run)
    python kernels/bench_merge.py --sparse-only   # only the sparse-diff rows
    python kernels/bench_merge.py --out /tmp/bench_merge.json

The markdown table it prints is meant to be pasted into ``kernels/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

from polyglot_adapters import BottleneckConfig, LoraConfig, get_method
from polyglot_adapters.interfaces import find_interface
from polyglot_adapters.io import fingerprint
from polyglot_adapters.merging import SavedAdapter, average_checkpoints, merge_adapters
from polyglot_adapters.methods.sparse_ft import SparseDiff, average_diffs, merge_diffs

TARGET_S = 30.0


def machine() -> str:
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    mem = ""
    if Path("/proc/meminfo").is_file():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kib / 2**20:.1f} GiB"
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} usable CPUs{mem}; torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; Python {platform.python_version()}"
    )


def make_adapters(root: Path, n: int, config, host: torch.nn.Module, seed: int) -> list[Path]:
    """Saves ``n`` adapters of ``config`` with random weights (standard normal * 0.02) for ``host``."""
    spec, interface = get_method(config.method), find_interface(host)
    base = fingerprint(host, interface)
    shapes = {}
    with torch.device("meta"):
        for site in spec.find_sites(config, host, interface):
            layer = spec.build_layer(config, site, None)
            for pname, param in layer.named_parameters():
                shapes[f"{site.key}.{pname}"] = tuple(param.shape)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        tensors = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
        paths.append(SavedAdapter(f"a{i}", config, base, tensors).save(root / f"a{i}"))
    return paths


def make_diffs(root: Path, n: int, host: torch.nn.Module, fraction: float, seed: int) -> list[Path]:
    """Saves ``n`` sparse diffs storing ``fraction`` of every encoder linear weight of ``host`` at random positions."""
    base = fingerprint(host, find_interface(host))
    shapes = {
        f"{name}.weight": tuple(module.weight.shape)
        for name, module in host.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("encoder.")
    }
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(n):
        entries = {}
        for key, shape in shapes.items():
            size = shape[0] * shape[1]
            k = int(fraction * size)
            # 2k draws hold k distinct positions at this density; keep k of them at random.
            drawn = torch.unique(torch.randint(size, (2 * k,), generator=gen))
            idx = drawn[torch.randperm(drawn.numel(), generator=gen)[:k]].sort().values
            entries[key] = (shape, idx, torch.randn(k, generator=gen) * 0.02)
        paths.append(SparseDiff(base=base, entries=entries).save(root / f"d{i}", f"d{i}"))
    return paths


def load_average() -> float:
    """The 1-minute load average (other processes' demand for the CPUs)."""
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").is_file() else float("nan")


def timed(job: Callable[[], SavedAdapter | SparseDiff], out: Path, repeats: int) -> dict[str, float]:
    """Best of ``repeats``: the merge (reading and verifying every source included) and the atomic write."""
    best: dict[str, float] | None = None
    for _ in range(repeats):
        load = load_average()
        start, cpu = time.perf_counter(), time.process_time()
        result = job()
        merged = time.perf_counter()
        result.save(out)
        end = time.perf_counter()
        run = {
            "merge_s": merged - start,
            "save_s": end - merged,
            "total_s": end - start,
            "cpu_s": time.process_time() - cpu,
            "load_before": load,
        }
        best = run if best is None or run["total_s"] < best["total_s"] else best
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="adapters per merge")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 adapters, 1 repeat")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--sparse-only", action="store_true", help="only the sparse-diff rows")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n, repeats = (10, 1) if args.quick else (args.n, args.repeats)
    with torch.device("meta"):
        host = BertModel(BertConfig())
    lora, bottleneck = LoraConfig(r=8, targets=("q", "v")), BottleneckConfig()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs: list[tuple[str, Callable[[], SavedAdapter | SparseDiff]]] = []
        if not args.sparse_only:
            loras = make_adapters(root / "lora", n, lora, host, seed=0)
            bns = make_adapters(root / "bn", n, bottleneck, host, seed=1)
            jobs += [
                ("LoRA r8 q,v: linear -> rank 8", lambda: merge_adapters(loras, how="linear", rank=8)),
                (
                    "LoRA r8 q,v: TIES d=0.2 -> rank 8",
                    lambda: merge_adapters(loras, how="ties", density=0.2, rank=8),
                ),
                (
                    "LoRA r8 q,v: DARE-TIES d=0.2 -> rank 8",
                    lambda: merge_adapters(loras, how="dare_ties", density=0.2, rank=8),
                ),
                ("bottleneck r16: linear", lambda: merge_adapters(bns, how="linear")),
                ("bottleneck r16: TIES d=0.2", lambda: merge_adapters(bns, how="ties", density=0.2)),
                ("bottleneck r16: DARE d=0.2", lambda: merge_adapters(bns, how="dare", density=0.2)),
                ("checkpoint average (uniform), bottleneck", lambda: average_checkpoints(bns)),
                ("checkpoint average (EMA 0.99), LoRA", lambda: average_checkpoints(loras, ema=0.99)),
            ]
        diffs = make_diffs(root / "sft", n, host, fraction=0.01, seed=2)
        jobs += [
            ("sparse diffs 1%: linear", lambda: merge_diffs(diffs, how="linear")),
            ("sparse diffs 1%: TIES d=0.2 (of the union)", lambda: merge_diffs(diffs, how="ties", density=0.2)),
            (
                "sparse diffs 1%: TIES d=0.01 (of the union; trims)",
                lambda: merge_diffs(diffs, how="ties", density=0.01),
            ),
            ("sparse diffs 1%: DARE-TIES d=0.5", lambda: merge_diffs(diffs, how="dare_ties", density=0.5)),
            ("checkpoint average (uniform), sparse diffs 1%", lambda: average_diffs(diffs)),
        ]
        for i, (label, job) in enumerate(jobs):
            figures = timed(job, root / "out" / str(i), repeats)
            rows.append({"configuration": label, "adapters": n, **figures})
            print(
                f"{label}: {figures['total_s']:.2f} s (load average before: {figures['load_before']:.1f})", flush=True
            )
    header = f"Machine: {machine()}. {n} adapters per merge, best of {repeats}."
    print("\n" + header + "\n")
    print("| configuration | adapters | wall s (read+merge+write) | write s | CPU s | load avg | target | result |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for row in rows:
        verdict = "pass" if row["total_s"] <= TARGET_S else "FAIL"
        print(
            f"| {row['configuration']} | {row['adapters']} | {row['total_s']:.2f} | {row['save_s']:.2f} | "
            f"{row['cpu_s']:.2f} | {row['load_before']:.1f} | <= {TARGET_S:.0f} s | {verdict} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
