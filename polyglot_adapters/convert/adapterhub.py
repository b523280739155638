"""AdapterHub (``adapters``) bottleneck adapters, safetensors variant, read as polyglot-adapters bottlenecks.

Converted exactly are the configurations whose computation polyglot-adapters' bottleneck has:
the adapter adds to a sub-layer's output before the base residual connection and LayerNorm
(``original_ln_after=True``), reading that output (``original_ln_before=False``: Houlsby
``double_seq_bn``), the sub-layer input (parallel ``par_bn``) or the base LayerNorm's output with
the pre-LayerNorm output as its residual (``original_ln_before=True``, ``residual_before_ln=True``:
Pfeiffer ``seq_bn``, placement ``pfeiffer``), and custom ``BnConfig`` of those forms. NICE
invertible adapters (MAD-X ``seq_bn_inv``, ``double_seq_bn_inv``) convert with their inverse before
the output embedding, where AdapterHub runs it (``inverse_at="decoder"``). Refused, with the
reason: GLOW invertible adapters, adapter LayerNorms, gating, PHM layers, learned scalings,
per-layer reduction factors, other residual placements.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from safetensors.torch import load as st_load

from ..merging import SavedAdapter
from ..methods.bottleneck import BottleneckConfig
from .detect import ConversionError, Detected
from .hosts import Host

__all__ = ["import_adapterhub"]

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "silu", "silu": "silu", "tanh": "tanh"}
_PARTS = {
    "adapter_down.0.weight": "bn_down",
    "adapter_down.0.bias": "bn_down_bias",
    "adapter_up.weight": "bn_up",
    "adapter_up.bias": "bn_up_bias",
}
# AdapterHub's NICE coupling: F and G are Linear -> activation -> Linear (indices 0 and 2).
_COUPLING = {
    f"{net}.{index}.{kind}": f"bn_inv_{net.lower()}_{part}{'_bias' if kind == 'bias' else ''}"
    for net in ("F", "G")
    for index, part in ((0, "down"), (2, "up"))
    for kind in ("weight", "bias")
}
_MUST = {
    "original_ln_after": True,
    "ln_before": False,
    "ln_after": False,
    "use_gating": False,
    "phm_layer": False,
    "cross_adapter": False,
}
_REASONS = {
    "original_ln_after": "the base residual and LayerNorm would not follow the adapter",
    "ln_before": "adapter LayerNorms have no equivalent",
    "ln_after": "adapter LayerNorms have no equivalent",
    "use_gating": "gating has no equivalent",
    "phm_layer": "PHM layers have no equivalent",
    "cross_adapter": "cross-attention adapters have no site in an encoder",
}


def import_adapterhub(found: Detected, host: Host, name: str) -> SavedAdapter:
    """Reads an AdapterHub bottleneck adapter (``adapter_config.json`` + safetensors weights).

    Raises:
        ConversionError: A non-bottleneck or unsupported configuration (see the module docstring),
            pickle-only weights, or tensors that do not fit the base model.
    """
    doc, where = found.document or {}, found.config
    config = _config(doc.get("config") or {}, host, str(where))
    weights = found.tensors.get("safetensors", [])
    if len(weights) != 1:
        raise ConversionError(
            f"{where}: expected one safetensors weights file beside it, found {len(weights)}; pickled "
            "pytorch_adapter.bin is not read (save with use_safetensors=True)"
        )
    saved_name = re.escape(str(doc.get("name")))
    pattern = re.compile(rf"(?P<module>.+)\.adapters\.{saved_name}\.(?P<part>.+)")
    coupling = re.compile(rf"(?:.+\.)?invertible_adapters\.{saved_name}\.(?P<part>.+)")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in st_load(weights[0].read_bytes()).items():
        inverse = coupling.fullmatch(key) if config.invertible else None
        if inverse is not None and inverse["part"] in _COUPLING:
            tensors[f"{host.interface.embeddings}.{_COUPLING[inverse['part']]}"] = value
            continue
        match = pattern.fullmatch(key)
        if match is None or match["part"] not in _PARTS:
            raise ConversionError(
                f"{weights[0]}: tensor {key!r} is not part of bottleneck adapter {doc.get('name')!r}"
            )
        # AdapterHub hangs the adapter on the module that owns the sub-layer's output linear
        # (BertOutput for the FFN); polyglot-adapters keys it by that linear (output.dense).
        site = _site_of(match["module"], host, str(weights[0]))
        tensors[f"{site}.{_PARTS[match['part']]}"] = value
    host.check(config, tensors, str(weights[0]))
    return SavedAdapter(
        name, config, host.fingerprint, tensors, source=str(where.parent), extra={"converted_from": _origin(doc)}
    )


def _site_of(module: str, host: Host, where: str) -> str:
    outputs = [sub.output for sub in host.interface.sublayers.values()]
    candidates = {f"{block}.{out}" for block in host.blocks() for out in outputs}
    parents = {key.rsplit(".", 1)[0]: key for key in candidates}
    matches = [key for parent, key in parents.items() if module == parent or module.endswith(f".{parent}")]
    if len(matches) != 1:
        raise ConversionError(f"{where}: adapter module {module!r} is not a sub-layer output of the base model")
    return matches[0]


def _config(cfg: dict[str, Any], host: Host, where: str) -> BottleneckConfig:
    if cfg.get("architecture") not in (None, "bottleneck") or "reduction_factor" not in cfg:
        raise ConversionError(
            f"{where}: not a bottleneck adapter ({cfg.get('architecture')!r}); only bottlenecks convert"
        )
    for key, want in _MUST.items():
        if bool(cfg.get(key, want)) != want:
            raise ConversionError(f"{where}: {key}={cfg.get(key)!r} is not supported: {_REASONS[key]}")
    invertible = cfg.get("inv_adapter")
    if invertible not in (None, "nice"):
        raise ConversionError(f"{where}: {invertible!r} invertible adapters are not supported (only 'nice')")
    residual = cfg.get("residual_before_ln", True)
    if residual == "post_add":
        raise ConversionError(f"{where}: residual_before_ln='post_add' is not supported")
    reads_norm = bool(cfg.get("original_ln_before", False))
    if reads_norm and cfg.get("is_parallel"):
        raise ConversionError(f"{where}: a parallel adapter reading the base LayerNorm's output has no equivalent")
    if reads_norm and residual is not True:
        raise ConversionError(
            f"{where}: original_ln_before with residual_before_ln={residual!r} is not supported: the adapter's "
            "residual would be the base LayerNorm's output (only Pfeiffer seq_bn's pre-LayerNorm residual converts)"
        )
    act = _ACTIVATIONS.get(str(cfg.get("non_linearity")).lower())
    if act is None:
        raise ConversionError(
            f"{where}: non_linearity {cfg.get('non_linearity')!r} is not one of {sorted(_ACTIVATIONS)}"
        )
    scaling, factor = cfg.get("scaling", 1.0), cfg.get("reduction_factor")
    if isinstance(scaling, bool) or not isinstance(scaling, int | float):
        raise ConversionError(f"{where}: scaling {scaling!r} is not supported (only a constant number)")
    if isinstance(factor, dict):
        values = set(factor.values())
        if len(values) != 1:
            raise ConversionError(f"{where}: per-layer reduction factors {factor} are not supported")
        factor = values.pop()
    positions = tuple(p for p, on in (("attn", cfg.get("mh_adapter")), ("ffn", cfg.get("output_adapter"))) if on)
    if not positions:
        raise ConversionError(f"{where}: neither mh_adapter nor output_adapter is set; the adapter has no site")
    leave_out = set(cfg.get("leave_out") or [])
    layers = tuple(i for i in range(len(host.blocks())) if i not in leave_out) if leave_out else None
    try:
        return BottleneckConfig(
            placement="parallel" if cfg.get("is_parallel") else "pfeiffer" if reads_norm else "series",
            positions=positions,
            reduction_factor=factor,
            non_linearity=act,
            scaling=float(scaling),
            layers=layers,
            invertible=invertible is not None,
            invertible_reduction=cfg.get("inv_adapter_reduction_factor") or 2.0,
            inverse_at="decoder" if invertible else "head",
        )
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from None


def _origin(doc: dict[str, Any]) -> dict[str, Any]:
    return {"format": "adapters", "version": doc.get("version"), "name": doc.get("name")}
