"""One probing run, as the ``probe`` command does it: the model with and without adapters, table, JSON and chart.

:func:`probe_run` loads a masked LM (``default`` or a local directory), probes the chosen
languages, then attaches the saved adapters in the chosen composition and probes again, and
writes ``OUT/probe.json`` (resolved settings and every result), ``OUT/probe.md`` (the table) and
``OUT/probe.png`` (P@1 and consistency per language, with and without adapters). Everything is
validated before the first forward pass: unknown languages, relations or prompt sets, adapters
for another base, a missing gate.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..composition import Average, Composition, Gate, Stack
from ..io import atomic_write_bytes
from ..kg import load_kg
from ..kg.adapters import load_gate
from ..methods.p_adapter import prompt_slots
from ..model import AdaptedModel
from ..models import load_mlm
from .facts import ProbeError, check_relations
from .probe import ProbeSettings, format_table, json_bytes, probe_chart, probe_languages
from .templates import load_templates

__all__ = ["COMPOSITIONS", "compose", "probe_run"]

COMPOSITIONS = ("stack", "gate", "average")


def compose(names: Sequence[str], how: str) -> Composition | str:
    """The composition of the attached adapters ``names`` (a single adapter is itself).

    Raises:
        ProbeError: If ``how`` is unknown.
    """
    if how not in COMPOSITIONS:
        raise ProbeError(f"unknown composition {how!r}; choose from {COMPOSITIONS}")
    if len(names) == 1:
        return names[0]
    if how == "stack":
        return Stack(*names)
    if how == "average":
        return Average(*names)
    return Gate(*names)


def probe_run(
    *,
    model: str = "default",
    adapters: Sequence[str | os.PathLike[str]] = (),
    how: str = "stack",
    gate: str | os.PathLike[str] | None = None,
    languages: Sequence[str] = ("en", "de", "sw", "yo"),
    kg_name: str = "cldr",
    settings: ProbeSettings = ProbeSettings(),  # noqa: B008 (frozen dataclass)
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Probes a model, and the model with adapters, in several languages.

    Args:
        model: ``"default"`` (the default base with its masked-LM parts) or a local masked-LM directory.
        adapters: Saved adapter directories to attach (``adapter.json`` + ``adapter.safetensors``).
        how: How several adapters compose: ``stack``, ``gate`` or ``average``.
        gate: A saved fusion gate over the adapters (for ``how="gate"``; else the gate is uniform).
        languages: Languages to probe.
        kg_name: The KG the facts come from.
        settings: What to probe.
        out: Directory for ``probe.json``, ``probe.md`` and ``probe.png`` (``None``: write nothing).
        progress: Show progress bars.
        echo: Where the table and one-line progress messages go.

    Returns:
        ``{"config": ..., "results": {system: {language: result}}}``.

    Raises:
        ProbeError: Bad languages, relations, prompt set or composition.
        ArtifactError: An adapter that is missing, corrupted or trained for another base.
    """
    if gate is not None and how != "gate":
        raise ProbeError("a gate file needs --compose gate")
    if how not in COMPOSITIONS:
        raise ProbeError(f"unknown composition {how!r}; choose from {COMPOSITIONS}")
    kg = load_kg(kg_name)
    relations = check_relations(kg, settings.relations)
    load_templates(list(languages), relations, path=settings.templates)
    mlm, tokenizer = load_mlm(model)
    adapted = None
    names: list[str] = []
    composition: Composition | str | None = None
    if adapters:
        adapted = AdaptedModel(mlm)
        names = [adapted.load_adapter(directory) for directory in adapters]
        composition = compose(names, how) if gate is None else load_gate(adapted, gate)
        adapted.set_active(None)
        adapted.eval()
    echo("probing the model without adapters")
    results: dict[str, dict[str, Any]] = {}
    results["base"] = probe_languages(
        adapted if adapted is not None else mlm,
        tokenizer,
        kg,
        languages,
        settings,
        progress=progress,
        echo=lambda line: echo(f"  {line}"),
    )
    if adapted is not None:
        adapted.set_active(composition)
        system = "+" + "+".join(names)
        echo(f"probing with adapters {composition}")
        results[system] = probe_languages(
            adapted,
            tokenizer,
            kg,
            languages,
            settings,
            slots=prompt_slots(adapted),
            progress=progress,
            echo=lambda line: echo(f"  {line}"),
        )
    table = format_table(results)
    echo(table)
    config = {
        "model": model,
        "adapters": [str(a) for a in adapters],
        "compose": how,
        "gate": None if gate is None else str(gate),
        "languages": list(languages),
        "kg": kg_name,
        "settings": dataclasses.asdict(settings),
    }
    report = {"config": config, "results": results}
    if out is not None:
        directory = Path(out)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / "probe.json", json_bytes(report))
        atomic_write_bytes(directory / "probe.md", (table + "\n").encode())
        atomic_write_bytes(directory / "probe.png", probe_chart(results))
        echo(f"wrote {directory / 'probe.json'}, {directory / 'probe.md'}, {directory / 'probe.png'}")
    return report
