"""The one training loop: AdamW, schedule, accumulation, clipping, bf16, evaluation, checkpoints, data parallel.

Determinism is by construction, so that a killed run resumes to the same result bit for bit:
the data order is a seeded permutation per epoch indexed by the step counter, every example gets
its own seed (for masking), and the global RNG (dropout) is re-seeded at every step. A resume
therefore needs only parameters, AdamW state and the step, nothing of the iterator's state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from .checkpoint import find_checkpoint, read_checkpoint, write_checkpoint
from .config import TrainConfig

__all__ = ["TrainResult", "train"]

Collate = Callable[[list[Any], list[int]], Any]
LossFn = Callable[[nn.Module, Any], torch.Tensor]


@dataclasses.dataclass
class TrainResult:
    """What a run did.

    Attributes:
        steps: Optimizer steps completed (``config.steps``).
        resumed_from: Step the run resumed from (0 for a fresh start).
        last_loss: Mean loss of the last step.
        best: ``{"step": ..., metric: value}`` of the best evaluation, if any.
        metrics: Metrics of the last evaluation, if any.
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
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size()) if size > 1 else cls()


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (stable across processes and runs)."""
    acc = 1469598103934665603
    for v in values:
        acc = ((acc ^ (v & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return acc


class _Order:
    """Example index at each global position: a fresh seeded permutation per epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self._cache = size, seed, {}

    def at(self, positions: range) -> list[int]:
        out = []
        for p in positions:
            epoch, offset = divmod(p, self.size)
            if epoch not in self._cache:
                self._cache = {
                    epoch: torch.randperm(self.size, generator=torch.Generator().manual_seed(_mix(self.seed, epoch)))
                }
            out.append(int(self._cache[epoch][offset]))
        return out


def _count_tokens(batch: Any) -> int | None:
    if isinstance(batch, dict):
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        if "input_ids" in batch:
            return batch["input_ids"].numel()
    return None


def train(
    model: nn.Module,
    dataset: Sequence[Any],
    collate: Collate,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    save_fn: Callable[[nn.Module, Path], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains the parameters of ``model`` that have ``requires_grad`` (e.g. after ``train_adapters``).

    Args:
        model: The model (an ``AdaptedModel`` or any module).
        dataset: Map-style examples.
        collate: ``(examples, seeds) -> batch``; ``seeds[i]`` seeds any randomness for example
            ``i`` (e.g. masking), which keeps batches identical however they are sharded.
        loss_fn: ``(model, batch) -> scalar loss``, a mean over the batch's examples.
        config: The run's settings.
        out_dir: Where checkpoints (``checkpoint/``), the best model (``best/``, via ``save_fn``)
            and ``metrics.jsonl`` go; a run resumes from ``out_dir/checkpoint`` if it exists.
        eval_fn: ``model -> metrics``, called under ``torch.no_grad`` in eval mode.
        save_fn: Saves what should be kept (e.g. ``lambda m, d: m.save_adapter("sw", d)``).
        progress: Show a progress bar on stderr (rank 0 only).

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process takes an equal shard of each
    micro-batch and gradients are averaged across processes before the step, so the result
    equals one process with the same ``batch_size`` (up to float summation order). Only rank 0
    evaluates and writes.

    Raises:
        ConfigError: No trainable parameters, indivisible batch sizes, or a checkpoint written
            with another config.
        CorruptArtifactError: An unreadable checkpoint (never silently restarted).
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ConfigError("the model has no trainable parameters; call train_adapters(...) first")
    if len(dataset) == 0:
        raise ConfigError("the training dataset is empty")
    device = next(iter(params.values())).device
    world = _World.from_env(device)
    micro = config.batch_size // config.grad_accumulation
    if micro % world.size:
        raise ConfigError(f"micro-batch {micro} is not divisible by {world.size} processes")
    shard = micro // world.size
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, weight_decay=config.weight_decay)
    out = Path(out_dir) if out_dir is not None else None

    start, best, metrics = 0, None, None
    found = find_checkpoint(out / "checkpoint") if out is not None else None
    if found is not None:
        start, best = _restore(found, params, optimizer, config)
    elif world.size > 1:
        with torch.no_grad():
            for p in params.values():
                dist.broadcast(p.data, src=0)
    order = _Order(len(dataset), config.seed)
    log = (out / "metrics.jsonl") if out is not None and world.rank == 0 else None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=config.steps,
        initial=start,
        disable=not progress or world.rank != 0 or not sys.stderr.isatty(),
        file=sys.stderr,
        desc="train",
    )
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    model.train()
    last_loss = float("nan")
    clock, seen, tokens = time.perf_counter(), 0, 0
    for step in range(start, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        torch.manual_seed(_mix(config.seed, step, world.rank))
        total = torch.zeros((), dtype=torch.float64)
        for m in range(config.grad_accumulation):
            first = step * config.batch_size + m * micro + world.rank * shard
            positions = range(first, first + shard)
            batch = collate([dataset[i] for i in order.at(positions)], [_mix(config.seed, p) for p in positions])
            with autocast:
                loss = loss_fn(model, batch)
            (loss / config.grad_accumulation).backward()
            total += loss.detach().double().cpu() / config.grad_accumulation
            seen += shard * world.size
            tokens += (_count_tokens(batch) or 0) * world.size
        if world.size > 1:
            _average_gradients(list(params.values()), world.size)
            dist.all_reduce(total)
            total /= world.size
        if config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = float(total)
        done = step + 1
        elapsed = max(time.perf_counter() - clock, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}", ex_s=f"{seen / elapsed:.1f}")
        record: dict[str, Any] = {"step": done, "loss": last_loss, "lr": config.lr_at(step)}
        if done % config.log_every == 0 or done == config.steps:
            record.update(examples_per_s=seen / elapsed, tokens_per_s=tokens / elapsed if tokens else None)
            clock, seen, tokens = time.perf_counter(), 0, 0
            _append(log, record)
        if eval_fn is not None and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
            if world.rank == 0:
                metrics = _evaluate(model, eval_fn)
                _append(log, {"step": done, **metrics})
                best = _keep_best(model, metrics, best, done, config, out, save_fn)
        if out is not None and ((config.save_every and done % config.save_every == 0) or done == config.steps):
            if world.rank == 0:
                _save(out / "checkpoint", params, optimizer, done, config, best)
            if world.size > 1:
                dist.barrier()
    bar.close()
    return TrainResult(steps=config.steps, resumed_from=start, last_loss=last_loss, best=best, metrics=metrics)


def _average_gradients(params: list[nn.Parameter], size: int) -> None:
    """All-reduces gradients as one flat buffer (a missing gradient counts as zero)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def _evaluate(model: nn.Module, eval_fn: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
    model.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in eval_fn(model).items()}
    finally:
        model.train()


def _keep_best(
    model: nn.Module,
    metrics: dict[str, float],
    best: dict[str, float] | None,
    step: int,
    config: TrainConfig,
    out: Path | None,
    save_fn: Callable[[nn.Module, Path], None] | None,
) -> dict[str, float] | None:
    name = config.best_metric
    if name is None:
        return best
    if name not in metrics:
        raise ConfigError(f"best_metric {name!r} is not among the evaluation metrics {sorted(metrics)}")
    value = metrics[name]
    better = best is None or (value < best[name] if config.best_mode == "min" else value > best[name])
    if not better:
        return best
    if out is not None and save_fn is not None:
        save_fn(model, out / "best")
    return {"step": step, name: value}


def _append(log: Path | None, record: dict[str, Any]) -> None:
    if log is not None:
        with log.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def _save(
    directory: Path,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
    best: dict[str, float] | None,
) -> None:
    tensors = {f"param/{n}": p.detach() for n, p in params.items()}
    for i, name in enumerate(params):
        state = optimizer.state.get(optimizer.param_groups[0]["params"][i], {})
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if key in state:
                tensors[f"{key}/{name}"] = torch.as_tensor(state[key])
    write_checkpoint(
        directory, tensors, {"step": step, "config": config.to_dict(), "best": best, "params": list(params)}
    )


@torch.no_grad()
def _restore(
    directory: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer, config: TrainConfig
) -> tuple[int, dict[str, float] | None]:
    tensors, meta = read_checkpoint(directory)
    if meta.get("config") != config.to_dict():
        saved = meta.get("config") or {}
        diff = sorted(k for k in config.to_dict() if saved.get(k) != getattr(config, k))
        raise ConfigError(
            f"{directory}: checkpoint was written with another training config (differs in {diff}); "
            "use another out_dir or delete the checkpoint"
        )
    if meta.get("params") != list(params):
        raise ConfigError(f"{directory}: checkpoint trains other parameters than this model; use another out_dir")
    for name, p in params.items():
        value = tensors.get(f"param/{name}")
        if value is None or value.shape != p.shape:
            raise ConfigError(f"{directory}: parameter {name} is missing or has another shape")
        p.copy_(value)
    state_dict = optimizer.state_dict()
    state_dict["state"] = {
        i: {key: tensors[f"{key}/{name}"] for key in ("step", "exp_avg", "exp_avg_sq")}
        for i, name in enumerate(params)
        if f"exp_avg/{name}" in tensors
    }
    optimizer.load_state_dict(state_dict)
    return int(meta["step"]), meta.get("best")
