"""Link prediction on PyKEEN's bundled benchmarks: a text-encoded adapter model against PyKEEN's TransE and RotatE.

Both sides get the same budget and batch size, and are scored by the same protocol: filtered tail
ranking of the test triples among all entities with PyKEEN's rank-based evaluator (realistic
ranks). Ours is a TP adapter on the frozen encoder plus a :class:`~.scoring.TextKGE` head (a
PyKEEN interaction over encoded ``"(subject, relation)"`` queries and encoded entity names,
relation representations learned), trained with a PyKEEN loss over in-batch and hard negatives;
PyKEEN's models are trained by ``pykeen.pipeline`` (sLCWA, its defaults otherwise).

The budget is either the same number of epochs over the training triples (``budget="epochs"``) or
the same training wall-clock time (``budget="time"``): ours trains for the given epochs first and
its training seconds become each PyKEEN model's allowance. PyKEEN's training loop is stopped by a
:class:`pykeen.stoppers.Stopper` (its public hook for ending training after an epoch, checked at
every epoch end) on a clock started by a :class:`pykeen.training.TrainingCallback` when the training
loop begins; it stops after the epoch whose end lies nearest the allowance (it stops once the time
used plus half the last epoch's duration reaches it), so the training time matches ours to within
about half an epoch, not by extrapolating from a probe epoch. Seconds are training seconds on both
sides (PyKEEN's ``train_seconds``; evaluation is timed separately).

PyKEEN 1.11.1 ships no tuned configurations for Nations, UMLS or Kinships (its bundled
``pykeen/experiments`` cover FB15k(-237), WN18(RR) and similar from the original papers), so
PyKEEN runs with its defaults.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..model import AdaptedModel
from ..paths import cache_home
from ..training import TrainConfig, train
from .adapters import kg_adapter_config
from .datasets import KGDataset
from .evaluate import KGEScorer, link_prediction
from .objectives import ContrastiveCollate, triple_examples
from .scoring import TextKGE

__all__ = ["BUDGETS", "compare_with_pykeen", "pykeen_baseline", "train_text_kge"]

#: Budget modes of :func:`compare_with_pykeen`.
BUDGETS = ("epochs", "time")

_PYKEEN_NAMES = {"nations": "Nations", "kinships": "Kinships", "umls": "UMLS"}
# Upper bound on PyKEEN epochs under a time budget; the stopper ends training long before.
_MAX_TIMED_EPOCHS = 1_000_000


def train_text_kge(
    model: nn.Module,
    tokenizer: Any,
    kg: KGDataset,
    *,
    epochs: int,
    batch_size: int = 64,
    interaction: str = "transe",
    loss: str = "crossentropy",
    lr: float = 1e-3,
    hard_negatives: int = 4,
    precision: str = "fp32",
    seed: int = 0,
) -> tuple[TextKGE, dict[str, Any]]:
    """Trains a TP adapter and a :class:`TextKGE` head on the ``en`` labels of ``kg``'s training triples.

    Returns:
        The trained head (its encoder has the adapter ``tp`` active) and ``{"epochs", "steps", "seconds"}``
        (training seconds).
    """
    am = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        am.add_adapter("tp", kg_adapter_config("tp"))
        kge = TextKGE(am, len(kg.relations), interaction=interaction, loss=loss)
    device = next(am.parameters()).device
    kge.to(device)
    am.set_active("tp")
    am.train_adapters("tp")
    kge.relations.requires_grad_(True)
    examples = triple_examples(kg, ["en"], known=kg.triples("train"))
    steps = max(1, math.ceil(epochs * len(examples) / batch_size))
    config = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=steps // 10, precision=precision)
    started = time.perf_counter()
    collate = ContrastiveCollate(tokenizer, hard_negatives=hard_negatives)
    train(kge, examples, collate, kge.loss_fn, config, progress=False)
    return kge, {"epochs": epochs, "steps": steps, "seconds": time.perf_counter() - started}


def _time_budget(seconds: float) -> tuple[Any, Any]:
    """A PyKEEN training callback (the clock) and a stopper ending training near ``seconds`` of training.

    Built here so that PyKEEN is imported only when a baseline runs.
    """
    from pykeen.stoppers import Stopper
    from pykeen.training import TrainingCallback

    class _Clock(TrainingCallback):
        """Starts when PyKEEN's training loop registers its callbacks, i.e. when training begins."""

        started: float | None = None

        def register_training_loop(self, training_loop: Any) -> None:
            super().register_training_loop(training_loop)
            self.started = time.perf_counter()

    class _TimeBudgetStopper(Stopper):
        """Stops after the epoch whose end is nearest ``seconds`` of training (the next epoch assumed as long)."""

        def __init__(self, clock: _Clock) -> None:
            super().__init__()
            self.clock = clock
            self.last_end: float | None = None
            self.stopped_at: int | None = None

        def should_evaluate(self, epoch: int) -> bool:
            return True

        def should_stop(self, epoch: int) -> bool:
            now = time.perf_counter()
            started = self.clock.started if self.clock.started is not None else now
            last_epoch = now - (self.last_end if self.last_end is not None else started)
            self.last_end = now
            if now - started + last_epoch / 2 >= seconds:
                self.stopped_at = epoch
                return True
            return False

        def get_summary_dict(self) -> Mapping[str, Any]:
            return {"budget_seconds": seconds, "stopped_at": self.stopped_at}

    clock = _Clock()
    return clock, _TimeBudgetStopper(clock)


def pykeen_baseline(
    name: str,
    model: str,
    *,
    epochs: int | None = None,
    train_seconds: float | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Trains a PyKEEN model on a bundled dataset with ``pykeen.pipeline`` and evaluates filtered tail ranking.

    Args:
        name: ``nations``, ``kinships`` or ``umls``.
        model: A PyKEEN model name (``TransE``, ``RotatE``, ...).
        epochs: Train for this many epochs.
        train_seconds: Instead, train until about this many seconds of training have passed (the epoch
            ending nearest the allowance is the last; at least one epoch).
        batch_size: Training batch size.
        device: Torch device.
        seed: PyKEEN's random seed.

    Returns:
        ``{"mrr", "hits@1", "hits@3", "hits@10", "epochs", "seconds", "eval_seconds"}`` (tail side,
        realistic ranks; ``seconds`` is training time), plus ``budget_seconds`` when ``train_seconds``
        is given.

    Raises:
        ConfigError: Unless exactly one of ``epochs`` and ``train_seconds`` is given, or one is not positive,
            or ``name`` is not a PyKEEN benchmark.
    """
    if (epochs is None) == (train_seconds is None):
        raise ConfigError("pykeen_baseline: give exactly one of epochs and train_seconds")
    if (epochs is not None and epochs < 1) or (train_seconds is not None and not train_seconds > 0):
        raise ConfigError(f"pykeen_baseline: budget must be positive (epochs={epochs}, train_seconds={train_seconds})")
    if name not in _PYKEEN_NAMES:
        raise ConfigError(f"pykeen_baseline: unknown dataset {name!r} (one of {', '.join(sorted(_PYKEEN_NAMES))})")
    os.environ.setdefault("PYSTOW_HOME", str(cache_home("pystow")))
    import pykeen.datasets
    from pykeen.pipeline import pipeline

    dataset = getattr(pykeen.datasets, _PYKEEN_NAMES[name])()
    training_kwargs: dict[str, Any] = {"batch_size": batch_size, "use_tqdm": False}
    timed: dict[str, Any] = {}
    if train_seconds is None:
        training_kwargs["num_epochs"] = epochs
    else:
        clock, stopper = _time_budget(train_seconds)
        training_kwargs.update(num_epochs=_MAX_TIMED_EPOCHS, callbacks=[clock])
        timed = {"stopper": stopper}
    result = pipeline(
        dataset=dataset,
        model=model,
        training_kwargs=training_kwargs,
        evaluation_kwargs={"use_tqdm": False},
        random_seed=seed,
        device=device,
        **timed,
    )
    metrics = result.metric_results
    out = {
        "mrr": float(metrics.get_metric("tail.realistic.inverse_harmonic_mean_rank")),
        **{f"hits@{k}": float(metrics.get_metric(f"tail.realistic.hits_at_{k}")) for k in (1, 3, 10)},
        "epochs": len(result.losses),
        "seconds": float(result.train_seconds),
        "eval_seconds": float(result.evaluate_seconds),
    }
    if train_seconds is not None:
        out["budget_seconds"] = float(train_seconds)
    return out


def compare_with_pykeen(
    model: nn.Module,
    tokenizer: Any,
    kg: KGDataset,
    *,
    epochs: int,
    budget: str = "epochs",
    batch_size: int = 64,
    interaction: str = "transe",
    precision: str = "fp32",
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Ours (TP adapter + text-encoded ``interaction`` head) beside PyKEEN TransE and RotatE on the same budget.

    Args:
        model: The frozen base encoder (or an :class:`AdaptedModel` of it).
        tokenizer: Its tokenizer.
        kg: A PyKEEN benchmark loaded by :func:`~.datasets.load_kg` (``nations``, ``kinships``, ``umls``).
        epochs: Our training epochs; PyKEEN's too when ``budget`` is ``"epochs"``.
        budget: ``"epochs"`` (every model trains ``epochs`` epochs) or ``"time"`` (ours trains ``epochs``
            epochs and each PyKEEN model trains for the same training seconds, as many epochs as fit).
        batch_size: Training batch size of every model.
        interaction: PyKEEN interaction of our head.
        precision: Our training precision.
        device: Torch device of PyKEEN's models.
        seed: Random seed of every model.

    Returns:
        System -> metrics (``mrr``, ``hits@k``, ``epochs``, ``seconds`` of training, ``eval_seconds``;
        PyKEEN's under a time budget also ``budget_seconds``).

    Raises:
        ConfigError: If ``budget`` is not one of :data:`BUDGETS` or ``epochs`` is below 1 (before any training).
    """
    if budget not in BUDGETS:
        raise ConfigError(f"compare_with_pykeen: budget {budget!r} is not one of {', '.join(BUDGETS)}")
    if epochs < 1:
        raise ConfigError(f"compare_with_pykeen: epochs must be at least 1, got {epochs}")
    if kg.name not in _PYKEEN_NAMES:
        raise ConfigError(f"compare_with_pykeen: {kg.name!r} is not a PyKEEN benchmark ({', '.join(_PYKEEN_NAMES)})")
    out: dict[str, dict[str, Any]] = {}
    kge, run = train_text_kge(
        model,
        tokenizer,
        kg,
        epochs=epochs,
        batch_size=batch_size,
        interaction=interaction,
        precision=precision,
        seed=seed,
    )
    kge.eval()
    started = time.perf_counter()
    metrics = link_prediction(KGEScorer(kge, tokenizer), kg, "en")
    out[f"text-{interaction} (tp adapter)"] = {**metrics, **run, "eval_seconds": time.perf_counter() - started}
    allowance = {"epochs": epochs} if budget == "epochs" else {"train_seconds": run["seconds"]}
    for baseline in ("TransE", "RotatE"):
        out[f"pykeen {baseline}"] = pykeen_baseline(
            kg.name, baseline, batch_size=batch_size, device=device, seed=seed, **allowance
        )
    return out
