"""PEFT LoRA checkpoints (``adapter_config.json`` + ``adapter_model.safetensors``) in and out."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..io import atomic_write_bytes, atomic_write_json
from ..merging import SavedAdapter
from ..methods.lora import LoraConfig
from .detect import ConversionError, Detected
from .hosts import Host

__all__ = ["export_peft", "import_peft", "short_targets"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_KEY = re.compile(r"base_model\.model\.(?P<path>.+)\.(?P<part>lora_A|lora_B)\.weight")
# Options that change what a LoRA computes and that polyglot-adapters' LoRA does not have.
_UNSUPPORTED = (
    "use_dora",
    "fan_in_fan_out",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
    "target_parameters",
    "trainable_token_indices",
    "layer_replication",
    "use_qalora",
    "alora_invocation_tokens",
)


def import_peft(found: Detected, host: Host, name: str) -> SavedAdapter:
    """Reads a PEFT LoRA checkpoint as a polyglot-adapters LoRA adapter for ``host``.

    Raises:
        ConversionError: Another PEFT method, an option that changes the computation (DoRA,
            biases, per-module ranks, extra trainable modules), pickle-only weights, or modules
            the base model does not have.
    """
    doc, where = found.document or {}, found.config
    if doc.get("peft_type") != "LORA":
        raise ConversionError(f"{where}: PEFT method {doc.get('peft_type')!r} is not LoRA; only LoRA converts")
    bad = [key for key in _UNSUPPORTED if doc.get(key)]
    if doc.get("bias", "none") != "none":
        bad.append("bias")
    if bad:
        raise ConversionError(f"{where}: PEFT options {bad} are set; polyglot-adapters' LoRA has no equivalent")
    weights = found.tensors.get("safetensors", [])
    if len(weights) != 1:
        raise ConversionError(
            f"{where}: expected one safetensors weights file beside it, found {len(weights)}; pickled "
            "adapter_model.bin is not read (re-save with safe_serialization=True)"
        )
    tensors = st_load(weights[0].read_bytes())
    r, alpha = doc.get("r"), doc.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or not isinstance(alpha, int | float):
        raise ConversionError(f"{where}: 'r' and 'lora_alpha' must be numbers")
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise ConversionError(f"{weights[0]}: tensor {key!r} is not a LoRA A/B weight of a linear layer")
        site = host.key_of(match["path"], str(weights[0]))
        out[f"{site}.{match['part']}"] = value
    # rsLoRA scales by alpha / sqrt(r); polyglot-adapters by alpha / r.
    alpha = alpha * math.sqrt(r) if doc.get("use_rslora") else alpha
    sites = sorted({k.rsplit(".", 1)[0] for k in out})
    config = LoraConfig(
        r=r, alpha=float(alpha), dropout=float(doc.get("lora_dropout") or 0.0), targets=short_targets(host, sites)
    )
    host.check(config, out, str(weights[0]))
    converted = {"format": "peft", "peft_version": doc.get("peft_version")}
    return SavedAdapter(
        name, config, host.fingerprint, out, source=str(where.parent), extra={"converted_from": converted}
    )


def short_targets(host: Host, sites: list[str]) -> tuple[str, ...]:
    """Interface short names covering whole sets of sites (``q`` = every block's query), the rest as exact regexes."""
    remaining = set(sites)
    targets = []
    for short, inner in host.interface.linears.items():
        paths = {f"{block}.{inner}" for block in host.blocks()}
        if paths <= remaining:
            targets.append(short)
            remaining -= paths
    return (*targets, *(re.escape(key) for key in sorted(remaining)))


def export_peft(adapter: SavedAdapter, directory: str | os.PathLike[str], host: Host) -> Path:
    """Writes a LoRA adapter as a PEFT checkpoint loadable by ``PeftModel.from_pretrained(host, directory)``.

    Tensor names carry the host's own module paths (``base_model.model.bert.encoder...`` for a
    ``BertForMaskedLM``), so export for the architecture the PEFT user will wrap.

    Raises:
        ConversionError: If the adapter is not LoRA or its base is not ``host``.
    """
    if not isinstance(adapter.config, LoraConfig):
        raise ConversionError(f"{adapter.label}: a {adapter.config.method} adapter has no PEFT LoRA equivalent")
    if adapter.base.get("params_sha256") != host.fingerprint["params_sha256"]:
        raise ConversionError(f"{adapter.label}: was trained for another base model than --base")
    config = adapter.config
    sites = sorted({k.rsplit(".", 1)[0] for k in adapter.tensors})
    tensors = {
        f"{_PREFIX}{host.root}{key}.weight": value.detach().to("cpu").contiguous()
        for key, value in adapter.tensors.items()
    }
    doc: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": None,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sites,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / PEFT_WEIGHTS, st_save(tensors))
    atomic_write_json(directory / PEFT_CONFIG, doc)
    return directory
