"""Per-language best-checkpoint selection from a metrics log, merged into one bundle file.

A training run that evaluates every language keeps a saved adapter per language and checkpoint,
and logs dev metrics as JSON lines in one of two shapes:

* long: ``{"language": "sw", "checkpoint": "step-200/sw", "valid_wer": 0.31}``, one line per
  language and checkpoint (``checkpoint`` relative to the log's directory);
* wide: ``{"step": 200, "valid_wer/sw": 0.31, "valid_wer/am": 0.44}`` (the training loop's
  ``metrics.jsonl`` with per-language metrics), with a template such as ``step-{step}/{language}``
  that names the checkpoint of each step and language.

:func:`select_best` picks, per language, the checkpoint with the best value (the first on ties);
:func:`merge_per_language` writes those adapters into one bundle: ``bundle.json`` (schema, base
fingerprint, per-language method, config, source and metric, SHA-256 of the tensors) and
``bundle.safetensors`` (tensors keyed ``<language>/<site key>.<parameter>``), both atomically.
:func:`load_bundle` attaches every language's adapter to an ``AdaptedModel`` under its code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save

from ..config import config_from_dict
from ..errors import ConfigError, CorruptArtifactError, MissingArtifactError, SchemaVersionError
from ..io import atomic_write_bytes, atomic_write_json, check_fingerprint, parse_verified
from ..model import AdaptedModel
from .saved import MergeError, SavedAdapter, check_same_base

__all__ = [
    "BUNDLE_CONFIG",
    "BUNDLE_SCHEMA",
    "BUNDLE_WEIGHTS",
    "Selection",
    "load_bundle",
    "merge_per_language",
    "read_bundle",
    "select_best",
    "write_bundle",
]

BUNDLE_SCHEMA = "polyglot-adapters/bundle"
BUNDLE_VERSION = 1
BUNDLE_CONFIG = "bundle.json"
BUNDLE_WEIGHTS = "bundle.safetensors"
_LANGUAGE = re.compile(r"[A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True)
class Selection:
    """The best checkpoint of one language.

    Attributes:
        language: Language code (becomes the adapter's name in the bundle).
        checkpoint: Saved adapter directory of that checkpoint.
        metric: Metric name.
        value: Its value there.
        step: Training step, when the log gives one.
    """

    language: str
    checkpoint: Path
    metric: str
    value: float
    step: int | None


def select_best(
    log: str | os.PathLike[str], *, metric: str, mode: str = "min", checkpoints: str | None = None
) -> dict[str, Selection]:
    """Picks each language's best checkpoint from a JSON-lines metrics log.

    Args:
        log: The metrics log (long or wide shape, see the module docstring).
        metric: Metric to rank by (``valid_wer``); in the wide shape, keys ``<metric>/<language>``.
        mode: ``min`` or ``max``.
        checkpoints: Template with ``{step}`` and ``{language}`` for the wide shape, relative to
            the log's directory; long-shape lines name their checkpoint themselves.

    Returns:
        Language -> :class:`Selection`, in order of first appearance.

    Raises:
        MergeError: Unreadable lines, non-finite values, a wide line without a template or step,
            or no value of ``metric`` at all.
        MissingArtifactError: If the log does not exist.
    """
    path = Path(log)
    if mode not in ("min", "max"):
        raise MergeError(f"mode must be 'min' or 'max', got {mode!r}")
    if not path.is_file():
        raise MissingArtifactError(f"{path}: no such metrics log")
    best: dict[str, Selection] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise MergeError(f"{path}:{number}: not a JSON line ({err})") from None
        if not isinstance(record, dict):
            raise MergeError(f"{path}:{number}: expected a JSON object per line")
        for candidate in _candidates(record, metric, checkpoints, f"{path}:{number}"):
            language, checkpoint, value, step = candidate
            current = best.get(language)
            if current is None or (value < current.value if mode == "min" else value > current.value):
                best[language] = Selection(language, path.parent / checkpoint, metric, value, step)
    if not best:
        raise MergeError(f"{path}: no line has metric {metric!r} (long shape) or '{metric}/<language>' keys (wide)")
    return best


def _candidates(
    record: dict[str, Any], metric: str, template: str | None, where: str
) -> list[tuple[str, str, float, int | None]]:
    step = record.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise MergeError(f"{where}: step must be an integer, got {step!r}")
    if "language" in record or "checkpoint" in record:
        if metric not in record:
            return []
        language, checkpoint = record.get("language"), record.get("checkpoint")
        if not isinstance(checkpoint, str) or not checkpoint:
            raise MergeError(f"{where}: a line with 'language' needs a 'checkpoint' path")
        return [(_language(language, where), checkpoint, _value(record[metric], where), step)]
    found = []
    for key, value in record.items():
        head, _, language = key.rpartition("/")
        if head != metric:
            continue
        if template is None or step is None:
            raise MergeError(
                f"{where}: per-language key {key!r} needs a 'step' on the line and a checkpoint template "
                "such as 'step-{step}/{language}'"
            )
        language = _language(language, where)
        try:
            checkpoint = template.format(step=step, language=language)
        except (KeyError, IndexError, ValueError) as err:
            raise MergeError(
                f"checkpoint template {template!r} is invalid ({err}); use {{step}} and {{language}}"
            ) from None
        found.append((language, checkpoint, _value(value, where), step))
    return found


def _language(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LANGUAGE.fullmatch(value):
        raise MergeError(f"{where}: language must be a code of letters, digits, '-' or '_', got {value!r}")
    return value


def _value(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MergeError(f"{where}: metric values must be finite numbers, got {value!r}")
    return float(value)


def merge_per_language(
    log: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    metric: str,
    mode: str = "min",
    checkpoints: str | None = None,
) -> dict[str, Selection]:
    """Selects each language's best checkpoint (:func:`select_best`) and writes them as one bundle.

    Every selected adapter is read and verified before anything is written.

    Returns:
        The selections written.

    Raises:
        MergeError, ArtifactError: As :func:`select_best` and :func:`write_bundle`.
    """
    selections = select_best(log, metric=metric, mode=mode, checkpoints=checkpoints)
    adapters = {lang: SavedAdapter.read(sel.checkpoint) for lang, sel in selections.items()}
    notes = {lang: {"metric": sel.metric, "value": sel.value, "step": sel.step} for lang, sel in selections.items()}
    write_bundle(out, adapters, notes)
    return selections


def write_bundle(
    directory: str | os.PathLike[str],
    adapters: dict[str, SavedAdapter],
    notes: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Writes several adapters of one base model into ``bundle.json`` + ``bundle.safetensors``.

    Args:
        directory: Target directory (created if missing).
        adapters: Language (or any adapter name) -> adapter.
        notes: Optional JSON-ready facts per language (e.g. the selection's metric and step).

    Raises:
        MergeError: If there is no adapter or a name is not a plain code.
        BaseModelMismatchError: If the adapters were trained for different bases.
    """
    if not adapters:
        raise MergeError("a bundle needs at least one adapter")
    for language in adapters:
        _language(language, "bundle")
    check_same_base(list(adapters.values()))
    tensors = {f"{lang}/{key}": t for lang, a in adapters.items() for key, t in a.tensors.items()}
    blob = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
    entries = {
        lang: {
            "method": a.config.method,
            "config": a.config.to_dict(),
            "source": a.source,
            **(notes or {}).get(lang, {}),
        }
        for lang, a in adapters.items()
    }
    doc = {
        "schema": BUNDLE_SCHEMA,
        "schema_version": BUNDLE_VERSION,
        "base": next(iter(adapters.values())).base,
        "adapters": entries,
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / BUNDLE_WEIGHTS, blob)
    atomic_write_json(directory / BUNDLE_CONFIG, doc)
    return directory


def read_bundle(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, SavedAdapter]]:
    """Reads and verifies a bundle.

    Returns:
        The bundle document and language -> :class:`SavedAdapter`.

    Raises:
        MissingArtifactError, SchemaVersionError, CorruptArtifactError: Missing, foreign or altered files.
        ConfigError: An invalid config (the message names the file).
    """
    directory = Path(directory)
    path = directory / BUNDLE_CONFIG
    if not path.is_file():
        raise MissingArtifactError(f"{path}: missing; is {directory} a bundle written by merge per-language?")
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or doc.get("schema") != BUNDLE_SCHEMA:
        raise SchemaVersionError(f"{path}: not a {BUNDLE_SCHEMA!r} document")
    if doc.get("schema_version") != BUNDLE_VERSION:
        raise SchemaVersionError(f"{path}: schema_version {doc.get('schema_version')!r} is not {BUNDLE_VERSION}")
    entries, base, sha = doc.get("adapters"), doc.get("base"), doc.get("tensors_sha256")
    if not isinstance(entries, dict) or not entries or not isinstance(base, dict) or not isinstance(sha, str):
        raise CorruptArtifactError(f"{path}: 'adapters', 'base' or 'tensors_sha256' is missing or mistyped")
    weights = directory / BUNDLE_WEIGHTS
    if not weights.is_file():
        raise MissingArtifactError(f"{weights}: missing; the bundle is incomplete")
    tensors = parse_verified(weights, weights.read_bytes(), sha)
    adapters = {}
    for lang, entry in entries.items():
        try:
            config = config_from_dict(entry.get("config") if isinstance(entry, dict) else None)
        except ConfigError as err:
            raise type(err)(f"{path}: adapter {lang!r}: {err}") from None
        prefix = f"{lang}/"
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        adapters[lang] = SavedAdapter(name=lang, config=config, base=base, tensors=own, source=f"{directory}:{lang}")
    stray = sorted(k for k in tensors if k.split("/", 1)[0] not in entries)
    if stray:
        raise CorruptArtifactError(f"{weights}: tensor {stray[0]} belongs to no adapter of {path.name}")
    return doc, adapters


def load_bundle(
    model: AdaptedModel, directory: str | os.PathLike[str], *, languages: list[str] | None = None
) -> list[str]:
    """Attaches a bundle's adapters to ``model``, each under its language code; all or nothing.

    Args:
        model: The adapted base model (its fingerprint must match the bundle's).
        directory: A bundle directory.
        languages: Only these languages (default: all).

    Returns:
        The names attached.

    Raises:
        BaseModelMismatchError: If the bundle is for another base.
        ConfigError: If a name is taken or unknown.
        CorruptArtifactError: If a language's tensors do not fit its config on this model.
    """
    doc, adapters = read_bundle(directory)
    check_fingerprint(doc["base"], model.base_fingerprint, Path(directory))
    wanted = list(adapters) if languages is None else languages
    unknown = sorted(set(wanted) - set(adapters))
    if unknown:
        raise ConfigError(f"{directory}: no adapter for {unknown}; the bundle holds {sorted(adapters)}")
    attached: list[str] = []
    try:
        for lang in wanted:
            model.add_adapter(lang, adapters[lang].config)
            attached.append(lang)
            _copy(model, lang, adapters[lang].tensors, Path(directory))
    except BaseException:
        for lang in attached:
            model.delete_adapter(lang)
        raise
    return attached


@torch.no_grad()
def _copy(model: AdaptedModel, name: str, tensors: dict[str, torch.Tensor], source: Path) -> None:
    params = model.adapter_state_dict(name)
    for key, param in params.items():
        value = tensors.get(key)
        if value is None or value.shape != param.shape or value.dtype != param.dtype:
            found = None if value is None else (tuple(value.shape), value.dtype)
            raise CorruptArtifactError(
                f"{source}: adapter {name!r} tensor {key} is {found}, expected {(tuple(param.shape), param.dtype)}"
            )
    extra = sorted(set(tensors) - set(params))
    if extra:
        raise CorruptArtifactError(f"{source}: adapter {name!r} has unexpected tensor {extra[0]}")
    for key, param in params.items():
        param.copy_(tensors[key])
