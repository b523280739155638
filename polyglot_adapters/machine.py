"""What a measurement ran on, and how busy the rest of the machine was meanwhile (for benchmarks and reports)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadMeter", "busy_cpu_seconds", "machine_info"]


def machine_info() -> dict[str, Any]:
    """The CPU (model, vector extensions), CPU counts, torch threads and software versions."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip():
                break  # end of the first processor's block
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags", "").split()
    import transformers

    return {
        "cpu": fields.get("model name") or platform.processor() or "unknown",
        "cpu_flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine spent busy since boot (``/proc/stat``, steal included), or ``None``."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """Times a block and tells what share of the machine's CPUs went to anything but this process meanwhile.

    Example:
        >>> with LoadMeter() as meter:
        ...     work()
        >>> meter.seconds, meter.other_load   # other_load: 0.0 .. 1.0, or None when unknown
    """

    seconds: float = float("nan")
    other_load: float | None = None

    def __enter__(self) -> LoadMeter:
        self._busy, self._own = busy_cpu_seconds(), time.process_time()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        busy, own = busy_cpu_seconds(), time.process_time()
        capacity = self.seconds * (os.cpu_count() or 1)
        # /proc/stat counts 10 ms ticks: below a second of capacity the share is noise.
        if self._busy is not None and busy is not None and capacity >= 1.0:
            self.other_load = min(1.0, max(0.0, (busy - self._busy) - (own - self._own)) / capacity)
