"""Training configuration: a frozen, validated dataclass with a JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from ..config import check
from ..errors import ConfigError

__all__ = ["TrainConfig"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What one training run does; part of every checkpoint, so a resume must use the same values.

    Where the run writes (``out_dir``) is recorded but is not part of the resume check, so a run
    directory can be moved or copied and still resume; ``train(..., out_dir=...)`` overrides it.

    Attributes:
        steps: Optimizer steps.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW (decoupled) weight decay.
        warmup_steps: Linear warm-up from ``lr / warmup_steps`` to ``lr`` over the first steps.
        schedule: After warm-up: ``linear`` (decay to 0), ``cosine`` (to 0) or ``constant``.
        batch_size: Examples per optimizer step, over all processes and accumulation steps.
        grad_accumulation: Micro-batches per optimizer step (must divide ``batch_size``).
        group_by_length: Batch examples of similar length (``train(..., lengths=...)``): each
            epoch is still a fresh random order of every example, but windows of 64 batches are
            sorted by length before they are cut into batches, and the batches are shuffled, so
            little of a padded batch is padding.
        max_grad_norm: Gradient clipping norm (global, after averaging), or ``None``.
        precision: ``fp32`` or ``bf16`` (autocast around forward and loss; parameters and
            optimizer state stay in their own dtype).
        eval_every: Evaluate every N steps (0: only at the end, if an eval function is given).
        save_every: Write a resumable checkpoint every N steps (0: only at the end).
        best_metric: Evaluation metric that selects the best model (e.g. ``valid_loss``), or ``None``.
        best_mode: ``min`` or ``max`` for ``best_metric``.
        seed: Seeds data order, per-example randomness (masking) and per-step randomness (dropout).
        log_every: Write a metrics line every N steps.
        out_dir: Where ``checkpoint/``, ``best/``, ``best.json`` and ``metrics.jsonl`` go, or
            ``None`` for a run that writes nothing. It is not part of the resume check, so a
            run directory can be moved and resumed.
    """

    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "linear"
    batch_size: int = 8
    grad_accumulation: int = 1
    group_by_length: bool = False
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"
    eval_every: int = 0
    save_every: int = 0
    best_metric: str | None = None
    best_mode: str = "min"
    seed: int = 0
    log_every: int = 10
    out_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.out_dir, os.PathLike):
            object.__setattr__(self, "out_dir", os.fspath(self.out_dir))
        check(
            self.out_dir is None or (isinstance(self.out_dir, str) and self.out_dir != ""),
            f"out_dir must be a non-empty path or None, got {self.out_dir!r}",
        )

        def count(name: str, minimum: int) -> None:
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                f"{name} must be an integer >= {minimum}, got {value!r}",
            )

        def number(name: str, *, zero_ok: bool, none_ok: bool = False) -> None:
            value = getattr(self, name)
            if value is None and none_ok:
                return
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            check(
                ok and (value >= 0 if zero_ok else value > 0),
                f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'}"
                f"{' or None' if none_ok else ''}, got {value!r}",
            )

        count("steps", 1)
        count("warmup_steps", 0)
        count("batch_size", 1)
        count("grad_accumulation", 1)
        count("eval_every", 0)
        count("save_every", 0)
        count("log_every", 1)
        count("seed", 0)
        number("lr", zero_ok=False)
        number("weight_decay", zero_ok=True)
        number("max_grad_norm", zero_ok=False, none_ok=True)
        check(
            self.schedule in ("linear", "cosine", "constant"),
            f"schedule must be 'linear', 'cosine' or 'constant', got {self.schedule!r}",
        )
        check(isinstance(self.group_by_length, bool), f"group_by_length must be a bool, got {self.group_by_length!r}")
        check(self.precision in ("fp32", "bf16"), f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        check(self.best_mode in ("min", "max"), f"best_mode must be 'min' or 'max', got {self.best_mode!r}")
        check(
            self.best_metric is None or (isinstance(self.best_metric, str) and bool(self.best_metric)),
            f"best_metric must be a metric name or None, got {self.best_metric!r}",
        )
        check(
            self.warmup_steps <= self.steps,
            f"warmup_steps {self.warmup_steps} exceeds steps {self.steps}",
        )
        check(
            self.batch_size % self.grad_accumulation == 0,
            f"batch_size {self.batch_size} is not divisible by grad_accumulation {self.grad_accumulation}",
        )

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based); the schedule is a pure function of it."""
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

    def resume_key(self) -> dict[str, Any]:
        """The fields a checkpoint must agree on to be resumed (all but ``out_dir``)."""
        return {k: v for k, v in self.to_dict().items() if k != "out_dir"}

    def to_json(self) -> str:
        """The config as a JSON object (``from_json`` inverts it)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """Inverse of :meth:`to_json`.

        Raises:
            ConfigError: On malformed JSON, unknown keys or invalid values.
        """
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ConfigError(f"training config is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError("training config JSON must be an object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: On a non-mapping, unknown or missing keys, or invalid values.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a training config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}; known: {sorted(names)}")
        try:
            return cls(**data)
        except TypeError as err:
            raise ConfigError(f"invalid training config: {err}") from None
