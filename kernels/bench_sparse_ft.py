"""Benchmark of composable sparse fine-tuning (LT-SFT) on a BERT-base-sized encoder, next to its peers.

Host: transformers ``BertModel`` with ``BertConfig()`` defaults (110M parameters), random init;
the sparse difference covers every linear weight of the encoder (q, k, v, o, ffn_in, ffn_out of
the 12 blocks: 72 matrices, 84.9M entries) at density 5%, positions drawn at random. Parts:

* ``memory``: one subprocess per configuration runs phase-2 training steps (AdamW, loss
  ``last_hidden_state.pow(2).mean()``) and counts the exact bytes besides activations:
  parameters, ``.grad`` tensors after the step, optimizer state, masks (positions), copies of
  theta0; plus the peak memory (``VmHWM``, or the CUDA allocator's peak). Ours: the phase-2
  adapter with its values held in the weights (``values_in_weights``). Peer: composable-sft's
  dense-gradient masking, reimplemented faithfully: the targeted weights train with dense
  gradients and dense AdamW state, ``p.grad *= mask`` (a bool tensor per weight) after every
  backward, ``_original_params`` (a CPU copy of every trainable parameter, made by its trainer)
  and ``previous_params`` (a CPU copy of every parameter, held by its LT-SFT loop through phase 2).
  Also the trainable state per selected entry (values + gradients + AdamW moments).
* ``step``: phase-2 step time of both, in one process, interleaved rounds.
* ``select``: mask selection over ``--select-entries`` scores (BERT-base's parameter shapes, plus
  one tensor to reach the count), K = 5%: ours (``global_topk``, as ``select_mask`` calls it) and
  composable-sft's list-and-partition (``tolist()`` into one Python list, ``np.partition``, then
  ``>= threshold`` per tensor), each in its own subprocess: seconds and extra peak memory.
* ``apply``: ``SparseDiff.apply`` and its revert of the 5% diff (all 72 matrices), interleaved
  rounds with a two-pass apply (gather every matrix's originals, then ``index_add_`` the values:
  what ``apply`` did before its one-matrix-at-a-time gather-add) as the baseline, and a
  bit-exactness check of the revert.
* ``forward``: forward of the plain base, of the base with the diff applied, of our phase-2
  adapter unapplied (sparse product), and of PEFT's SHiRA (``ShiraConfig``, which rebuilds each
  dense weight on every forward) holding the same entries, at batch 1 x 128 and 32 x 128.
  SHiRA's layout has ``r * (in + out)`` entries per matrix; ``r = 26`` gives 5.08% overall.
* ``scatter`` (CUDA only): the fused scatter-add of a 5% diff into an 85M-entry weight against
  the measured device copy bandwidth.

Timed parts interleave their configurations in rounds (shuffled order per round) after a
warm-up and report medians and ratios from the same run; on CPU a round counts only if the
other load of the machine stayed at or below ``--max-other-load`` in each of its calls.

Usage:
    # smoke run on a tiny host (about a minute)
    python kernels/bench_sparse_ft.py --quick

    # the real run (CPU; 10-20 minutes on 2 quiet cores, the list-and-partition peer alone takes minutes)
    python kernels/bench_sparse_ft.py --out /tmp/bench_sparse_ft.json

    # on a CUDA machine (kernels/gpu_check.sh): every part but the CPU-bound list-and-partition
    python kernels/bench_sparse_ft.py --device cuda --parts scatter,apply,forward,step,memory

The markdown it prints is meant to be pasted into ``kernels/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertModel

from polyglot_adapters import AdaptedModel
from polyglot_adapters.interfaces import find_interface
from polyglot_adapters.io import fingerprint
from polyglot_adapters.kernels import global_topk, scatter_add_
from polyglot_adapters.machine import LoadMeter, machine_info
from polyglot_adapters.methods.sparse_ft import SparseDiff, SparseFTConfig, SparseValuesLayer
from polyglot_adapters.methods.sparse_ft.lt_sft import values_in_weights
from polyglot_adapters.methods.targets import linear_sites

QUICK_HOST = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=1000)
"""``BertConfig`` overrides for ``--quick``; the real run uses ``BertConfig()`` unchanged."""

PARTS = ("memory", "step", "select", "apply", "forward", "scatter")
SHIRA_R = 26
TARGETS = {
    "state_per_entry": 1.1 * 16,
    "memory_ratio": 0.5,
    "step_ratio": 1.0,
    "select_s": 3.0,
    "select_extra_bytes": 1.5e9,
    "apply_s": 0.050,
    "forward_ratio": 1.02,
    "vs_shira": 1.0,
    "scatter_share": 0.60,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved sizes of one run.

    Attributes:
        host: ``BertConfig`` overrides (empty: BERT-base defaults).
        device: ``cpu`` or ``cuda``.
        density: Share of the targeted entries in the diff.
        train_batch: Rows of the phase-2 training step (each ``seq`` tokens).
        seq: Tokens per row.
        forward_batches: Rows of the timed forward batches.
        rounds: Clean timed rounds wanted per part.
        warmup: Untimed calls per configuration before the rounds.
        select_entries: Entries scored by the mask-selection part.
        peer_select_entries: Entries scored by the list-and-partition peer (it needs about 60 bytes
            per entry: a smaller count where the machine's memory is short; ours runs at both sizes).
        threads: ``torch.set_num_threads`` value.
        seed: Seed of weights, positions, values and inputs.
        max_other_load: A round counts only if other processes used at most this share of the CPUs.
        max_rounds: Most rounds to run per timed part, clean or not.
    """

    host: dict[str, int]
    device: str
    density: float
    train_batch: int
    seq: int
    forward_batches: tuple[int, ...]
    rounds: int
    warmup: int
    select_entries: int
    peer_select_entries: int
    threads: int
    seed: int
    max_other_load: float
    max_rounds: int


# ------------------------------------------------------------------------------ models


def build_host(settings: Settings) -> BertModel:
    """The seeded, randomly initialised host on the benchmark's device."""
    torch.manual_seed(settings.seed)
    return BertModel(BertConfig(**settings.host)).to(settings.device).eval()


def targeted(host: nn.Module) -> dict[str, tuple[int, int]]:
    """Site key -> ``(out, in)`` of every linear layer the default ``sparse_ft`` targets select."""
    sites = linear_sites(host, find_interface(host, None), SparseFTConfig().targets, None)
    return {site.key: (site.out_features, site.in_features) for site in sites}


def random_positions(shapes: dict[str, tuple[int, int]], counts: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    """Sorted random flat positions, ``counts[key]`` of them per weight."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: torch.randperm(out * inp, generator=gen)[: counts[key]].sort().values
        for key, (out, inp) in shapes.items()
    }


def density_counts(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, int]:
    """``round(density * entries)`` per weight."""
    return {key: round(density * out * inp) for key, (out, inp) in shapes.items()}


def shira_counts(shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """SHiRA's ``r * (in + out)`` entries per weight."""
    return {key: SHIRA_R * (out + inp) for key, (out, inp) in shapes.items()}


def make_diff(host: nn.Module, positions: dict[str, torch.Tensor], seed: int) -> SparseDiff:
    """A diff of ``host``'s linear weights with N(0, 1e-3) values at ``positions``."""
    shapes = targeted(host)
    gen = torch.Generator().manual_seed(seed)
    entries = {
        f"{key}.weight": (shapes[key], idx, torch.randn(idx.numel(), generator=gen) * 1e-3)
        for key, idx in positions.items()
    }
    return SparseDiff(base=fingerprint(host, find_interface(host, None)), entries=entries)


def ours_phase2(host: nn.Module, positions: dict[str, torch.Tensor], values: SparseDiff | None) -> AdaptedModel:
    """Our phase-2 adapter at ``positions`` (values from ``values`` if given), active and trainable."""
    am = AdaptedModel(host)
    am.add_adapter("sft", SparseFTConfig().with_mask(positions))
    am.set_active("sft")
    am.train_adapters("sft")
    if values is not None:
        with torch.no_grad():
            for module_path, module in am.model.named_modules():
                if isinstance(module, SparseValuesLayer):
                    key = module_path.removesuffix(".adapters.sft") + ".weight"
                    module.sft_values.copy_(values.entries[key][2].to(module.sft_values.device))
    return am


class ComposableSFT:
    """composable-sft's phase 2 (``SparseFineTuner`` + ``LotteryTicketSparseFineTuner``) on ``host``.

    Only the targeted weights train ("maskable" parameters); everything else is frozen. The
    state is the one its trainer and LT-SFT loop hold during phase 2.
    """

    def __init__(self, host: nn.Module, positions: dict[str, torch.Tensor], lr: float) -> None:
        self.model = host
        names = {f"{key}.weight" for key in positions}
        for name, param in host.named_parameters():
            param.requires_grad_(name in names)
        # LT-SFT's loop copies every parameter to the CPU before phase 1 and keeps it through phase 2.
        self.previous_params = {n: torch.zeros_like(p, device="cpu").copy_(p) for n, p in host.named_parameters()}
        # The trainer's theta0 of every trainable parameter, on the CPU.
        self.original_params = {
            n: torch.zeros_like(p, device="cpu").copy_(p) for n, p in host.named_parameters() if p.requires_grad
        }
        self.mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in host.named_parameters() if n in names}
        for key, idx in positions.items():
            self.mask[f"{key}.weight"].view(-1)[idx.to(self.mask[f"{key}.weight"].device)] = True
        self.params = [p for p in host.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)

    def step(self, inputs: dict[str, torch.Tensor]) -> float:
        """One training step: dense backward, ``grad *= mask``, AdamW over every trainable entry."""
        loss = self.model(**inputs).last_hidden_state.pow(2).mean()
        loss.backward()
        for name, param in self.model.named_parameters():
            if name in self.mask and param.grad is not None:
                param.grad *= self.mask[name]
        self.optimizer.step()
        return float(loss.detach())

    def zero_grad(self) -> None:
        """``model.zero_grad()`` (gradients set to ``None``), as its trainer does after each step."""
        self.model.zero_grad()


class Ours:
    """Our phase 2: the values held in the weights, gradients and AdamW state for the values only."""

    def __init__(self, host: nn.Module, positions: dict[str, torch.Tensor], lr: float) -> None:
        self.model = ours_phase2(host, positions, None)
        self.params = list(self.model.trainable_parameters().values())
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self._bound = values_in_weights(self.model, "sft")
        if not self._bound.__enter__():
            raise RuntimeError("the phase-2 adapter was not bound to the weights")

    def step(self, inputs: dict[str, torch.Tensor]) -> float:
        """One training step of the values."""
        loss = self.model(**inputs).last_hidden_state.pow(2).mean()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def zero_grad(self) -> None:
        """Drops the values' gradients."""
        self.optimizer.zero_grad()


def make_inputs(settings: Settings, batch: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids ``(batch, seq)`` and an all-ones attention mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, settings.seq), generator=gen).to(settings.device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


# ------------------------------------------------------------------------------ timing


def synchronize(device: str) -> None:
    """Waits for queued device work (CUDA), so wall-clock times cover it."""
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, reps: int = 1) -> tuple[float, float | None]:
    """Seconds per call of ``reps`` back-to-back calls, and the other load of the machine meanwhile."""
    synchronize(device)
    with LoadMeter() as meter:
        for _ in range(reps):
            fn()
        synchronize(device)
    return meter.seconds / reps, meter.other_load


def interleave(calls: dict[str, Callable[[], Any]], settings: Settings, label: str) -> dict[str, Any]:
    """Warms up, then runs every call once per round in a shuffled order until enough clean rounds.

    A call shorter than a second is repeated within its round until the round's measurement
    lasts about a second (the other load is only known over a second or more of CPU capacity).

    Returns:
        ``times`` (seconds per call) and ``load`` per call name, the repetitions, and the
        ``used`` round indices (the clean ones, or every round when none was clean).
    """
    reps = dict.fromkeys(calls, 1)
    for _ in range(max(settings.warmup, 1)):
        for name, fn in calls.items():
            seconds, _ = timed(fn, settings.device)
            reps[name] = max(1, min(100, round(1.0 / max(seconds, 1e-6))))
    order = random.Random(settings.seed)
    times: dict[str, list[float]] = {name: [] for name in calls}
    load: dict[str, list[float | None]] = {name: [] for name in calls}
    clean: list[int] = []
    index = 0
    while len(clean) < settings.rounds and index < settings.max_rounds:
        gc.collect()
        names = list(calls)
        order.shuffle(names)
        for name in names:
            seconds, other = timed(calls[name], settings.device, reps[name])
            times[name].append(seconds)
            load[name].append(other)
        seen = [load[n][-1] for n in names if load[n][-1] is not None]
        worst = max(seen, default=None)
        if settings.device == "cuda" or (worst is not None and worst <= settings.max_other_load):
            clean.append(index)
        print(
            f"{label} round {index + 1}: "
            + ", ".join(f"{n}={times[n][-1]:.4f}s" for n in names)
            + (f"; other load up to {worst:.0%}" if worst is not None else "")
            + ("" if clean and clean[-1] == index else " (DISCARDED)"),
            file=sys.stderr,
            flush=True,
        )
        index += 1
    return {
        "times": times,
        "load": load,
        "reps": reps,
        "used": clean or list(range(index)),
        "clean": len(clean),
        "run": index,
    }


def median_of(record: dict[str, Any], name: str) -> float:
    """Median seconds of ``name`` over the used rounds."""
    return statistics.median(record["times"][name][i] for i in record["used"])


def ratio_range(record: dict[str, Any], name: str, base: str) -> tuple[float, float]:
    """Smallest and largest per-round ratio of ``name`` to ``base``."""
    ratios = [record["times"][name][i] / record["times"][base][i] for i in record["used"]]
    return min(ratios), max(ratios)


def max_load(record: dict[str, Any]) -> float | None:
    """Largest other load seen in the used rounds."""
    seen = [v[i] for v in record["load"].values() for i in record["used"] if v[i] is not None]
    return max(seen, default=None)


# ------------------------------------------------------------------------------ memory


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of distinct tensors."""
    seen = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in seen.values())


def peak_bytes(device: str) -> int:
    """Peak memory of this process: the CUDA allocator's peak, or ``VmHWM`` on the CPU."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (peak memory needs Linux)")


def rss_bytes() -> int:
    """Current resident set size (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_peak(device: str) -> bool:
    """Resets the peak-memory counter (``/proc/self/clear_refs`` 5, or the CUDA allocator's)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_worker(kind: str, settings: Settings) -> dict[str, Any]:
    """Sets up ``kind`` (``ours`` or ``composable_sft``) and runs two phase-2 steps; counts bytes."""
    torch.set_num_threads(settings.threads)
    floor = peak_bytes("cpu") if settings.device == "cpu" else 0
    host = build_host(settings)
    shapes = targeted(host)
    positions = random_positions(shapes, density_counts(shapes, settings.density), settings.seed + 1)
    selected = sum(idx.numel() for idx in positions.values())
    trainer = Ours(host, positions, 1e-4) if kind == "ours" else ComposableSFT(host, positions, 1e-4)
    host.train()
    inputs = make_inputs(settings, settings.train_batch, host.config.vocab_size, settings.seed + 3)
    for _ in range(2):
        trainer.zero_grad()
        start = time.perf_counter()
        trainer.step(inputs)
        synchronize(settings.device)
        step_s = time.perf_counter() - start
    params = list(dict.fromkeys(trainer.model.parameters()))
    grads = [p.grad for p in params if p.grad is not None]
    state = [v for s in trainer.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    if kind == "ours":
        layers = [m for m in trainer.model.modules() if isinstance(m, SparseValuesLayer)]
        masks = [b for m in layers for b in (m.sft_rows, m.sft_cols, m._bound[1])]
        theta0 = [m._bound[2] for m in layers]
        values = trainer.params
        moments = [v for s in trainer.optimizer.state.values() for v in s.values() if v.ndim > 0]
        per_entry = (tensor_bytes(values) + tensor_bytes(grads) + tensor_bytes(moments)) / selected
    else:
        masks = list(trainer.mask.values())
        theta0 = [*trainer.original_params.values(), *trainer.previous_params.values()]
        per_entry = (tensor_bytes(grads) + tensor_bytes(state)) / selected  # dense gradients and moments
    row = {
        "kind": kind,
        "selected": selected,
        "param_bytes": tensor_bytes(params),
        "grad_bytes": tensor_bytes(grads),
        "optimizer_bytes": tensor_bytes(state),
        "mask_bytes": tensor_bytes(masks),
        "theta0_bytes": tensor_bytes(theta0),
        "state_per_entry_bytes": per_entry,
        "import_floor_bytes": floor,
        "peak_bytes": peak_bytes(settings.device),
        "step_s": step_s,
    }
    row["total_bytes"] = sum(row[k] for k in ("param_bytes", "grad_bytes", "optimizer_bytes", "mask_bytes"))
    row["total_bytes"] += row["theta0_bytes"]
    return row


def select_worker(kind: str, settings: Settings) -> dict[str, Any]:
    """Mask selection over random scores: seconds, CPU seconds and extra peak memory.

    ``kind`` is ``ours`` or ``list_partition``, with ``@peer`` for the peer's entry count.
    """
    kind, _, size = kind.partition("@")
    wanted = settings.peer_select_entries if size == "peer" else settings.select_entries
    torch.set_num_threads(settings.threads)
    with torch.device("meta"):
        shapes = [tuple(p.shape) for p in BertModel(BertConfig(**settings.host)).parameters()]
    # BERT-base's parameter shapes, cut or padded to the wanted count.
    kept, total = [], 0
    for shape in shapes:
        if total + int(np.prod(shape)) > wanted:
            break
        kept.append(shape)
        total += int(np.prod(shape))
    shapes = [*kept, (wanted - total,)] if wanted > total else kept
    gen = torch.Generator().manual_seed(settings.seed + 5)
    scores = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    entries = sum(t.numel() for t in scores)
    k = round(settings.density * entries)
    masks = [torch.zeros_like(t, dtype=torch.bool) for t in scores] if kind == "list_partition" else []
    gc.collect()
    before = rss_bytes()
    exact_peak = reset_peak("cpu")
    start, cpu_start = time.perf_counter(), time.process_time()
    if kind == "ours":
        chosen = global_topk(scores, k)
        count = sum(c.numel() for c in chosen)
    else:
        # composable-sft's unfreeze_k_most_changed_params: every |delta| of a frozen entry into one list.
        diffs: list[float] = []
        for delta, mask in zip(scores, masks, strict=True):
            valid = (~mask).view(-1)
            diffs.extend(torch.abs(delta.view(-1)[valid]).tolist())
        parted = np.partition(diffs, len(diffs) - k)
        threshold = parted[len(diffs) - k]
        del diffs, parted
        count = 0
        for delta, mask in zip(scores, masks, strict=True):
            to_mask = (delta.abs() >= threshold) & ~mask
            mask |= to_mask
            count += int(to_mask.sum())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "kind": kind,
        "cpu_seconds": cpu,
        "entries": entries,
        "k": k,
        "selected": count,
        "seconds": seconds,
        "extra_peak_bytes": peak_bytes("cpu") - before,
        "peak_reset": exact_peak,
    }


def run_worker(mode: str, kind: str, settings: Settings) -> dict[str, Any]:
    """Runs one worker in a fresh subprocess and returns its JSON line."""
    blob = json.dumps(dataclasses.asdict(settings))
    cmd = [sys.executable, __file__, "--worker", f"{mode}:{kind}", "--settings-json", blob]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {mode}:{kind} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{mode} {kind}: {json.dumps(row)}", file=sys.stderr, flush=True)
    return row


# ------------------------------------------------------------------------------ parts


def part_memory(settings: Settings) -> dict[str, Any]:
    """Memory besides activations and peak memory of ours and composable-sft's phase 2."""
    rows = {kind: run_worker("memory", kind, settings) for kind in ("ours", "composable_sft")}
    return {"rows": rows, "ratio": rows["ours"]["total_bytes"] / rows["composable_sft"]["total_bytes"]}


def part_step(settings: Settings) -> dict[str, Any]:
    """Phase-2 step time of ours and composable-sft's, interleaved."""
    trainers: dict[str, Any] = {}
    for kind in ("composable_sft", "ours"):
        host = build_host(settings).train()
        shapes = targeted(host)
        positions = random_positions(shapes, density_counts(shapes, settings.density), settings.seed + 1)
        trainers[kind] = Ours(host, positions, 1e-4) if kind == "ours" else ComposableSFT(host, positions, 1e-4)
    inputs = make_inputs(settings, settings.train_batch, trainers["ours"].model.model.config.vocab_size, 3)

    def call(trainer: Any) -> Callable[[], float]:
        def run() -> float:
            trainer.zero_grad()
            return trainer.step(inputs)

        return run

    record = interleave({k: call(t) for k, t in trainers.items()}, settings, "step")
    record["ratio"] = median_of(record, "ours") / median_of(record, "composable_sft")
    return record


def part_select(settings: Settings) -> dict[str, Any]:
    """Mask selection of ours (at both sizes) and of list-and-partition, each in a fresh process."""
    kinds = ["ours", "list_partition@peer"]
    if settings.peer_select_entries != settings.select_entries:
        kinds.insert(1, "ours@peer")
    return {kind: run_worker("select", kind, settings) for kind in kinds}


def part_apply(settings: Settings) -> dict[str, Any]:
    """Apply and revert of the 5% diff, interleaved, and the revert's bit-exactness."""
    host = build_host(settings)
    shapes = targeted(host)
    diff = make_diff(host, random_positions(shapes, density_counts(shapes, settings.density), settings.seed + 1), 7)
    pristine = {n: p.detach().clone() for n, p in host.named_parameters()}
    record = _apply_rounds(host, diff, settings)
    exact = all(torch.equal(p, pristine[n]) for n, p in host.named_parameters())
    record["bit_exact"] = exact
    record["nnz"] = diff.nnz
    record["entries"] = sum(out * inp for out, inp in shapes.values())
    return record


def _apply_rounds(host: nn.Module, diff: SparseDiff, settings: Settings) -> dict[str, Any]:
    """Apply then revert, alternating (a revert needs the apply before it), timed separately."""
    pending: list[Callable[[], None]] = []

    def apply() -> None:
        pending.append(diff.apply(host))

    def revert() -> None:
        pending.pop()()

    targets = [
        (host.get_parameter(key).data.view(-1), idx.to(settings.device), values.to(settings.device))
        for key, (_, idx, values) in diff.entries.items()
    ]

    def two_pass_apply() -> None:
        saved = [flat.index_select(0, idx) for flat, idx, _ in targets]
        for flat, idx, values in targets:
            flat.index_add_(0, idx, values)
        pending.append(lambda: [flat.index_copy_(0, i, old) for (flat, i, _), old in zip(targets, saved, strict=True)])

    names = (("apply", apply), ("revert", revert), ("two-pass apply", two_pass_apply), ("two-pass revert", revert))
    for _ in range(max(settings.warmup, 1)):
        for _, fn in names:
            fn()
    times: dict[str, list[float]] = {name: [] for name, _ in names}
    load: dict[str, list[float | None]] = {name: [] for name, _ in names}
    cpu: dict[str, list[float]] = {name: [] for name, _ in names}  # this process's CPU seconds (all threads)
    for _ in range(max(settings.max_rounds, 5) * 4):
        gc.collect()
        for name, fn in names:
            cpu0 = time.process_time()
            seconds, other = timed(fn, settings.device)
            cpu[name].append(time.process_time() - cpu0)
            times[name].append(seconds)
            load[name].append(other)
    used = list(range(len(times["apply"])))
    return {"times": times, "load": load, "cpu": cpu, "used": used, "clean": len(used), "run": len(used)}


def peft_shira(host: nn.Module, positions: dict[str, torch.Tensor], diff: SparseDiff) -> nn.Module:
    """PEFT SHiRA on the targeted linear layers of ``host`` (in place), holding ``diff``'s entries."""
    import peft

    def mask_fn(base_layer: nn.Module, r: int, **_: Any) -> torch.Tensor:
        key = next(k for k, m in paths.items() if m is base_layer)
        mask = torch.zeros(base_layer.weight.numel(), dtype=base_layer.weight.dtype, device=base_layer.weight.device)
        mask[positions[key].to(mask.device)] = 1.0
        return mask.view(base_layer.weight.shape)

    paths = {key: host.get_submodule(key) for key in positions}
    config = peft.ShiraConfig(r=SHIRA_R, mask_type="ours", target_modules=list(positions), inference_mode=True)
    config.mask_fn = mask_fn
    model = peft.get_peft_model(host, config)
    with torch.no_grad():
        for key, layer in paths.items():
            wrapper = model.base_model.model.get_submodule(key)
            # SHiRA's indices come from torch.where on the mask: row-major order, as ours.
            wrapper.shira_weight["default"].copy_(diff.entries[f"{key}.weight"][2].to(layer.weight.device))
    return model.eval()


def part_forward(settings: Settings) -> dict[str, Any]:
    """Forward of the base, the base with the diff applied, our unapplied adapter and SHiRA."""
    host = build_host(settings)
    shapes = targeted(host)
    positions = random_positions(shapes, shira_counts(shapes), settings.seed + 2)
    diff = make_diff(host, positions, 8)
    applied = copy.deepcopy(host)
    diff.apply(applied)
    adapter = ours_phase2(copy.deepcopy(host), positions, diff).eval()
    shira = peft_shira(copy.deepcopy(host), positions, diff)
    models = {"base": host, "diff applied": applied, "adapter (sparse product)": adapter, "PEFT SHiRA": shira}
    out: dict[str, Any] = {"density": diff.nnz / sum(o * i for o, i in shapes.values()), "batches": {}}
    for batch in settings.forward_batches:
        inputs = make_inputs(settings, batch, host.config.vocab_size, settings.seed + batch)
        with torch.inference_mode():
            outs = {n: m(**inputs).last_hidden_state.float() for n, m in models.items()}
        checks = {n: float((o - outs["diff applied"]).abs().max()) for n, o in outs.items() if n != "diff applied"}

        def call(model: nn.Module, inputs: dict[str, torch.Tensor] = inputs) -> Callable[[], Any]:
            def run() -> Any:
                with torch.inference_mode():
                    return model(**inputs)

            return run

        record = interleave({n: call(m) for n, m in models.items()}, settings, f"forward {batch}x{settings.seq}")
        record["checks"] = checks
        out["batches"][batch] = record
    return out


def part_scatter(settings: Settings) -> dict[str, Any]:
    """CUDA: fused scatter-add of a 5% diff into an 85M-entry weight vs the device copy bandwidth."""
    if settings.device != "cuda":
        return {"skipped": "needs --device cuda"}
    n = 84_934_656
    k = round(settings.density * n)
    gen = torch.Generator().manual_seed(settings.seed)
    flat = torch.randn(n, device="cuda")
    idx = torch.randperm(n, generator=gen)[:k].sort().values.to(device="cuda", dtype=torch.int32)
    values = torch.randn(k, generator=gen).cuda()
    src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")

    def best_of(fn: Callable[[], Any]) -> float:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)

    copy_s = best_of(lambda: dst.copy_(src))
    scatter_s = best_of(lambda: scatter_add_(flat, [(idx, values, 1.0)]))
    copy_bw = 2 * n * 4 / copy_s  # read + write
    # Per entry: its index and value read, the weight entry read and written.
    scatter_bw = k * (4 + 4 + 4 + 4) / scatter_s
    return {
        "entries": n,
        "k": k,
        "copy_s": copy_s,
        "scatter_s": scatter_s,
        "copy_gbps": copy_bw / 1e9,
        "scatter_gbps": scatter_bw / 1e9,
        "share": scatter_bw / copy_bw,
    }


# ------------------------------------------------------------------------------ report


def verdict(ok: bool | None) -> str:
    """``pass`` / ``FAIL`` / ``-``."""
    return "-" if ok is None else ("pass" if ok else "FAIL")


def mib(n: float) -> str:
    """Bytes as MiB."""
    return f"{n / 2**20:.1f}"


def render(report: dict[str, Any]) -> str:
    """Markdown tables of every part that ran, with a target column."""
    s, m, parts = report["settings"], report["machine"], report["parts"]
    host = "BertConfig() defaults" if not s["host"] else f"BertConfig({s['host']})"
    lines = [
        f"Machine: {m['cpu']} [{' '.join(m['cpu_flags'])}], {m['usable_cpus']} usable CPUs, "
        f"torch {m['torch']} with {m['torch_threads']} threads, transformers {m['transformers']}, "
        f"peft {report['peft']}, Python {m['python']}, device {s['device']}"
        + (f" ({m['cuda']})" if m.get("cuda") else "")
        + f". Load average before / after: {report['load_before']} / {report['load_after']}.",
        "",
        f"Host: BertModel, {host}, random init; diff density {s['density']:.0%} of the {report['entries']:,} "
        f"entries of the encoder's linear weights; rounds: {s['rounds']} clean wanted (other load <= "
        f"{s['max_other_load']:.0%}), {s['warmup']} warm-up call(s).",
        "",
        "| target | measured | target value | result |",
        "|---|---|---|---|",
    ]
    for name, measured, target, ok in report["verdicts"]:
        lines.append(f"| {name} | {measured} | {target} | {verdict(ok)} |")
    if "memory" in parts:
        lines += [
            "",
            f"Phase-2 memory (one subprocess each, two AdamW steps, batch {s['train_batch']} x {s['seq']}):",
            "",
            "| configuration | params MiB | grads MiB | AdamW MiB | masks MiB | theta0 copies MiB | total MiB | "
            "ratio | peak MiB | import floor MiB | trainable state B/entry |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = parts["memory"]["rows"]["composable_sft"]["total_bytes"]
        for kind, label in (("ours", "ours (values in weights)"), ("composable_sft", "composable-sft masking")):
            r = parts["memory"]["rows"][kind]
            lines.append(
                f"| {label} | {mib(r['param_bytes'])} | {mib(r['grad_bytes'])} | {mib(r['optimizer_bytes'])} | "
                f"{mib(r['mask_bytes'])} | {mib(r['theta0_bytes'])} | {mib(r['total_bytes'])} | "
                f"{r['total_bytes'] / base:.3f} | {mib(r['peak_bytes'])} | {mib(r['import_floor_bytes'])} | "
                f"{r['state_per_entry_bytes']:.2f} |"
            )
    timed_tables = []
    if "step" in parts:
        timed_tables.append(("phase-2 step", parts["step"], "composable_sft"))
    if "apply" in parts:
        timed_tables.append(("apply / revert", parts["apply"], "two-pass"))  # apply vs two-pass apply, ...
    for batch, record in parts.get("forward", {}).get("batches", {}).items():
        timed_tables.append((f"forward {batch} x {s['seq']}", record, "base"))
    for title, record, base_name in timed_tables:
        lines += [
            "",
            (
                f"{title}: {record['clean']} clean of {record['run']} rounds"
                if "reps" in record
                else f"{title}: {record['run']} alternating calls each (too short to measure the other load)"
            )
            + (f", other load up to {max_load(record):.0%}" if max_load(record) is not None else "")
            + ".",
            "",
            "| configuration | median s | ratio | per-round ratio min-max |",
            "|---|---:|---:|---:|",
        ]
        for name in record["times"]:
            if base_name is None:
                cpu = statistics.median(record["cpu"][name]) if "cpu" in record else float("nan")
                lines.append(f"| {name} | {median_of(record, name):.4f} | - | CPU {cpu:.4f} s |")
                continue
            base = base_name if base_name in record["times"] else f"{base_name} {name.split()[-1]}"
            lo, hi = ratio_range(record, name, base)
            ratio = median_of(record, name) / median_of(record, base)
            lines.append(f"| {name} | {median_of(record, name):.4f} | {ratio:.3f} | {lo:.3f}-{hi:.3f} |")
        if "checks" in record:
            lines.append("")
            lines.append(
                "Max abs difference of `last_hidden_state` to the applied diff: "
                + ", ".join(f"{n} {v:.1e}" for n, v in record["checks"].items())
                + " (base must differ)."
            )
    if "select" in parts:
        lines += [
            "",
            "Mask selection (one subprocess each; extra = peak RSS during the selection minus RSS before it):",
            "",
            "| method | entries | K | seconds | CPU seconds | extra peak MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kind, r in parts["select"].items():
            label = "global_topk (ours)" if kind.startswith("ours") else "list-and-partition (composable-sft)"
            lines.append(
                f"| {label} | {r['entries']:,} | {r['k']:,} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                f"{mib(r['extra_peak_bytes'])} |"
            )
    if "scatter" in parts and "skipped" not in parts["scatter"]:
        r = parts["scatter"]
        lines += [
            "",
            f"CUDA scatter-add of {r['k']:,} entries into {r['entries']:,}: {r['scatter_s'] * 1e3:.3f} ms, "
            f"{r['scatter_gbps']:.0f} GB/s effective vs copy {r['copy_gbps']:.0f} GB/s ({r['share']:.0%}).",
        ]
    return "\n".join(lines)


def verdicts(parts: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """``(target, measured, target value, passed)`` for every target whose part ran."""
    out: list[tuple[str, str, str, bool | None]] = []
    t = TARGETS
    if "memory" in parts:
        ours = parts["memory"]["rows"]["ours"]
        out.append(
            (
                "trainable state per selected entry (values + grads + AdamW moments)",
                f"{ours['state_per_entry_bytes']:.2f} B",
                f"<= {t['state_per_entry']:.1f} B",
                ours["state_per_entry_bytes"] <= t["state_per_entry"],
            )
        )
        ratio = parts["memory"]["ratio"]
        out.append(
            ("memory besides activations vs composable-sft", f"{ratio:.3f}x", f"<= {t['memory_ratio']}x", ratio <= 0.5)
        )
    if "step" in parts:
        r = parts["step"]["ratio"]
        out.append(("phase-2 step time vs composable-sft", f"{r:.3f}x", f"<= {t['step_ratio']}x", r <= 1.0))
    if "select" in parts:
        r = parts["select"]["ours"]
        out.append(("mask selection time", f"{r['seconds']:.2f} s", f"<= {t['select_s']} s", r["seconds"] <= 3.0))
        out.append(
            (
                "mask selection extra memory",
                f"{mib(r['extra_peak_bytes'])} MiB",
                "<= 1.5 GB",
                r["extra_peak_bytes"] <= t["select_extra_bytes"],
            )
        )
    if "apply" in parts:
        for name in ("apply", "revert"):
            sec = median_of(parts["apply"], name)
            out.append((f"{name} 5% diff", f"{sec * 1e3:.1f} ms", "<= 50 ms", sec <= t["apply_s"]))
        out.append(("revert bit-exact", str(parts["apply"]["bit_exact"]), "True", parts["apply"]["bit_exact"]))
    for batch, record in parts.get("forward", {}).get("batches", {}).items():
        applied = median_of(record, "diff applied")
        r = applied / median_of(record, "base")
        out.append((f"forward {batch}x128 with diff vs base", f"{r:.3f}x", "<= 1.02x", r <= t["forward_ratio"]))
        r = applied / median_of(record, "PEFT SHiRA")
        out.append((f"forward {batch}x128 with diff vs PEFT SHiRA", f"{r:.3f}x", "<= 1.0x", r <= t["vs_shira"]))
    if "scatter" in parts and "skipped" not in parts["scatter"]:
        share = parts["scatter"]["share"]
        out.append(("CUDA scatter-add vs copy bandwidth", f"{share:.0%}", ">= 60%", share >= t["scatter_share"]))
    return out


# -------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--rounds", type=int, default=None, help="clean timed rounds wanted (default 5; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=8, help="rows of the phase-2 step (default 8)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--select-entries", type=int, default=None, help="scores for mask selection (default 110M)")
    p.add_argument(
        "--peer-select-entries",
        type=int,
        default=None,
        help="scores for list-and-partition (default --select-entries)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-other-load", type=float, default=0.05)
    p.add_argument("--max-rounds", type=int, default=None, help="most rounds per timed part (default 3 x rounds)")
    p.add_argument("--quick", action="store_true", help="tiny host: a smoke run")
    p.add_argument("--out", type=Path, default=None, help="write every figure as JSON here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--settings-json", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load_average() -> str:
    """The 1-minute load average, or ``?``."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    """Runs the chosen parts (or one worker) and prints the markdown report."""
    args = parse_args(argv)
    if args.worker:
        settings = Settings(**json.loads(args.settings_json))
        settings = dataclasses.replace(settings, forward_batches=tuple(settings.forward_batches))
        mode, kind = args.worker.split(":")
        worker = memory_worker if mode == "memory" else select_worker
        print(json.dumps(worker(kind, settings)))
        return 0
    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; choose from {','.join(PARTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA device; none is visible")
    settings = Settings(
        host=dict(QUICK_HOST) if args.quick else {},
        device=args.device,
        density=0.05,
        train_batch=2 if args.quick else args.train_batch,
        seq=16 if args.quick else args.seq,
        forward_batches=(1, 32) if not args.quick else (1, 4),
        rounds=args.rounds or (2 if args.quick else 5),
        warmup=args.warmup,
        select_entries=args.select_entries or (2_000_000 if args.quick else 110_000_000),
        peer_select_entries=args.peer_select_entries
        or args.select_entries
        or (2_000_000 if args.quick else 110_000_000),
        threads=args.threads,
        seed=args.seed,
        max_other_load=args.max_other_load,
        max_rounds=args.max_rounds or 3 * (args.rounds or (2 if args.quick else 5)),
    )
    torch.set_num_threads(settings.threads)
    started, load_before = time.perf_counter(), load_average()
    runners = {
        "memory": part_memory,
        "select": part_select,
        "step": part_step,
        "apply": part_apply,
        "forward": part_forward,
        "scatter": part_scatter,
    }
    results = {}
    for name in PARTS:  # memory and selection first, while this process is small
        if name in parts:
            print(f"part {name} ...", file=sys.stderr, flush=True)
            results[name] = runners[name](settings)
    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    with torch.device("meta"):
        entries = sum(o * i for o, i in targeted(BertModel(BertConfig(**settings.host))).values())
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "peft": peft_version,
        "settings": dataclasses.asdict(settings),
        "entries": entries,
        "load_before": load_before,
        "load_after": load_average(),
        "parts": results,
        "verdicts": verdicts(results),
        "wall_s": time.perf_counter() - started,
    }
    if args.quick:
        print("Quick smoke run on a tiny host: the figures below say nothing about performance.\n")
    print(render(report))
    print(f"\nTotal wall time {report['wall_s']:.0f} s.")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
