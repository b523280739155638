"""Per-batch P-Adapter inputs, passed explicitly for one ``with`` block, and the MoE router's loss."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import AdapterNotFoundError
from .layer import PAdapterLayer, PromptInputError, PromptInputs

__all__ = ["p_adapter_layers", "prompt_inputs", "prompt_slots", "router_loss"]


def p_adapter_layers(model: nn.Module) -> list[PAdapterLayer]:
    """Every :class:`PAdapterLayer` inside ``model`` (an ``AdaptedModel`` or a wrapped host)."""
    return [m for m in model.modules() if isinstance(m, PAdapterLayer)]


def prompt_slots(model: nn.Module) -> int:
    """Placeholder positions (after the first token) that the model's P-Adapters fill: 0 for ``rewrite`` only."""
    return max((layer.prompt_length for layer in p_adapter_layers(model) if layer.variant != "rewrite"), default=0)


def _mask(name: str, value: torch.Tensor | None) -> torch.Tensor | None:
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or value.dim() != 2:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise PromptInputError(f"p_adapter {name} must be a (B, T) tensor like input_ids, got {shape}")
    if value.dtype.is_floating_point or value.is_complex():
        raise PromptInputError(f"p_adapter {name} must be a bool or integer 0/1 tensor, got {value.dtype}")
    return value != 0


@contextlib.contextmanager
def prompt_inputs(
    model: nn.Module,
    *,
    keep: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    relations: torch.Tensor | None = None,
) -> Iterator[None]:
    """Hands one batch's inputs to every P-Adapter of ``model`` for the duration of the block.

    On exit (also on an exception) each layer gets back what it had before (nothing, outside
    any other ``prompt_inputs``). The inputs cover the whole batch the host is called with, so
    compositions that split rows (``Route``, ``Parallel``) do not fit and raise a shape error.

    Args:
        model: An ``AdaptedModel`` (or its host) with at least one ``p_adapter`` attached.
        keep: ``(B, T)`` bool/0-1: positions the ``rewrite`` variant leaves unchanged (the subject's
            tokens and ``[MASK]``). Without it, ``rewrite`` rewrites every real position.
            Other variants ignore it.
        attention_mask: ``(B, T)`` bool/0-1, ``input_ids``' attention mask. Padding never affects
            real positions and comes out unchanged. Without it, every position counts as real.
        relations: ``(B,)`` integer relation ids in ``[0, num_relations)``: required by ``ptuning``;
            ``moe`` uses them (in training mode) to pick the true relation's prompt.

    Example:
        >>> with prompt_inputs(am, keep=keep, attention_mask=batch["attention_mask"]):
        ...     logits = am(**batch).logits

    Raises:
        AdapterNotFoundError: If ``model`` has no P-Adapter.
        PromptInputError: On malformed shapes or dtypes, or relation ids out of range.
    """
    layers = p_adapter_layers(model)
    if not layers:
        raise AdapterNotFoundError(
            "the model has no p_adapter; attach one with add_adapter(name, PAdapterConfig(...)) first"
        )
    keep, attention_mask = _mask("keep", keep), _mask("attention_mask", attention_mask)
    if keep is not None and attention_mask is not None and keep.shape != attention_mask.shape:
        raise PromptInputError(
            f"p_adapter keep {tuple(keep.shape)} and attention_mask {tuple(attention_mask.shape)} differ in shape"
        )
    if relations is not None:
        if not isinstance(relations, torch.Tensor) or relations.dim() != 1:
            shape = tuple(relations.shape) if isinstance(relations, torch.Tensor) else type(relations).__name__
            raise PromptInputError(f"p_adapter relations must be a (B,) tensor of ids, got {shape}")
        if relations.dtype.is_floating_point or relations.is_complex() or relations.dtype == torch.bool:
            raise PromptInputError(f"p_adapter relations must be integer ids, got {relations.dtype}")
        relations = relations.long()
        rows = next((m.shape[0] for m in (keep, attention_mask) if m is not None), relations.shape[0])
        if relations.shape[0] != rows:
            raise PromptInputError(f"p_adapter got {relations.shape[0]} relation ids for masks of {rows} rows")
        if relations.numel():
            low, high = int(relations.min()), int(relations.max())
            for layer in layers:
                if layer.num_relations and (low < 0 or high >= layer.num_relations):
                    bad = low if low < 0 else high
                    raise PromptInputError(
                        f"relation id {bad} is out of range for a p_adapter with {layer.num_relations} relations "
                        f"(ids 0..{layer.num_relations - 1})"
                    )
    given = PromptInputs(keep=keep, attention_mask=attention_mask, relations=relations)
    previous = [layer.inputs for layer in layers]
    try:
        for layer in layers:
            layer.inputs = given
        yield
    finally:
        for layer, old in zip(layers, previous, strict=True):
            layer.inputs = old


def router_loss(model: nn.Module, relations: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the last forward's router logits against the true relations, summed over ``moe`` layers.

    Args:
        model: An ``AdaptedModel`` (or its host) with ``moe`` P-Adapters that have run a forward pass.
        relations: ``(B,)`` integer relation ids of that forward's rows.

    Returns:
        A scalar (mean over rows per layer, summed over layers), differentiable in the routers.

    Raises:
        AdapterNotFoundError: If ``model`` has no ``moe`` P-Adapter.
        PromptInputError: If a router has not run yet or ``relations`` does not fit its logits.
    """
    layers = [layer for layer in p_adapter_layers(model) if layer.variant == "moe"]
    if not layers:
        raise AdapterNotFoundError("the model has no moe p_adapter; router_loss needs PAdapterConfig.moe(...)")
    total = None
    for layer in layers:
        logits = layer.router_logits  # (B, R)
        if logits is None:
            raise PromptInputError("the moe p_adapter's router has not run; call router_loss after a forward pass")
        if relations.dim() != 1 or relations.shape[0] != logits.shape[0]:
            raise PromptInputError(
                f"router_loss got relations {tuple(relations.shape)} for router logits {tuple(logits.shape)}; "
                "pass the (B,) ids of the last forward's rows"
            )
        loss = F.cross_entropy(logits, relations.to(logits.device).long())
        total = loss if total is None else total + loss
    return total
