"""Training configuration."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ..config import check
from ..errors import ConfigError

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What one training run does; part of every checkpoint, so a resume must use the same values.

    Attributes:
        steps: Optimizer steps.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warm-up from 0 to ``lr``.
        schedule: ``linear`` (decay to 0), ``cosine`` (to 0) or ``constant`` after warm-up.
        batch_size: Examples per optimizer step, over all processes and accumulation steps.
        grad_accumulation: Micro-batches per optimizer step.
        max_grad_norm: Gradient clipping norm, or ``None``.
        precision: ``fp32`` or ``bf16`` (autocast around forward and loss).
        eval_every: Evaluate every N steps (0: only at the end, if an eval function is given).
        save_every: Write a resumable checkpoint every N steps (0: never).
        best_metric: Evaluation metric that selects the best checkpoint, or ``None``.
        best_mode: ``min`` or ``max`` for ``best_metric``.
        seed: Seeds data order, per-step randomness (masking, dropout) and nothing else.
        log_every: Write a metrics line every N steps.
    """

    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "linear"
    batch_size: int = 8
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    eval_every: int = 0
    save_every: int = 0
    best_metric: str | None = None
    best_mode: str = "min"
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        def count(name: str, minimum: int) -> None:
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                f"{name} must be an integer >= {minimum}, got {value!r}",
            )

        count("steps", 1)
        count("warmup_steps", 0)
        count("batch_size", 1)
        count("grad_accumulation", 1)
        count("eval_every", 0)
        count("save_every", 0)
        count("log_every", 1)
        count("seed", 0)
        check(isinstance(self.lr, int | float) and self.lr > 0, f"lr must be positive, got {self.lr!r}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        check(self.schedule in ("linear", "cosine", "constant"), f"unknown schedule {self.schedule!r}")
        check(self.precision in ("fp32", "bf16"), f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        check(self.best_mode in ("min", "max"), f"best_mode must be 'min' or 'max', got {self.best_mode!r}")
        check(
            self.max_grad_norm is None or (isinstance(self.max_grad_norm, int | float) and self.max_grad_norm > 0),
            f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}",
        )
        check(
            self.batch_size % self.grad_accumulation == 0,
            f"batch_size {self.batch_size} is not divisible by grad_accumulation {self.grad_accumulation}",
        )

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "linear":
            return self.lr * (1.0 - progress)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: On unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"invalid training config: {err}") from None
