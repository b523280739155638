"""Training the MLKG adapters (EP, TP, ES, TS) on a frozen encoder, one objective per adapter, and fusing them.

:func:`train_kg_adapters` adds one bottleneck adapter per objective (entity-alignment preset for
EP/ES, knowledge preset for TP/TS), trains each on its contrastive task with the shared loop
(checkpoints and exact resume per adapter under ``out_dir/<objective>/``), optionally stacked on a
frozen language adapter, and optionally trains a :class:`~polyglot_adapters.composition.Gate` over
the trained adapters on a mix of all four tasks (MixDA-style fusion). It writes ``run.json`` (the
settings) first and ``report.json`` (parameters, losses, seconds per adapter) last.

Example:
    >>> model, tokenizer = default_base()
    >>> result = train_kg_adapters(model, tokenizer, load_kg("cldr"), KGAdapterSettings(), out_dir="runs/kg")
    >>> result.model.set_active("ep")   # or kg_composition(["ep", "es"], how="average")
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..composition import Average, Composition, Gate, Stack
from ..errors import ConfigError
from ..io import atomic_write_json, check_fingerprint, read_adapter, write_adapter
from ..methods.bottleneck import BottleneckConfig
from ..model import AdaptedModel
from ..training import TrainConfig, train
from ..training.checkpoint import check_run_record
from .datasets import KGDataset, KGError
from .objectives import (
    OBJECTIVES,
    ContrastiveCollate,
    ContrastiveLoss,
    alignment_split,
    entity_examples,
    objective_format,
    triple_examples,
)

__all__ = [
    "GATE_NAME",
    "HELD_OUT_LANGUAGES",
    "KGAdapterResult",
    "KGAdapterSettings",
    "kg_adapter_config",
    "kg_composition",
    "kg_examples",
    "load_gate",
    "load_kg_run",
    "save_gate",
    "train_kg_adapters",
]

GATE_NAME = "kg-gate"
HELD_OUT_LANGUAGES = ("sw", "yo", "zu", "ha", "am", "so", "ig")
"""Low-resource label languages that the default settings keep out of TP/TS training."""


@dataclasses.dataclass(frozen=True)
class KGAdapterSettings:
    """What to train.

    Attributes:
        objectives: Which adapters, among ``ep``, ``tp``, ``es``, ``ts``.
        alignment_languages: EP aligns English with each of these (training entities only).
        sentence_alignment_languages: ES aligns English with each (needs training templates).
        triple_languages: Label languages of TP examples.
        sentence_triple_languages: Label languages of TS examples (need training templates).
        pivot: The language every alignment pair starts from.
        alignment_test_fraction: Share of entities held out of EP/ES for alignment evaluation.
        steps: Optimizer steps per adapter.
        batch_size: Examples per step.
        lr: Peak learning rate.
        hard_negatives: Hard negatives per example and step.
        temperature: InfoNCE temperature.
        reduction_factor: Bottleneck reduction factor of every KG adapter.
        layers: Blocks that get KG adapters (``None``: all). Leaving out the lowest blocks makes
            training cheaper: no gradient flows below the lowest adapter.
        fuse_steps: Steps of Gate fusion training over the trained adapters (0: no fusion).
        typed_entities: EP and TP tag every entity with its kind (``"language: Arabic"``,
            :class:`.objectives.Verbaliser`'s ``typed`` form) instead of the bare label;
            evaluation then uses the same form for every system, the base model included.
        seed: Seeds adapter initialisation, data order and negative sampling.
    """

    objectives: tuple[str, ...] = OBJECTIVES
    alignment_languages: tuple[str, ...] = ("sw", "am", "yo", "zu", "ha", "hi", "ja", "ar", "de", "fr", "es", "ru")
    sentence_alignment_languages: tuple[str, ...] = ("de", "fr", "es", "sw")
    triple_languages: tuple[str, ...] = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi")
    sentence_triple_languages: tuple[str, ...] = ("en", "de", "fr", "es")
    pivot: str = "en"
    alignment_test_fraction: float = 0.3
    steps: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    hard_negatives: int = 2
    temperature: float = 0.05
    reduction_factor: float = 16.0
    layers: tuple[int, ...] | None = None
    fuse_steps: int = 0
    typed_entities: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"objectives must be distinct names from {OBJECTIVES}, got {self.objectives!r}")
        for name in ("alignment_languages", "sentence_alignment_languages"):
            if self.pivot in getattr(self, name):
                raise ConfigError(f"{name} contains the pivot language {self.pivot!r}")
        if self.fuse_steps < 0 or self.steps < 1 or self.batch_size < 2:
            raise ConfigError("steps and batch_size must be >= 1 and >= 2, fuse_steps >= 0")


def kg_adapter_config(
    objective: str, *, reduction_factor: float = 16.0, layers: tuple[int, ...] | None = None
) -> BottleneckConfig:
    """The bottleneck preset of an objective: entity alignment for EP/ES, knowledge for TP/TS."""
    objective_format(objective)  # validates the name
    preset = BottleneckConfig.entity_alignment if objective in ("ep", "es") else BottleneckConfig.knowledge
    return dataclasses.replace(preset(reduction_factor=reduction_factor), layers=layers)


def kg_composition(adapters: Sequence[str], *, how: str = "gate", language: str | None = None) -> Composition:
    """How trained KG adapters combine: ``gate`` (learned, MixDA), ``average`` or ``stack``, on a language adapter.

    Args:
        adapters: Adapter names (one gives that adapter alone).
        how: ``gate`` (name :data:`GATE_NAME`; train it before use), ``average`` or ``stack``.
        language: A language adapter's name to stack the KG part on, or ``None``.

    Raises:
        ConfigError: For an unknown ``how`` or no adapters.
    """
    if not adapters:
        raise ConfigError("no KG adapters to combine")
    if how not in ("gate", "average", "stack"):
        raise ConfigError(f"how must be 'gate', 'average' or 'stack', got {how!r}")
    names = list(adapters)
    if len(names) == 1:
        inner: Composition = names[0]
    elif how == "gate":
        inner = Gate(*names, name=GATE_NAME)
    elif how == "average":
        inner = Average(*names)
    else:
        inner = Stack(*names)
    return Stack(language, inner) if language is not None else inner


def kg_examples(kg: KGDataset, objective: str, settings: KGAdapterSettings) -> list[Any]:
    """The training examples of one objective under ``settings`` (alignment uses training entities only)."""
    form = objective_format(objective)
    if form == "phrase" and settings.typed_entities:
        form = "typed"
    requested = {
        "ep": (settings.pivot, *settings.alignment_languages),
        "es": (settings.pivot, *settings.sentence_alignment_languages),
        "tp": settings.triple_languages,
        "ts": settings.sentence_triple_languages,
    }[objective]
    missing = sorted(set(requested) - set(kg.languages()))
    if missing:
        raise KGError(
            f"dataset {kg.name!r} has no labels in {missing} (requested for {objective}); "
            f"it has labels in {len(kg.languages())} languages, e.g. {kg.languages()[:8]}"
        )
    if objective in ("ep", "es"):
        languages = settings.alignment_languages if objective == "ep" else settings.sentence_alignment_languages
        entities, _ = alignment_split(kg, test_fraction=settings.alignment_test_fraction, seed=settings.seed)
        return entity_examples(kg, [(settings.pivot, lang) for lang in languages], entities=entities, form=form)
    languages = settings.triple_languages if objective == "tp" else settings.sentence_triple_languages
    return triple_examples(kg, languages, form=form)


@dataclasses.dataclass
class KGAdapterResult:
    """What :func:`train_kg_adapters` did.

    Attributes:
        model: The ``AdaptedModel`` holding the trained adapters (and the gate, if fused).
        adapter_dirs: Objective (or :data:`GATE_NAME`) -> saved directory.
        report: The JSON report, also in ``out_dir/report.json``.
    """

    model: AdaptedModel
    adapter_dirs: dict[str, Path]
    report: dict[str, Any]


def train_kg_adapters(
    model: nn.Module,
    tokenizer: Any,
    kg: KGDataset,
    settings: KGAdapterSettings,
    *,
    out_dir: str | os.PathLike[str],
    language_adapter: str | os.PathLike[str] | None = None,
    precision: str = "fp32",
    log: Callable[[str], None] | None = None,
) -> KGAdapterResult:
    """Trains one adapter per objective (then an optional fusion gate) and saves each.

    Args:
        model: An encoder (wrapped in an ``AdaptedModel`` unless it is one); its base stays frozen.
        tokenizer: Its tokenizer.
        kg: The knowledge graph.
        settings: What to train.
        out_dir: Run directory: ``run.json``, ``<objective>/`` (loop checkpoint, ``adapter/``),
            ``kg-gate/`` and ``report.json``. A rerun with the same settings resumes.
        language_adapter: A saved language adapter to stack every KG adapter on (kept frozen).
        precision: ``fp32`` or ``bf16``.
        log: Receives progress lines.

    Raises:
        ConfigError: Invalid settings, or a run directory holding other settings.
        TemplateError: A sentence-level language without training templates.
    """
    say = log if log is not None else (lambda _: None)
    am = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    out = Path(out_dir)
    examples = {objective: kg_examples(kg, objective, settings) for objective in settings.objectives}  # fail early
    record = {
        "kg": kg.name,
        "kg_sources": dict(kg.sources),
        "settings": dataclasses.asdict(settings),
        "language_adapter": str(language_adapter) if language_adapter is not None else None,
        "precision": precision,
        "examples": {o: len(e) for o, e in examples.items()},
    }
    check_run_record(out, record, "KG-adapter run")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "run.json", record)
    language = None
    if language_adapter is not None:
        language = "language"
        am.load_adapter(language_adapter, name=language)
    collate = ContrastiveCollate(tokenizer, hard_negatives=settings.hard_negatives)
    config = TrainConfig(
        steps=settings.steps,
        lr=settings.lr,
        batch_size=settings.batch_size,
        warmup_steps=settings.steps // 10,
        precision=precision,
        seed=settings.seed,
        log_every=max(1, settings.steps // 20),
    )
    dirs: dict[str, Path] = {}
    runs: dict[str, Any] = {}
    for objective in settings.objectives:
        if objective not in am.adapters:
            with torch.random.fork_rng():
                torch.manual_seed(settings.seed)
                adapter_config = kg_adapter_config(
                    objective, reduction_factor=settings.reduction_factor, layers=settings.layers
                )
                am.add_adapter(objective, adapter_config)
        am.set_active(kg_composition([objective], language=language))
        am.train_adapters(objective)
        loss = ContrastiveLoss(settings.temperature, symmetric=objective in ("ep", "es"))
        say(f"{objective}: {len(examples[objective]):,} examples, {am.num_parameters(objective):,} parameters")
        started = time.perf_counter()
        result = train(am, examples[objective], collate, loss, config, out_dir=out / objective, progress=False)
        seconds = time.perf_counter() - started
        dirs[objective] = am.save_adapter(objective, out / objective / "adapter")
        runs[objective] = _summary(out / objective / "metrics.jsonl", result.last_loss, seconds, result.resumed_from)
        runs[objective]["parameters"] = am.num_parameters(objective)
        say(f"{objective}: loss {runs[objective]['first_loss']:.3f} -> {result.last_loss:.3f} in {seconds:.0f} s")
    if settings.fuse_steps and len(settings.objectives) > 1:
        mixed = [ex for objective in settings.objectives for ex in examples[objective]]
        am.set_active(kg_composition(settings.objectives, how="gate", language=language))
        am.train_adapters(GATE_NAME)
        fuse = dataclasses.replace(config, steps=settings.fuse_steps, warmup_steps=settings.fuse_steps // 10)
        started = time.perf_counter()
        result = train(
            am, mixed, collate, ContrastiveLoss(settings.temperature), fuse, out_dir=out / GATE_NAME, progress=False
        )
        seconds = time.perf_counter() - started
        dirs[GATE_NAME] = save_gate(am, settings.objectives, out / GATE_NAME / "adapter")
        runs[GATE_NAME] = _summary(out / GATE_NAME / "metrics.jsonl", result.last_loss, seconds, result.resumed_from)
        say(f"{GATE_NAME}: loss {runs[GATE_NAME]['first_loss']:.3f} -> {result.last_loss:.3f} in {seconds:.0f} s")
    report = {
        **record,
        "runs": runs,
        "train_seconds": sum(r["seconds"] for r in runs.values()),
        "adapters": {k: str(v.relative_to(out)) for k, v in dirs.items()},
        "base": am.base_fingerprint,
    }
    atomic_write_json(out / "report.json", report)
    return KGAdapterResult(model=am, adapter_dirs=dirs, report=report)


def _summary(log: Path, last: float, seconds: float, resumed_from: int) -> dict[str, Any]:
    """First and last logged loss of a run (from its metrics log) and its wall time."""
    losses = []
    if log.is_file():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if "loss" in entry:
                losses.append(entry["loss"])
    return {
        "first_loss": losses[0] if losses else last,
        "last_loss": last,
        "seconds": seconds,
        "resumed_from": resumed_from,
    }


def save_gate(model: AdaptedModel, children: Sequence[str], directory: str | os.PathLike[str]) -> Path:
    """Saves the fusion gate over ``children`` (``adapter.json`` with method ``gate`` + ``adapter.safetensors``)."""
    meta = {
        "name": GATE_NAME,
        "method": "gate",
        "config": {"children": list(children)},
        "base": model.base_fingerprint,
    }
    return write_adapter(directory, meta, model.adapter_state_dict(GATE_NAME))


def load_gate(model: AdaptedModel, directory: str | os.PathLike[str], *, language: str | None = None) -> Composition:
    """Loads a gate saved by :func:`save_gate` (its adapters must be attached) and activates the fused composition.

    Raises:
        ArtifactError: A missing, altered or wrong-base file.
        ConfigError: A file that is not a gate, or adapters it mixes that are not attached.
    """
    directory = Path(directory)
    meta, tensors = read_adapter(directory)
    check_fingerprint(meta["base"], model.base_fingerprint, directory)
    children = meta["config"].get("children") if meta.get("method") == "gate" else None
    if not isinstance(children, list) or not children:
        raise ConfigError(f"{directory}: not a KG fusion gate (method {meta.get('method')!r})")
    missing = [c for c in children if c not in model.adapters]
    if missing:
        raise ConfigError(f"{directory}: the gate mixes adapters {missing} that are not attached; load them first")
    composition = kg_composition(children, how="gate", language=language)
    model.set_active(composition)
    params = model.adapter_state_dict(GATE_NAME)
    if set(params) != set(tensors) or any(params[k].shape != tensors[k].shape for k in params):
        raise ConfigError(f"{directory}: gate tensors do not match this model's sites; was it saved for another base?")
    with torch.no_grad():
        for key, value in tensors.items():
            params[key].copy_(value)
    return composition


def load_kg_run(model: nn.Module, run_dir: str | os.PathLike[str]) -> tuple[AdaptedModel, dict[str, Any]]:
    """Attaches the adapters (and the gate) of a :func:`train_kg_adapters` run to a fresh model.

    Returns:
        The ``AdaptedModel`` (nothing active) and the run's report.

    Raises:
        ConfigError: If ``run_dir`` holds no finished run (no ``report.json``).
    """
    run = Path(run_dir)
    try:
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{run / 'report.json'}: cannot read a finished KG-adapter run ({err})") from None
    am = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    if report.get("language_adapter"):
        am.load_adapter(report["language_adapter"], name="language")
    for name, path in report["adapters"].items():
        if name != GATE_NAME:
            am.load_adapter(run / path, name=name)
    am.set_active(None)
    return am, report
