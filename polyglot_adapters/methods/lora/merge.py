"""LoRA in delta space: dense ``scaling * B @ A`` per site, and back to low rank by truncated SVD."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch

from ...config import AdapterConfig
from ...errors import ConfigError, CorruptArtifactError
from .config import LoraConfig

__all__ = ["lora_deltas", "lora_factorise"]

_RANK_RULES = ("max", "sum", "full")


def lora_deltas(config: AdapterConfig, tensors: Mapping[str, torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
    """Maps each site key to a thunk returning its dense weight change ``(B @ A) * scaling``, ``(out, in)``.

    Raises:
        CorruptArtifactError: If a site lacks ``lora_A`` or ``lora_B`` or their shapes disagree with ``r``.
    """
    assert isinstance(config, LoraConfig)
    keys = sorted({name.rsplit(".", 1)[0] for name in tensors})
    out = {}
    for key in keys:
        a, b = tensors.get(f"{key}.lora_A"), tensors.get(f"{key}.lora_B")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[0] != config.r or b.shape[1] != config.r:
            raise CorruptArtifactError(f"LoRA tensors at {key} are incomplete or not of rank r={config.r}")
        # Same operation order as the layer and as PEFT's get_delta_weight, so merges agree to the bit.
        out[key] = lambda a=a, b=b: (b @ a) * config.scaling
    return out


def lora_factorise(
    configs: Sequence[AdapterConfig], deltas: Mapping[str, torch.Tensor], rank: int | str | None
) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Re-factorises dense deltas into a LoRA of one rank (scaling 1) by truncated SVD.

    Args:
        configs: The merged adapters' configs (all ``LoraConfig``).
        deltas: Site key -> merged ``(out, in)`` weight change.
        rank: ``None`` (all inputs share one rank, keep it), an int, ``"max"`` or ``"sum"`` of the
            inputs' ranks, or ``"full"`` (``min(out, in)`` of the largest site: exact up to rounding).
            A linear merge is exact at ``"sum"``; lower ranks give the best approximation of that
            rank (Eckart-Young).

    Raises:
        ConfigError: If ranks differ and no rule is given, or the rule is invalid.
    """
    loras = [c for c in configs if isinstance(c, LoraConfig)]
    assert len(loras) == len(configs) and loras, "lora_factorise takes LoRA configs"
    ranks = [c.r for c in loras]
    if rank is None:
        if len(set(ranks)) > 1:
            raise ConfigError(
                f"LoRA ranks differ ({sorted(set(ranks))}); pass a rank rule: an integer, 'max', 'sum' or 'full'"
            )
        target = ranks[0]
    elif rank == "max":
        target = max(ranks)
    elif rank == "sum":
        target = sum(ranks)
    elif rank == "full":
        target = max(min(d.shape) for d in deltas.values())
    elif isinstance(rank, int) and not isinstance(rank, bool) and rank > 0:
        target = rank
    else:
        raise ConfigError(f"rank must be a positive integer or one of {_RANK_RULES}, got {rank!r}")
    tensors = {}
    for key, delta in deltas.items():
        # In at least float32, as PEFT does: bf16/fp16 deltas are factorised in float32.
        u, s, vh = torch.linalg.svd(delta.to(torch.promote_types(delta.dtype, torch.float32)), full_matrices=False)
        k = min(target, s.numel())
        b = delta.new_zeros(delta.shape[0], target)  # (out, r)
        a = delta.new_zeros(target, delta.shape[1])  # (r, in)
        b[:, :k] = (u[:, :k] * s[:k]).to(delta.dtype)
        a[:k] = vh[:k].to(delta.dtype)
        tensors[f"{key}.lora_A"], tensors[f"{key}.lora_B"] = a, b
    first = loras[0]
    same_sites = all((c.targets, c.layers) == (first.targets, first.layers) for c in loras)
    # Adapters with different targets merge over the union of their sites, named exactly.
    targets = first.targets if same_sites else tuple(re.escape(key) for key in deltas)
    dropout = first.dropout if all(c.dropout == first.dropout for c in loras) else 0.0
    config = LoraConfig(
        r=target, alpha=float(target), dropout=dropout, targets=targets, layers=first.layers if same_sites else None
    )
    return config, tensors
