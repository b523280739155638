"""Sizing a run to a time budget: how many optimizer steps fit in so many seconds on this machine."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..training.config import TrainConfig
from ..training.loop import Collate, LossFn, train

__all__ = ["fit_to_steps", "steps_within"]


def steps_within(
    seconds: float,
    model: nn.Module,
    dataset: Sequence[Any],
    collate: Collate,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    trial_steps: int = 8,
) -> int:
    """Optimizer steps of ``config``'s batch shape that fit in ``seconds``, from a timed trial.

    Runs two warm-up steps and ``trial_steps`` timed steps of the real loop (no files written),
    then restores the trainable parameters, so the model is as it was. Evaluation time is not
    included.

    Returns:
        At least 1.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in params.items()}
    trial = dataclasses.replace(
        config, warmup_steps=0, eval_every=0, save_every=0, best_metric=None, out_dir=None, log_every=1
    )
    try:
        train(model, dataset, collate, loss_fn, dataclasses.replace(trial, steps=2), progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        train(model, dataset, collate, loss_fn, dataclasses.replace(trial, steps=trial_steps), progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - started) / trial_steps
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
    return max(1, int(seconds / per_step))


def fit_to_steps(config: TrainConfig, steps: int) -> TrainConfig:
    """``config`` with ``steps`` steps: 10% warm-up (if it had any), evaluation and saving every quarter."""
    quarter = max(1, steps // 4)
    return dataclasses.replace(
        config,
        steps=steps,
        warmup_steps=steps // 10 if config.warmup_steps else 0,
        eval_every=quarter if config.eval_every else 0,
        save_every=quarter if config.save_every else 0,
    )
