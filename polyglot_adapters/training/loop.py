"""The one training loop: AdamW, schedule, accumulation, clipping, bf16, evaluation, checkpoints, data parallel.

Determinism is by construction, so that a killed run resumes to the same result bit for bit:
the data order is a seeded permutation per epoch indexed by the global example position (itself
a function of the step counter), every example gets its own seed (for masking), and the global
RNG (dropout) is re-seeded from ``(seed, step, rank)`` at every step. A resume therefore needs
the trainable parameters, the AdamW state and the step, and nothing of an iterator's or a
generator's state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, CorruptArtifactError
from ..io import atomic_write_bytes, atomic_write_json, fingerprint_mismatch
from .checkpoint import find_checkpoint, read_checkpoint, write_checkpoint
from .config import TrainConfig

__all__ = ["Collate", "EvalFn", "LossFn", "SaveFn", "TrainResult", "train"]

Collate = Callable[[list[Any], list[int]], Any]
"""``(examples, seeds) -> batch``."""
LossFn = Callable[[nn.Module, Any], torch.Tensor]
"""``(model, batch) -> scalar loss`` (a mean over the batch's examples)."""
EvalFn = Callable[[nn.Module], dict[str, float]]
"""``model -> {metric: value}``."""
SaveFn = Callable[[nn.Module, Path], None]
"""``(model, directory) -> None``."""

_OPTIMIZER_KEYS = ("exp_avg", "exp_avg_sq", "step")


@dataclasses.dataclass
class TrainResult:
    """What a run did.

    Attributes:
        steps: Optimizer steps completed (``config.steps``).
        resumed_from: Step the run resumed from (0 for a fresh start).
        last_loss: Mean loss of the last step (``nan`` if the run resumed at its end).
        best: ``{"step": ..., best_metric: value}`` of the best evaluation so far (rank 0 only).
        metrics: Metrics of the last evaluation of this call, if any (rank 0 only).
    """

    steps: int
    resumed_from: int
    last_loss: float
    best: dict[str, float] | None
    metrics: dict[str, float] | None


@dataclasses.dataclass(frozen=True)
class _World:
    rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> _World:
        """Joins the process group ``torchrun`` describes (``WORLD_SIZE > 1``): gloo on CPU, NCCL on CUDA."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (FNV-1a style; stable across processes, runs and platforms)."""
    acc = 1469598103934665603
    for v in values:
        acc = ((acc ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return acc


_GROUP_WINDOW = 64
"""Batches per window that ``group_by_length`` sorts by length."""


class _Order:
    """Example index at each global position: a fresh permutation per epoch, seeded by ``(seed, epoch)``.

    With ``lengths`` (``group_by_length``) each epoch's permutation is arranged into batches of
    similar length: windows of ``_GROUP_WINDOW`` batches are sorted by length, cut into batches
    and the batches shuffled. Batch boundaries are the global ones (positions ``s * B``), so the
    few positions of an epoch that finish the previous epoch's last batch get its shortest examples.
    """

    def __init__(self, size: int, seed: int, *, lengths: torch.Tensor | None = None, batch_size: int = 1) -> None:
        self.size, self.seed, self.lengths, self.batch_size = size, seed, lengths, batch_size
        self._cache: dict[int, torch.Tensor] = {}

    def _epoch(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        order = torch.randperm(self.size, generator=generator)
        if self.lengths is None:
            return order
        b = self.batch_size
        windows = order.split(b * _GROUP_WINDOW)
        order = torch.cat([w[torch.argsort(self.lengths[w], descending=True, stable=True)] for w in windows])
        head = min((-epoch * self.size) % b, self.size)  # positions that complete the previous epoch's last batch
        body, shortest = order[: self.size - head], order[self.size - head :]
        full = body.numel() // b * b
        batches = body[:full].view(-1, b)[torch.randperm(full // b, generator=generator)]  # (full / b, b)
        return torch.cat([shortest, batches.reshape(-1), body[full:]])

    def at(self, positions: range) -> list[int]:
        out = []
        for p in positions:
            epoch, offset = divmod(p, self.size)
            if epoch not in self._cache:
                self._cache = {epoch: self._epoch(epoch)}
            out.append(int(self._cache[epoch][offset]))
        return out


def train(
    model: nn.Module,
    dataset: Sequence[Any],
    collate: Collate,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    eval_fn: EvalFn | None = None,
    save_fn: SaveFn | None = None,
    progress: bool = True,
    lengths: Sequence[int] | None = None,
) -> TrainResult:
    """Trains the parameters of ``model`` that have ``requires_grad`` (e.g. after ``am.train_adapters(...)``).

    Step ``s`` (0-based) uses the examples at global positions ``[s * B, (s + 1) * B)`` with
    ``B = config.batch_size``; position ``p`` maps to ``permutation(seed, p // len(dataset))[p %
    len(dataset)]`` (with ``group_by_length``, the permutation arranged into batches of similar
    length, see ``TrainConfig``). Each optimizer step runs ``grad_accumulation`` micro-batches of
    ``B / grad_accumulation`` examples; under ``torchrun`` each process takes the slice
    ``[rank * shard, (rank + 1) * shard)`` of every micro-batch and gradients are averaged over
    processes once per step (after the last micro-batch), so the result equals one process with
    the same ``batch_size`` up to float summation order.

    With ``out_dir``, the run writes ``out_dir/checkpoint`` every ``save_every`` steps and at
    the end, ``out_dir/metrics.jsonl``, and (with ``best_metric``) ``out_dir/best`` through
    ``save_fn`` plus ``out_dir/best.json``. If ``out_dir/checkpoint`` exists the run resumes from
    it exactly, provided it was written with the same config, parameters and base model.

    Args:
        model: The model (an ``AdaptedModel`` or any module); it is passed as is to ``loss_fn``,
            ``eval_fn`` and ``save_fn``. Its train/eval modes are restored at the end.
        dataset: Map-style examples (``len`` and integer indexing).
        collate: ``(examples, seeds) -> batch``; ``seeds[i]`` must seed any randomness for
            example ``i`` (e.g. masking), which keeps batches identical however they are sharded
            and resumed. Tensors in the batch (also inside dicts, lists and tuples) are moved to
            the device of the trainable parameters.
        loss_fn: ``(model, batch) -> scalar loss``, a mean over the batch's examples (so that
            shard and micro-batch means average to the global mean).
        config: The run's settings.
        out_dir: Where checkpoints, the metrics log and the best model go; ``None`` writes nothing.
        eval_fn: ``model -> metrics``, called on rank 0 under ``torch.no_grad`` in eval mode
            every ``eval_every`` steps and at the end.
        save_fn: Saves what should be kept when ``best_metric`` improves (e.g.
            ``lambda m, d: m.save_adapter("sw", d)``); called with ``out_dir / "best"``.
        progress: Show a progress bar (stderr, rank 0, only when stderr is a terminal).
        lengths: Each example's length (e.g. frames or tokens), for ``config.group_by_length``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: No trainable parameters, an empty dataset, ``group_by_length`` without one
            length per example, batch sizes that do not divide over the processes,
            ``best_metric`` missing from the metrics, or a checkpoint written with another
            config, other parameters or another base model.
        CorruptArtifactError: An unreadable or inconsistent checkpoint (never silently restarted).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError("the model has no trainable parameters; call train_adapters(...) first")
    if len(dataset) == 0:
        raise ConfigError("the training dataset is empty")
    if config.group_by_length and (lengths is None or len(lengths) != len(dataset)):
        got = "none" if lengths is None else str(len(lengths))
        raise ConfigError(f"group_by_length needs one length per example ({len(dataset)}), got {got}")
    device = next(iter(params.values())).device
    world = _World.from_env(device)
    micro = config.batch_size // config.grad_accumulation
    if micro % world.size:
        raise ConfigError(
            f"micro-batch {micro} (batch_size {config.batch_size} / grad_accumulation {config.grad_accumulation}) "
            f"is not divisible by {world.size} processes"
        )
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
    if out_dir is None:
        out_dir = config.out_dir  # the keyword argument overrides the config's field
    out = Path(out_dir) if out_dir is not None else None
    base = getattr(model, "base_fingerprint", None)

    start, best = 0, None
    found = find_checkpoint(out / "checkpoint") if out is not None else None
    if found is not None:
        start, best = _restore(found, params, optimizer, config, base)
    elif world.size > 1:
        with torch.no_grad():
            for p in params.values():
                dist.broadcast(p.data, src=0)
    log = out / "metrics.jsonl" if out is not None and world.rank == 0 else None
    if log is not None:
        _trim_log(log, start)

    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not progress or world.rank != 0 or not sys.stderr.isatty(),
        file=sys.stderr,
        desc="train",
        dynamic_ncols=True,
    )
    order = _Order(
        len(dataset),
        config.seed,
        lengths=torch.as_tensor(list(lengths)) if config.group_by_length else None,  # checked above
        batch_size=config.batch_size,
    )
    run = _Run(model, dataset, order, collate, loss_fn, config, params, optimizer, world, device, out, log, base, best)
    try:
        # The caller's RNG and module modes are left as they were.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _mode(model, training=True):
            run.loop(start, eval_fn, save_fn, bar)
    finally:
        bar.close()
    return TrainResult(
        steps=config.steps, resumed_from=start, last_loss=run.last_loss, best=run.best, metrics=run.metrics
    )


@dataclasses.dataclass
class _Run:
    """One call's fixed context and its running results."""

    model: nn.Module
    dataset: Sequence[Any]
    order: _Order
    collate: Collate
    loss_fn: LossFn
    config: TrainConfig
    params: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer
    world: _World
    device: torch.device
    out: Path | None
    log: Path | None
    base: Any
    best: dict[str, float] | None = None
    metrics: dict[str, float] | None = None
    last_loss: float = float("nan")

    def loop(self, start: int, eval_fn: EvalFn | None, save_fn: SaveFn | None, bar: tqdm) -> None:
        """Runs steps ``start .. config.steps - 1``."""
        config, world, device = self.config, self.world, self.device
        micro = config.batch_size // config.grad_accumulation
        shard = micro // world.size
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        trainable = list(self.params.values())
        clock, seen, tokens = time.perf_counter(), 0, 0
        for step in range(start, config.steps):
            lr = config.lr_at(step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            _seed_step(_mix(config.seed, step, world.rank), device)
            total = torch.zeros((), dtype=torch.float32, device=device)
            for m in range(config.grad_accumulation):
                first = step * config.batch_size + m * micro + world.rank * shard
                positions = range(first, first + shard)
                examples = [self.dataset[i] for i in self.order.at(positions)]
                batch = _to_device(self.collate(examples, [_mix(config.seed, p) for p in positions]), device)
                with autocast:
                    loss = self.loss_fn(self.model, batch)
                (loss / config.grad_accumulation).backward()
                total += loss.detach().float() / config.grad_accumulation
                seen += shard * world.size
                tokens += (_count_tokens(batch) or 0) * world.size
            if world.size > 1:
                _average_gradients(trainable, world.size)
                dist.all_reduce(total)
                total /= world.size
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.last_loss = float(total)
            done = step + 1
            elapsed = max(time.perf_counter() - clock, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{self.last_loss:.4f}", ex_s=f"{seen / elapsed:.1f}")
            if done % config.log_every == 0 or done == config.steps:
                record: dict[str, Any] = {"step": done, "loss": self.last_loss, "lr": lr}
                record["examples_per_s"] = seen / elapsed
                if tokens:
                    record["tokens_per_s"] = tokens / elapsed
                _append(self.log, record)
                clock, seen, tokens = time.perf_counter(), 0, 0
            if eval_fn is not None and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                if world.rank == 0:
                    self.metrics = _evaluate(self.model, eval_fn)
                    _append(self.log, {"step": done, **self.metrics})
                    self.best = _keep_best(self.model, self.metrics, self.best, done, config, self.out, save_fn)
            if self.out is not None and (
                (config.save_every and done % config.save_every == 0) or done == config.steps
            ):
                if world.rank == 0:
                    self._save(done)
                if world.size > 1:
                    dist.barrier()  # nobody runs ahead of a checkpoint it might have to resume from

    def _save(self, step: int) -> None:
        """Writes parameters (``param/<name>``), AdamW moments and step counts (``<key>/<name>``) and the meta."""
        if self.out is None:
            return
        tensors = {f"param/{n}": p.detach() for n, p in self.params.items()}
        for name, p in self.params.items():
            for key, value in self.optimizer.state.get(p, {}).items():
                if key in _OPTIMIZER_KEYS:
                    tensors[f"{key}/{name}"] = torch.as_tensor(value)
        meta = {
            "step": step,
            "config": self.config.to_dict(),
            "best": self.best,
            "params": list(self.params),
            "base": self.base,
            "world_size": self.world.size,
        }
        write_checkpoint(self.out / "checkpoint", tensors, meta)


def _seed_step(seed: int, device: torch.device) -> None:
    """Seeds the CPU generator and the training device's one (dropout, any ``torch.rand`` in the step)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Moves tensors in (nested) dicts, lists and tuples to ``device``; a no-op on CPU."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _count_tokens(batch: Any) -> int | None:
    if isinstance(batch, dict):
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        if "input_ids" in batch:
            return batch["input_ids"].numel()
    return None


@torch.no_grad()
def _average_gradients(params: list[nn.Parameter], size: int) -> None:
    """Averages gradients over processes: one all-reduce per (device, dtype) bucket.

    A gradient missing on some processes counts as zero there; one missing on every process
    stays ``None`` (as in a single process, AdamW then leaves that parameter alone).
    """
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(present)
    buckets: dict[tuple[torch.device, torch.dtype], list[nn.Parameter]] = {}
    for p, count in zip(params, present.tolist(), strict=True):
        if count:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            buckets.setdefault((p.device, p.grad.dtype), []).append(p)
        else:
            p.grad = None
    for group in buckets.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])  # (sum of numels,)
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for p in group:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Puts every module in eval mode and restores each one's own mode afterwards (even on error)."""
    return _mode(model, training=False)


@contextlib.contextmanager
def _mode(model: nn.Module, *, training: bool) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _evaluate(model: nn.Module, eval_fn: EvalFn) -> dict[str, float]:
    with eval_mode(model), torch.no_grad():
        return {k: float(v) for k, v in eval_fn(model).items()}


def _keep_best(
    model: nn.Module,
    metrics: dict[str, float],
    best: dict[str, float] | None,
    step: int,
    config: TrainConfig,
    out: Path | None,
    save_fn: SaveFn | None,
) -> dict[str, float] | None:
    """Saves the model to ``out/best`` and records ``out/best.json`` when ``best_metric`` improves."""
    name = config.best_metric
    if name is None:
        return best
    if name not in metrics:
        raise ConfigError(f"best_metric {name!r} is not among the evaluation metrics {sorted(metrics)}")
    value = metrics[name]
    better = best is None or (value < best[name] if config.best_mode == "min" else value > best[name])
    if not better:
        return best
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if save_fn is not None:
            save_fn(model, out / "best")
        doc = {"step": step, "metric": name, "mode": config.best_mode, "value": value, "metrics": metrics}
        atomic_write_json(out / "best.json", doc)
    return {"step": step, name: value}


def _append(log: Path | None, record: dict[str, Any]) -> None:
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def _trim_log(log: Path, start: int) -> None:
    """Drops records after step ``start`` (written after the checkpoint a resumed run starts from)."""
    if not log.exists():
        return
    keep = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= start:
            keep.append(line + "\n")
    atomic_write_bytes(log, "".join(keep).encode())


@torch.no_grad()
def _restore(
    directory: Path,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    base: Any,
) -> tuple[int, dict[str, float] | None]:
    """Loads a checkpoint into the parameters and the optimizer; checks everything before changing anything."""
    tensors, meta = read_checkpoint(directory)
    saved = meta.get("config")
    saved = {k: v for k, v in saved.items() if k != "out_dir"} if isinstance(saved, dict) else {}
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    if saved:  # a field added after the checkpoint was written reads as its default
        saved = {**{k: v for k, v in defaults.items() if k != "out_dir"}, **saved}
    if saved != config.resume_key():  # a moved run directory still resumes
        diff = sorted(
            k for k in config.resume_key().keys() | saved.keys() if saved.get(k) != config.resume_key().get(k)
        )
        raise ConfigError(
            f"{directory}: checkpoint was written with another training config (differs in {diff}); "
            "use another out_dir or delete the checkpoint"
        )
    if meta.get("params") != list(params):
        raise ConfigError(
            f"{directory}: checkpoint trains other parameters than this model; use another out_dir or delete it"
        )
    if isinstance(base, dict) and isinstance(meta.get("base"), dict):
        mismatch = fingerprint_mismatch(meta["base"], base)
        if mismatch is not None:
            raise ConfigError(
                f"{directory}: checkpoint was trained on another base model ({mismatch}); use another out_dir"
            )
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= config.steps:
        raise CorruptArtifactError(f"{directory}: step {step!r} is not in 0..{config.steps}; delete the checkpoint")
    best = meta.get("best")
    if best is not None and not (isinstance(best, dict) and config.best_metric in best):
        raise CorruptArtifactError(f"{directory}: malformed 'best' record {best!r}; delete the checkpoint")

    def expect(key: str, shape: torch.Size) -> torch.Tensor:
        value = tensors.get(key)
        if value is None or value.shape != shape or not value.dtype.is_floating_point:
            found = None if value is None else f"{tuple(value.shape)} {value.dtype}"
            raise CorruptArtifactError(
                f"{directory}: tensor {key} is {found}, expected {tuple(shape)} floating point; delete the checkpoint"
            )
        return value

    values, moments = {}, {}
    for i, (name, p) in enumerate(params.items()):
        values[name] = expect(f"param/{name}", p.shape)
        if any(f"{key}/{name}" in tensors for key in _OPTIMIZER_KEYS):  # no entry: never had a gradient
            moments[i] = {
                "exp_avg": expect(f"exp_avg/{name}", p.shape),
                "exp_avg_sq": expect(f"exp_avg_sq/{name}", p.shape),
                "step": expect(f"step/{name}", torch.Size([])),
            }
    for name, p in params.items():
        p.copy_(values[name])
    state_dict = optimizer.state_dict()
    state_dict["state"] = moments
    optimizer.load_state_dict(state_dict)
    return step, best
