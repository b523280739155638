"""The KG-adapter evaluation suite: every system, every language, one JSON report and its tables.

Entity alignment (pivot -> each language, alignment-test entities, all target-language entities as
candidates): the name-overlap baseline, the base model without adapters, each alignment adapter
(EP, ES), EP+ES averaged, and the fused model (gate over all KG adapters) when the run has one;
each ranked by nearest neighbour and, by default, with Sinkhorn inference too (:mod:`.alignment`).
Link prediction (filtered, tail side, per label language): the base model, TP, TS, and the fused
model, at phrase level; languages are marked as used or not used in triple training. A run trained
with ``typed_entities`` is evaluated with kind-tagged labels for every system, the base included.

Example:
    >>> am, report = load_kg_run(default_base()[0], "runs/kg")
    >>> results = evaluate_kg_adapters(am, tokenizer, load_kg("cldr"), report)
    >>> lines = results_markdown(results)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..composition import Average
from ..model import AdaptedModel
from .adapters import GATE_NAME, load_gate
from .alignment import ALIGNMENT_INFERENCE
from .datasets import KGDataset, KGError
from .evaluate import EncoderScorer, NgramScorer, entity_alignment, link_prediction
from .objectives import alignment_split

__all__ = ["ALIGNMENT_TARGET_LANGUAGES", "LINK_LANGUAGES", "evaluate_kg_adapters", "results_markdown"]

ALIGNMENT_TARGET_LANGUAGES = ("sw", "am", "yo", "zu", "ha", "hi", "ja", "ar", "de", "fr", "es", "ru")
LINK_LANGUAGES = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "sw", "yo", "zu", "ha", "am", "so", "ig")


def evaluate_kg_adapters(
    model: AdaptedModel,
    tokenizer: Any,
    kg: KGDataset,
    report: dict[str, Any],
    *,
    run_dir: str | Path | None = None,
    alignment_languages: Sequence[str] = ALIGNMENT_TARGET_LANGUAGES,
    link_languages: Sequence[str] = LINK_LANGUAGES,
    split: str = "test",
    global_inference: Sequence[str] = ("sinkhorn",),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Scores every system of a KG-adapter run in every language.

    Args:
        model: The ``AdaptedModel`` with the run's adapters attached (:func:`.adapters.load_kg_run`).
        tokenizer: Its tokenizer.
        kg: The knowledge graph the run trained on.
        report: The run's ``report.json`` (settings, adapters).
        run_dir: The run directory (for the fusion gate, if the run trained one).
        alignment_languages: Targets of alignment from the run's pivot.
        link_languages: Label languages of link prediction.
        split: Triples to rank.
        global_inference: Alignment inferences of :mod:`.alignment` (``csls``, ``sinkhorn``) to report
            beside nearest-neighbour ranking, each for every system, under ``alignment_<inference>``.
        log: Receives one line per system and language.

    Returns:
        ``{"alignment": {lang: {system: metrics}}, "alignment_sinkhorn": {lang: {system: metrics}},
        "link_prediction": {lang: {system: metrics}}, "triple_languages": [...], "pivot": ..., "seconds": ...}``.
    """
    say = log if log is not None else (lambda _: None)
    settings = report["settings"]
    pivot = settings["pivot"]
    missing = sorted({pivot, *alignment_languages, *link_languages} - set(kg.languages()))
    if missing:
        raise KGError(f"dataset {kg.name!r} has no labels in {missing}; e.g. {kg.languages()[:8]} have labels")
    adapters = [name for name in report["adapters"] if name != GATE_NAME and name in model.adapters]
    _, test_entities = alignment_split(kg, test_fraction=settings["alignment_test_fraction"], seed=settings["seed"])
    language = "language" if report.get("language_adapter") else None
    form = "typed" if settings.get("typed_entities") else "phrase"  # as the run's EP/TP were trained

    def activate(system: str) -> None:
        if system == "base":
            model.set_active(None)
        elif system == "fused":
            load_gate(model, Path(run_dir) / GATE_NAME / "adapter", language=language)  # type: ignore[arg-type]
        elif system == "ep+es":
            model.set_active(Average("ep", "es"))
        else:
            model.set_active(system)

    fused = run_dir is not None and GATE_NAME in report["adapters"]
    align_systems = ["base", *[a for a in ("ep", "es") if a in adapters]]
    if {"ep", "es"} <= set(adapters):
        align_systems.append("ep+es")
    link_systems = ["base", *[a for a in ("tp", "ts") if a in adapters]]
    if fused:
        align_systems.append("fused")
        link_systems.append("fused")
    started = time.perf_counter()
    inferences = ["nearest", *(i for i in global_inference if i != "nearest")]
    alignment = {i: {lang: {} for lang in alignment_languages} for i in inferences}  # inference -> lang -> system
    for system in ["name-overlap", *align_systems]:
        if system == "name-overlap":
            scorer: NgramScorer | EncoderScorer = NgramScorer()
        else:
            activate(system)
            scorer = EncoderScorer(model, tokenizer, form=form)
        for lang in alignment_languages:
            for inference in inferences:
                metrics = entity_alignment(scorer, kg, pivot, lang, test_entities, inference=inference)
                alignment[inference][lang][system] = metrics
            say(
                f"alignment {pivot}->{lang} {system}: Hits@1 "
                + ", ".join(f"{100 * alignment[i][lang][system]['hits@1']:.1f} ({i})" for i in inferences)
            )
    links: dict[str, dict[str, Any]] = {lang: {} for lang in link_languages}
    for system in link_systems:
        activate(system)
        scorer = EncoderScorer(model, tokenizer, form=form)
        for lang in link_languages:
            links[lang][system] = metrics = link_prediction(scorer, kg, lang, split=split)
            say(f"link prediction [{lang}] {system}: MRR {metrics['mrr']:.3f}")
    model.set_active(None)
    return {
        "kg": kg.name,
        "split": split,
        "pivot": pivot,
        "alignment_test_entities": len(test_entities),
        "entity_form": form,
        "triple_languages": sorted(set(settings["triple_languages"]) | set(settings["sentence_triple_languages"])),
        "alignment_languages_trained": sorted(
            set(settings["alignment_languages"]) | set(settings["sentence_alignment_languages"])
        ),
        "alignment": alignment["nearest"],
        **{f"alignment_{i}": alignment[i] for i in inferences[1:]},
        "link_prediction": links,
        "seconds": time.perf_counter() - started,
    }


def _table(rows: dict[str, dict[str, Any]], metrics: Sequence[str], mark: Callable[[str], str]) -> list[str]:
    systems = list(dict.fromkeys(s for per in rows.values() for s in per))
    head = [f"{s} {m}" for s in systems for m in metrics]
    lines = [f"| language | {' | '.join(head)} |", "|---|" + "---:|" * len(head)]
    means = {(s, m): [] for s in systems for m in metrics}
    for lang, per in rows.items():
        cells = []
        for s in systems:
            for m in metrics:
                value = per.get(s, {}).get(m)
                cells.append("" if value is None else f"{100 * value:.1f}")
                if value is not None:
                    means[(s, m)].append(value)
        lines.append(f"| {lang}{mark(lang)} | {' | '.join(cells)} |")
    mean_cells = [f"**{100 * sum(v) / len(v):.1f}**" if v else "" for v in means.values()]
    lines.append(f"| mean | {' | '.join(mean_cells)} |")
    return lines


def results_markdown(results: dict[str, Any]) -> list[str]:
    """Markdown tables of :func:`evaluate_kg_adapters`'s results (values in percent; MRR x 100)."""
    trained = set(results["triple_languages"])
    tagged = "; labels tagged with their kind" if results.get("entity_form") == "typed" else ""
    alignment_metrics = ("hits@1", "hits@10", "mrr")
    lines = [
        f"Entity alignment {results['pivot']} -> language on {results['alignment_test_entities']} held-out "
        f"entities (Hits@1 / Hits@10 / MRR, candidates: all entities labelled in the target language{tagged}):",
        "",
        *_table(results["alignment"], alignment_metrics, lambda _: ""),
        "",
    ]
    for inference in ALIGNMENT_INFERENCE[1:]:
        if f"alignment_{inference}" in results:
            lines += [
                f"The same with {inference} inference (every {results['pivot']} entity rescored against every "
                "candidate before ranking; no gold alignment used):",
                "",
                *_table(results[f"alignment_{inference}"], alignment_metrics, lambda _: ""),
                "",
            ]
    return [
        *lines,
        f"Filtered link prediction on the {results['split']} triples, tails, per label language (MRR / Hits@10); "
        f"`*` marks label languages not used in triple training:",
        "",
        *_table(results["link_prediction"], ("mrr", "hits@10"), lambda lang: "" if lang in trained else " *"),
    ]
