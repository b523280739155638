"""Code search: natural-language docstring to function retrieval with an (adapted) code encoder.

A bi-encoder: the query (a docstring's first paragraph) and the code (the function without its
docstring) are encoded by the same encoder, mean-pooled over tokens and L2-normalised; training
minimises the symmetric in-batch contrastive loss (InfoNCE) and evaluation ranks every held-out
function for every query (mean reciprocal rank over all test functions).

Setups compared by :func:`train_code_search` (``setup``): ``zero-shot`` (the encoder as is),
``full`` (every encoder parameter trained), ``task`` (a task adapter alone), ``ner+task`` (the
frozen NER adapter with a task adapter stacked on top, :class:`~polyglot_adapters.Stack`) and
``gate`` (NER and task adapters mixed by a learned per-token gate, :class:`~polyglot_adapters.Gate`;
``ner_prior`` sets the NER branch's starting weight, uniform by default).
With ``ner_sides="code"`` the NER adapter sees only the code; queries (natural language, which has
no code token types) go through the task adapter alone. With ``tune_ner`` the NER adapter is
trained too, starting from its token-type weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.nn import functional as F

from ..composition import Composition, Gate, Stack
from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_json
from ..methods.bottleneck import BottleneckConfig
from ..model import AdaptedModel
from ..training.config import TrainConfig
from ..training.loop import eval_mode, train
from .budget import fit_to_steps, steps_within
from .corpus import CodeCorpus, CodeFunction
from .ttc import backbone, encoder_parameters

__all__ = [
    "SETUPS",
    "CodeSearchEval",
    "SearchEncoder",
    "contrastive_loss",
    "encode_pairs",
    "gate_mixture",
    "metrics_from_ranks",
    "search_metrics",
    "search_ranks",
    "task_adapter_config",
    "train_code_search",
]

SETUPS = ("zero-shot", "full", "task", "ner+task", "gate")
_BEST_NAME = "trainable.safetensors"
RANKS_NAME = "ranks.safetensors"


def task_adapter_config(*, reduction_factor: float = 16.0) -> BottleneckConfig:
    """The task adapter: MAD-X's task adapter (series after the feed-forward sub-layer)."""
    return BottleneckConfig.task(reduction_factor=reduction_factor)


class SearchEncoder(nn.Module):
    """Mean-pooled, L2-normalised embeddings from an (adapted) encoder; a learned temperature-free scorer.

    Args:
        adapted: The encoder, with adapters and the active composition set on it.
        temperature: Softmax temperature of the contrastive loss.
        query_composition: Composition for the query side (``None``: the active one, as for code).
    """

    def __init__(
        self, adapted: AdaptedModel, temperature: float = 0.05, *, query_composition: Composition | None = None
    ) -> None:
        super().__init__()
        self.adapted = adapted
        self.temperature = temperature
        self.query_composition = query_composition

    @property
    def base_fingerprint(self) -> dict[str, Any]:
        """The encoder's fingerprint (checkpoints record it)."""
        return self.adapted.base_fingerprint

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, side: str = "code") -> torch.Tensor:
        """Embeds texts.

        Args:
            input_ids: ``(B, T)`` ids.
            attention_mask: ``(B, T)``, 1 on real tokens.
            side: ``code`` or ``query`` (which composition encodes them).

        Returns:
            ``(B, D)`` unit vectors (mean over real tokens).
        """
        if side not in ("code", "query"):
            raise ConfigError(f"side must be 'code' or 'query', got {side!r}")
        encoder = backbone(self.adapted)
        if side == "code" or self.query_composition is None:
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:
            code_composition = self.adapted.active
            self.adapted.set_active(self.query_composition)
            try:
                hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            finally:
                self.adapted.set_active(code_composition)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B, D)
        return F.normalize(pooled.float(), dim=-1)


def encode_pairs(
    functions: list[CodeFunction], tokenizer: Any, *, query_length: int = 64, code_length: int = 256
) -> list[tuple[list[int], list[int]]]:
    """Token ids of each function's query and code (``<s> ... </s>``, truncated)."""
    if not functions:
        return []
    queries = tokenizer([f.query for f in functions], truncation=True, max_length=query_length, verbose=False)
    codes = tokenizer([f.code for f in functions], truncation=True, max_length=code_length, verbose=False)
    return list(zip(queries["input_ids"], codes["input_ids"], strict=True))


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def _collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    q_ids, q_mask = _pad([q for q, _ in pairs], pad_id)
    c_ids, c_mask = _pad([c for _, c in pairs], pad_id)
    return {"query_ids": q_ids, "query_mask": q_mask, "code_ids": c_ids, "code_mask": c_mask}


def contrastive_loss(model: SearchEncoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives: query to code and code to query, averaged."""
    queries = model(batch["query_ids"], batch["query_mask"], side="query")  # (B, D)
    codes = model(batch["code_ids"], batch["code_mask"])  # (B, D)
    logits = queries @ codes.T / model.temperature  # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def search_ranks(queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Rank of each query's answer among all codes (query ``i``'s answer is code ``i``).

    Args:
        queries: ``(N, D)`` unit vectors.
        codes: ``(N, D)`` unit vectors.

    Returns:
        ``(N,)`` int64 ranks from 1; ties are counted in the answer's favour.
    """
    scores = queries @ codes.T  # (N, N)
    correct = scores.diag().unsqueeze(1)  # (N, 1)
    return (scores > correct).sum(1) + 1


def search_metrics(queries: torch.Tensor, codes: torch.Tensor) -> dict[str, float]:
    """MRR and recall@1/5/10 of ranking all codes for each query (see :func:`search_ranks`).

    Args:
        queries: ``(N, D)`` unit vectors.
        codes: ``(N, D)`` unit vectors.
    """
    return metrics_from_ranks(search_ranks(queries, codes))


def metrics_from_ranks(ranks: torch.Tensor) -> dict[str, float]:
    """MRR and recall@1/5/10 from ``(N,)`` ranks over ``N`` candidates."""
    return {
        "mrr": float((1.0 / ranks.double()).mean()),
        "recall@1": float((ranks <= 1).double().mean()),
        "recall@5": float((ranks <= 5).double().mean()),
        "recall@10": float((ranks <= 10).double().mean()),
        "candidates": len(ranks),
    }


class CodeSearchEval:
    """Held-out retrieval over a fixed set of functions (every query against every function).

    Args:
        pairs: ``(query ids, code ids)`` from :func:`encode_pairs`.
        pad_id: Padding id.
        prefix: Metric name prefix.
        batch_size: Texts per forward pass.
    """

    def __init__(self, pairs: list[tuple[list[int], list[int]]], pad_id: int, *, prefix: str, batch_size: int = 64):
        if not pairs:
            raise ConfigError(f"the {prefix} split has no documented functions")
        self.pairs, self.pad_id, self.prefix, self.batch_size = pairs, pad_id, prefix, batch_size

    @property
    def digest(self) -> str:
        """SHA-256 of the held-out token ids: runs are comparable query by query only when it matches."""
        hasher = hashlib.sha256()
        for query, code in self.pairs:
            hasher.update(json.dumps([query, code]).encode())
        return hasher.hexdigest()

    def scores(self, model: SearchEncoder) -> dict[str, float]:
        """MRR and recall@k, in eval mode (modes restored)."""
        return metrics_from_ranks(self.ranks(model))

    def batches(self, side: str) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Yields ``(positions, ids, mask)`` of one side's texts, length-sorted so batches carry little padding.

        Args:
            side: ``query`` or ``code``.
        """
        rows = [p[0 if side == "query" else 1] for p in self.pairs]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for i in range(0, len(rows), self.batch_size):
            chunk = order[i : i + self.batch_size]
            ids, mask = _pad([rows[j] for j in chunk], self.pad_id)  # (B, T) each
            yield chunk, ids, mask

    @torch.no_grad()
    def ranks(self, model: SearchEncoder) -> torch.Tensor:
        """``(N,)`` rank of each query's function among all ``N``, in eval mode (modes restored)."""
        device = next(model.parameters()).device
        with eval_mode(model):
            embedded = []
            for side in ("query", "code"):
                out = torch.empty(len(self.pairs), model.adapted.model.config.hidden_size)
                for chunk, ids, mask in self.batches(side):
                    out[chunk] = model(ids.to(device), mask.to(device), side=side).float().cpu()
                embedded.append(out)
        return search_ranks(*embedded)

    def __call__(self, model: SearchEncoder) -> dict[str, float]:
        """``{prefix}_mrr`` (the loop's evaluation function)."""
        return {f"{self.prefix}_mrr": self.scores(model)["mrr"]}


@torch.no_grad()
def gate_mixture(model: SearchEncoder, held_out: CodeSearchEval, *, gate: str, side: str = "code") -> dict[str, Any]:
    """Mean weight a gate gives each branch, per site, over one side's real (non-padding) held-out tokens.

    Args:
        model: The search encoder, its active composition holding the gate.
        held_out: The texts to read.
        gate: The gate's name (:class:`~polyglot_adapters.Gate` ``name``).
        side: ``code`` or ``query``.

    Returns:
        ``{"sites": {site key: [weight per branch]}, "mean": [weight per branch]}`` (the mean over sites).

    Raises:
        ConfigError: No site holds the gate, or the side's composition never reads it.
    """
    layers = model.adapted.gate_layers(gate)
    if not layers:
        raise ConfigError(f"no site holds a gate named {gate!r}")
    sums: dict[str, torch.Tensor] = {}
    tokens: dict[str, float] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(key: str) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(module: nn.Module, inputs: Any, weights: torch.Tensor) -> None:
            mask = current["mask"].to(weights.device, torch.float32).unsqueeze(-1)  # (B, T, 1)
            sums[key] = sums.get(key, 0) + (weights.float() * mask).sum((0, 1))  # (k,)
            tokens[key] = tokens.get(key, 0.0) + float(mask.sum())

        return record

    handles = [m.register_forward_hook(hook(key)) for key, m in layers.items()]
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            for _, ids, mask in held_out.batches(side):
                current["mask"] = mask
                model(ids.to(device), mask.to(device), side=side)
    finally:
        for handle in handles:
            handle.remove()
    if not sums:
        raise ConfigError(f"the {side} side's composition does not read the gate {gate!r}")
    sites = {key: (sums[key] / tokens[key]).tolist() for key in sorted(sums)}
    mean = torch.tensor(list(sites.values())).mean(0).tolist()
    return {"sites": sites, "mean": mean}


def train_code_search(
    model: nn.Module,
    tokenizer: Any,
    corpus: CodeCorpus,
    *,
    setup: str,
    out_dir: str | os.PathLike[str],
    ner_adapter: str | os.PathLike[str] | None = None,
    ner_sides: str = "both",
    ner_layers: Sequence[int] | None = None,
    tune_ner: bool = False,
    ner_prior: float | None = None,
    config: BottleneckConfig | None = None,
    train_config: TrainConfig | None = None,
    query_length: int = 64,
    code_length: int = 256,
    max_train: int | None = None,
    budget_seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Trains (or, for ``zero-shot``, only evaluates) one code-search setup; writes ``OUT/report.json``.

    Args:
        model: A transformers encoder or masked-LM (its ``base_model`` is used); ``full`` trains
            it in place, the other setups leave it frozen.
        tokenizer: Its tokenizer.
        corpus: The code corpus: ``train`` functions for training, ``valid`` to pick the best
            step, ``test`` for the reported MRR over all test functions.
        setup: One of :data:`SETUPS`.
        out_dir: Run directory: the loop's checkpoint and metrics, ``best/`` (trainable
            parameters of the step best on ``valid``), ``adapters/NAME/`` (trained adapters, gates
            excluded), ``report.json`` and ``ranks.safetensors`` (each held-out query's rank, for
            paired comparisons: :func:`~polyglot_adapters.code.report.compare_runs`).
        ner_adapter: A directory written by :func:`~polyglot_adapters.code.train_ner_adapter`
            (its ``adapter/``), needed by ``ner+task`` and ``gate``.
        ner_sides: ``both`` (queries and code go through the NER adapter) or ``code`` (queries
            through the task adapter alone).
        ner_layers: Blocks of the NER adapter to use (e.g. the lower half: token types as
            features for the upper blocks, which keep their own representations); ``None`` for all.
        tune_ner: Train the NER adapter as well (from its token-type weights) instead of freezing it.
        ner_prior: ``gate`` only: the gate's starting weight on the NER branch (the task branch gets
            the rest); a small one starts training from (nearly) the task adapter alone. ``None``
            for uniform (0.5).
        config: The task adapter; default :func:`task_adapter_config`.
        train_config: Loop settings; ``best_metric`` becomes ``valid_mrr``.
        query_length: Query tokens kept.
        code_length: Code tokens kept.
        max_train: Use at most this many training functions (the first ones), ``None`` for all.
        budget_seconds: Replace ``train_config.steps`` by the steps that fit in this many
            seconds of training on this machine (timed trial).
        log: Receives progress lines.

    Returns:
        The report: valid/test MRR and recall@k, trainable parameters and their share of full
        fine-tuning's.

    Raises:
        ConfigError: Unknown setup, a missing NER adapter, a bad ``ner_prior``, or a split without
            documented functions.
    """
    if setup not in SETUPS:
        raise ConfigError(f"unknown code-search setup {setup!r}; setups: {', '.join(SETUPS)}")
    if ner_sides not in ("both", "code"):
        raise ConfigError(f"ner_sides must be 'both' or 'code', got {ner_sides!r}")
    uses_ner = setup in ("ner+task", "gate")
    if ner_prior is not None and (setup != "gate" or not 0 < ner_prior < 1):
        raise ConfigError(f"ner_prior must be in (0, 1) and needs setup 'gate', got {ner_prior!r} with {setup!r}")
    if uses_ner and ner_adapter is None:
        raise ConfigError(f"setup {setup!r} needs ner_adapter: the adapter directory that train_ner_adapter wrote")
    say = log or (lambda _: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    am = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    full_params = encoder_parameters(am)
    train_config = train_config if train_config is not None else TrainConfig(steps=300, lr=1e-3, batch_size=32)
    train_config = dataclasses.replace(train_config, best_metric="valid_mrr", best_mode="max", out_dir=str(out))
    config = config if config is not None else task_adapter_config()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.sep_token_id
    lengths = dict(query_length=query_length, code_length=code_length)
    train_pairs = encode_pairs(corpus.functions("train"), tokenizer, **lengths)[:max_train]
    held_out = {
        s: CodeSearchEval(encode_pairs(corpus.functions(s), tokenizer, **lengths), pad, prefix=s)
        for s in ("valid", "test")
    }
    if setup != "zero-shot" and not train_pairs:
        raise ConfigError("the train split has no documented functions")

    trained: list[str] = []
    if uses_ner:
        am.load_adapter(ner_adapter, name="ner", layers=ner_layers)
    if setup in ("task", "ner+task", "gate"):
        with torch.random.fork_rng():
            torch.manual_seed(train_config.seed)
            am.add_adapter("task", config)
        am.to(next(am.model.parameters()).device)
    prior = (ner_prior, 1 - ner_prior) if ner_prior is not None else None
    composition = {
        "task": "task",
        "ner+task": Stack("ner", "task"),
        "gate": Gate("ner", "task", name="mix", prior=prior),
    }
    am.set_active(composition.get(setup))
    if setup == "task" or setup == "ner+task":
        trained = ["task"]
    elif setup == "gate":
        trained = ["task", "mix"]
    if tune_ner and uses_ner:
        trained.append("ner")
    if trained:
        am.train_adapters(*trained)
    else:
        am.requires_grad_(False)
        if setup == "full":  # the encoder only: the masked-LM head plays no part in search
            backbone(am).requires_grad_(True)
    query_side = "task" if ner_sides == "code" and uses_ner else None
    encoder = SearchEncoder(am, query_composition=query_side)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    say(
        f"code search ({setup}): {len(train_pairs)} training pairs, {len(held_out['test'].pairs)} test functions; "
        f"trainable {trainable:,} ({100 * trainable / full_params:.2f}% of full fine-tuning's {full_params:,})"
    )

    def save(m: SearchEncoder, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().cpu().contiguous() for n, p in m.named_parameters() if p.requires_grad}
        atomic_write_bytes(directory / _BEST_NAME, st_save(tensors))

    seconds, result = 0.0, None
    if setup != "zero-shot":
        started = time.perf_counter()

        def evaluate(m: SearchEncoder) -> dict[str, float]:
            metrics = held_out["valid"](m)
            say(f"valid MRR {metrics['valid_mrr']:.4f}")
            return metrics

        def collate(pairs: list[tuple[list[int], list[int]]], seeds: list[int]) -> dict[str, torch.Tensor]:
            return _collate(pairs, pad)

        if budget_seconds is not None:
            steps = steps_within(budget_seconds, encoder, train_pairs, collate, contrastive_loss, train_config)
            train_config = fit_to_steps(train_config, steps)
            say(f"{steps} steps fit in {budget_seconds:g} s")
        result = train(
            encoder,
            train_pairs,
            collate,
            contrastive_loss,
            train_config,
            eval_fn=evaluate,
            save_fn=save,
        )
        seconds = time.perf_counter() - started
        best = out / "best" / _BEST_NAME
        if result.best is not None and best.is_file():  # the step best on valid
            state = st_load(best.read_bytes())
            with torch.no_grad():
                for n, p in encoder.named_parameters():
                    if n in state:
                        p.copy_(state[n])
    if trained:
        for name in trained:
            if name in am.adapters:
                am.save_adapter(name, out / "adapters" / name)
    ranks = {split: batches.ranks(encoder) for split, batches in held_out.items()}
    scores = {split: metrics_from_ranks(r) for split, r in ranks.items()}
    digests = {split: batches.digest for split, batches in held_out.items()}
    mixture = None
    if setup == "gate":
        sides = ("code",) if query_side is not None else ("query", "code")
        mixture = {s: gate_mixture(encoder, held_out["test"], gate="mix", side=s) for s in sides}
        for s, m in mixture.items():
            per_site = [w[0] for w in m["sites"].values()]
            say(
                f"gate: mean weight on the NER branch over test {s} tokens {m['mean'][0]:.3f} "
                f"(sites {min(per_site):.3f}-{max(per_site):.3f})"
            )
    atomic_write_bytes(out / RANKS_NAME, st_save(ranks, metadata={f"{s}_digest": d for s, d in digests.items()}))
    report = {
        "schema": "polyglot-adapters/code-search-report",
        "version": 1,
        "setup": setup,
        "trainable_parameters": trainable,
        "full_fine_tuning_parameters": full_params,
        "percent_of_full": 100 * trainable / full_params,
        "train_pairs": len(train_pairs),
        "train_config": train_config.to_dict() if setup != "zero-shot" else None,
        "task_adapter": config.to_dict() if trained else None,
        "query_length": query_length,
        "code_length": code_length,
        "ner_adapter": str(ner_adapter) if ner_adapter is not None else None,
        "ner_sides": ner_sides if uses_ner else None,
        "ner_layers": sorted(set(ner_layers)) if ner_layers is not None and uses_ner else None,
        "tune_ner": tune_ner and uses_ner,
        "ner_prior": ner_prior,
        "seconds": seconds,
        "best": result.best if result is not None else None,
        "device": str(next(am.model.parameters()).device),
        "digests": digests,
        "gate_mixture": mixture,
        **scores,
    }
    atomic_write_json(out / "report.json", report)
    say(f"{setup}: test MRR {scores['test']['mrr']:.4f} over {scores['test']['candidates']} functions")
    return report
