"""Link prediction on PyKEEN's bundled benchmarks: a text-encoded adapter model against PyKEEN's TransE and RotatE.

Both sides get the same budget in epochs over the training triples and the same batch size, and
are scored by the same protocol: filtered tail ranking of the test triples among all entities with
PyKEEN's rank-based evaluator (realistic ranks). Ours is a TP adapter on the frozen encoder plus a
:class:`~.scoring.TextKGE` head (a PyKEEN interaction over encoded ``"(subject, relation)"`` queries
and encoded entity names, relation representations learned), trained with a PyKEEN loss over
in-batch and hard negatives; PyKEEN's models are trained by ``pykeen.pipeline`` (sLCWA, its
defaults otherwise).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from torch import nn

from ..model import AdaptedModel
from ..paths import cache_home
from ..training import TrainConfig, train
from .adapters import kg_adapter_config
from .datasets import KGDataset
from .evaluate import KGEScorer, link_prediction
from .objectives import ContrastiveCollate, triple_examples
from .scoring import TextKGE

__all__ = ["compare_with_pykeen", "pykeen_baseline", "train_text_kge"]

_PYKEEN_NAMES = {"nations": "Nations", "kinships": "Kinships", "umls": "UMLS"}


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
        The trained head (its encoder has the adapter ``tp`` active) and ``{"steps", "seconds"}``.
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
    return kge, {"steps": steps, "seconds": time.perf_counter() - started}


def pykeen_baseline(
    name: str, model: str, *, epochs: int, batch_size: int = 64, device: str = "cpu", seed: int = 0
) -> dict[str, Any]:
    """Trains a PyKEEN model on a bundled dataset with ``pykeen.pipeline`` and evaluates filtered tail ranking.

    Returns:
        ``{"mrr", "hits@1", "hits@3", "hits@10", "seconds"}`` (tail side, realistic ranks).
    """
    os.environ.setdefault("PYSTOW_HOME", str(cache_home("pystow")))
    import pykeen.datasets
    from pykeen.pipeline import pipeline

    dataset = getattr(pykeen.datasets, _PYKEEN_NAMES[name])()
    started = time.perf_counter()
    result = pipeline(
        dataset=dataset,
        model=model,
        training_kwargs={"num_epochs": epochs, "batch_size": batch_size, "use_tqdm": False},
        evaluation_kwargs={"use_tqdm": False},
        random_seed=seed,
        device=device,
    )
    seconds = time.perf_counter() - started
    metrics = result.metric_results
    return {
        "mrr": float(metrics.get_metric("tail.realistic.inverse_harmonic_mean_rank")),
        **{f"hits@{k}": float(metrics.get_metric(f"tail.realistic.hits_at_{k}")) for k in (1, 3, 10)},
        "seconds": seconds,
    }


def compare_with_pykeen(
    model: nn.Module,
    tokenizer: Any,
    kg: KGDataset,
    *,
    epochs: int,
    batch_size: int = 64,
    interaction: str = "transe",
    precision: str = "fp32",
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Ours (TP adapter + text-encoded ``interaction`` head) beside PyKEEN TransE and RotatE at the same epochs.

    Returns:
        System -> metrics (``mrr``, ``hits@k``, ``seconds``).
    """
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
    metrics = link_prediction(KGEScorer(kge, tokenizer), kg, "en")
    out[f"text-{interaction} (tp adapter)"] = {**metrics, **run}
    for baseline in ("TransE", "RotatE"):
        out[f"pykeen {baseline}"] = pykeen_baseline(
            kg.name, baseline, epochs=epochs, batch_size=batch_size, device=device, seed=seed
        )
    return out
