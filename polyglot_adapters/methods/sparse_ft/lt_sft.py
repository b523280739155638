"""The two phases of Lottery-Ticket Sparse Fine-Tuning (Ansell et al. 2022) through the shared loop.

Phase 1 fully fine-tunes the targeted weights, as a dense difference beside the frozen base
weights (so theta0 is never copied and the reset is exact); the ``K`` entries with the largest
``|theta1 - theta0|`` over all targeted weights together become the mask. Phase 2 restarts from
theta0 and trains only those ``K`` values: their gradient is a sampled dense-dense product, and
gradients and AdamW moments exist only for the values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...composition import Composition, Stack, adapter_names
from ...errors import ConfigError
from ...kernels import global_topk
from ...model import AdaptedModel
from ...sites import AdaptedLinear
from ...training import TrainConfig, TrainResult, train
from ...training.loop import Collate, EvalFn, LossFn, SaveFn
from .config import SparseFTConfig
from .layer import SparseDeltaLayer, SparseValuesLayer

__all__ = ["LTSFTResult", "select_mask", "train_lt_sft", "values_in_weights"]


@dataclasses.dataclass
class LTSFTResult:
    """What :func:`train_lt_sft` did.

    Attributes:
        config: The phase-2 config (with the selected mask) the adapter now has.
        selected: Number of entries kept.
        phase1: The phase-1 run.
        phase2: The phase-2 run.
    """

    config: SparseFTConfig
    selected: int
    phase1: TrainResult
    phase2: TrainResult


def _phase1_layers(am: AdaptedModel, name: str) -> list[tuple[str, SparseDeltaLayer]]:
    """``(site key, layer)`` of a phase-1 ``sparse_ft`` adapter."""
    root, _ = am.interface.find_blocks(am.model)
    suffix = f".adapters.{name}"
    found = []
    for path, module in am.model.named_modules():
        if isinstance(module, SparseDeltaLayer) and path.endswith(suffix):
            site = path[: -len(suffix)]
            found.append((site[len(root) :] if site.startswith(root) else site, module))
    return found


@torch.no_grad()
def select_mask(am: AdaptedModel, name: str) -> SparseFTConfig:
    """Picks the entries of largest phase-1 change over all of an adapter's weights together.

    Memory beyond the adapter is a few temporaries the size of its largest weight plus the
    selected positions (:func:`polyglot_adapters.kernels.global_topk`).

    Returns:
        The adapter's config in phase 2: sites with no selected entry are left out.

    Raises:
        ConfigError: If ``name`` is not a phase-1 ``sparse_ft`` adapter or its differences are not finite.
    """
    config = am.adapters.get(name)
    layers = _phase1_layers(am, name)
    if not isinstance(config, SparseFTConfig) or config.mask is not None or not layers:
        raise ConfigError(f"adapter {name!r} is not a phase-1 sparse_ft adapter (a SparseFTConfig without mask)")
    deltas = [layer.sft_delta for _, layer in layers]
    if not all(bool(torch.isfinite(d).all()) for d in deltas):
        raise ConfigError(f"adapter {name!r}: phase-1 differences are not finite; lower the learning rate")
    k = config.count(sum(d.numel() for d in deltas))
    chosen = global_topk(deltas, k)
    return config.with_mask({key: idx for (key, _), idx in zip(layers, chosen, strict=True) if idx.numel()})


@contextlib.contextmanager
def values_in_weights(am: AdaptedModel, name: str) -> Iterator[bool]:
    """Lets the base weights hold a phase-2 adapter's values while training it (the fast path).

    Inside, each forward of a base layer sees ``base + values`` in its weight (rewritten at the
    positions only when the values changed, e.g. after an optimizer step), so a training step
    costs the base model's forward and backward plus the sampled gradient of the values, with
    no sparse product. On exit the weights' original entries are restored bit-exactly. This is
    exact only where the adapter acts first on every row; under other compositions (a
    ``Route``, or a ``Stack`` whose earlier adapters share its sites) nothing is bound and the
    adapter runs as a sparse product. Do not merge, unmerge or apply diffs to the same weights
    inside (exiting restores the entries as they were on entry).

    Yields:
        Whether the values are held in the weights.
    """
    bound: list[tuple[SparseValuesLayer, AdaptedLinear]] = []
    for wrapper in am.model.modules():
        layer = wrapper.layer(name) if isinstance(wrapper, AdaptedLinear) else None
        if isinstance(layer, SparseValuesLayer):
            bound.append((layer, wrapper))
    active = am.active
    others = set() if active is None else set(adapter_names(active)) - {name}
    first = active == name or (
        isinstance(active, Stack)
        and all(isinstance(child, str) for child in active.children)
        and (active.children[0] == name or not any(w.layer(o) for _, w in bound for o in others))
    )
    if not bound or not first:
        yield False
        return
    handles = []
    try:
        for layer, wrapper in bound:
            layer.bind(wrapper.base_layer.weight)
            handles.append(wrapper.base_layer.register_forward_pre_hook(lambda _m, _a, layer=layer: layer.sync()))
        yield True
    finally:
        for handle in handles:
            handle.remove()
        for layer, _ in bound:
            layer.unbind()


def _with_l1(loss_fn: LossFn, params: Sequence[nn.Parameter], weight: float) -> LossFn:
    """``loss_fn`` plus ``weight * sum |p|`` over ``params`` (the pull towards the base weights)."""
    if weight == 0:
        return loss_fn

    def loss(model: nn.Module, batch: Any) -> torch.Tensor:
        return loss_fn(model, batch) + weight * sum(p.abs().sum() for p in params)

    return loss


def train_lt_sft(
    am: AdaptedModel,
    name: str,
    config: SparseFTConfig,
    dataset: Sequence[Any],
    collate: Collate,
    loss_fn: LossFn,
    phase1: TrainConfig,
    phase2: TrainConfig,
    *,
    composition: Composition | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    eval_fn: EvalFn | None = None,
    save_fn: SaveFn | None = None,
    progress: bool = True,
) -> LTSFTResult:
    """Adds a ``sparse_ft`` adapter and trains it in the two LT-SFT phases.

    Args:
        am: The adapted model; the adapter is added under ``name``.
        name: Adapter name (not yet attached).
        config: A config without mask: targets, density and L1 weight.
        dataset: Training examples.
        collate: ``(examples, seeds) -> batch``.
        loss_fn: ``(model, batch) -> scalar loss``.
        phase1: Loop settings of the dense phase.
        phase2: Loop settings of the sparse phase.
        composition: What to train under (e.g. ``Stack("sw", name)`` over a language adapter);
            it must name the adapter. Default: the adapter alone.
        out_dir: Where ``phase1/`` and ``phase2/`` runs (checkpoints, metrics) go.
        eval_fn: Evaluation for both phases.
        save_fn: Saves the best model of phase 2.
        progress: Show progress bars.

    Returns:
        The phase-2 config and both runs; the adapter is left in phase 2 and active.

    Raises:
        ConfigError: If the config already has a mask, its count ``density`` exceeds the targeted
            entries, or the composition does not name the adapter (nothing is trained or attached).
    """
    if not isinstance(config, SparseFTConfig) or config.mask is not None:
        raise ConfigError("train_lt_sft needs a SparseFTConfig without mask (the mask is what phase 1 selects)")
    active = name if composition is None else composition
    am.add_adapter(name, config)
    if name not in adapter_names(active):
        am.delete_adapter(name)
        raise ConfigError(f"the composition {composition!r} does not name the adapter {name!r}")
    try:  # a K beyond the targeted entries fails now, not after phase 1
        config.count(sum(layer.sft_delta.numel() for _, layer in _phase1_layers(am, name)))
    except ConfigError:
        am.delete_adapter(name)
        raise
    runs = [None if out_dir is None else Path(out_dir) / phase for phase in ("phase1", "phase2")]

    def run(settings: TrainConfig, out: Path | None, save: SaveFn | None) -> TrainResult:
        am.set_active(active)
        params = [am.trainable_parameters()[n] for n in am.train_adapters(name)]
        loss = _with_l1(loss_fn, params, config.l1)
        return train(
            am, dataset, collate, loss, settings, out_dir=out, eval_fn=eval_fn, save_fn=save, progress=progress
        )

    first = run(phase1, runs[0], None)
    selected = select_mask(am, name)
    # Phase 2 starts from theta0: the dense difference is dropped, the new values start at zero.
    am.delete_adapter(name)
    am.add_adapter(name, selected)
    am.set_active(active)
    with values_in_weights(am, name):
        second = run(phase2, runs[1], save_fn)
    return LTSFTResult(config=selected, selected=am.num_parameters(name), phase1=first, phase2=second)
