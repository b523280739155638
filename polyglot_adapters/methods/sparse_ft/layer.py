"""Sparse fine-tuning layers: a dense difference (phase 1) or sparse values at fixed positions (phase 2)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...config import check
from ...interfaces import HostInterface
from ...kernels import sampled_dense_dense, sparse_delta_matmul
from ...kernels.rows import sparse_rows, stack_padded
from ...sites import AdapterLayer, Site
from ..targets import linear_sites
from .config import SparseFTConfig, decode_mask

__all__ = ["SparseDeltaLayer", "SparseValuesLayer", "build_layer", "find_sites", "sparse_linear"]


class _SparseLinear(torch.autograd.Function):
    """``x @ D.T`` for sparse ``D``; the values' gradient is sampled, so no dense weight gradient exists."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        values: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        shape: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, values, rows, cols)
        ctx.shape = shape
        return sparse_delta_matmul(x, rows, cols, values, shape)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, values, rows, cols = ctx.saved_tensors
        grad_x = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = sparse_delta_matmul(grad_out, rows, cols, values, ctx.shape, transpose=True)
        if ctx.needs_input_grad[1]:
            grad_values = sampled_dense_dense(grad_out, x, rows, cols)
        return grad_x, grad_values, None, None, None


def sparse_linear(
    x: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Applies the sparse ``(out, in)`` matrix ``D[rows[j], cols[j]] = values[j]`` to ``x``.

    Args:
        x: ``(..., in)``.
        values: ``(k,)``, differentiable; its gradient is ``sum_t grad[t, rows[j]] * x[t, cols[j]]``.
        rows: ``(k,)`` int64, entries sorted row-major and unique.
        cols: ``(k,)`` int64.
        shape: ``(out, in)``.

    Returns:
        ``(..., out)``.
    """
    flat = x.reshape(-1, shape[1])  # (N, in)
    out = _SparseLinear.apply(flat, values, rows, cols, shape)  # (N, out)
    return out.reshape(*x.shape[:-1], shape[0])


class _ValuesInWeight(torch.autograd.Function):
    """Identity on the output of a weight that already holds the values; the values' gradient is sampled."""

    @staticmethod
    def forward(
        ctx: Any, y: torch.Tensor, x: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x, rows, cols)
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, rows, cols = ctx.saved_tensors
        grad_values = None
        if ctx.needs_input_grad[2]:
            flat = grad_out.reshape(-1, grad_out.shape[-1])  # (N, out)
            grad_values = sampled_dense_dense(flat, x.reshape(-1, x.shape[-1]), rows, cols)
        return grad_out, None, grad_values, None, None


class SparseDeltaLayer(AdapterLayer):
    """Phase 1: adds ``x @ sft_delta.T``, a dense difference to the weight; starts at zero (identity)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.sft_delta = nn.Parameter(torch.zeros(out_features, in_features))

    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Returns ``y + x @ delta.T``; ``x`` is ``(..., in)``, ``y`` is ``(..., out)``."""
        return y + F.linear(x, self.sft_delta)

    def delta_weight(self) -> torch.Tensor:
        """Returns the dense ``(out, in)`` difference."""
        return self.sft_delta


class SparseValuesLayer(AdapterLayer):
    """Phase 2: adds ``x @ D.T`` where ``D`` is zero except ``sft_values`` at fixed positions.

    The positions are a buffer that is not saved with the tensors: the config's mask holds them.

    While bound to its base weight (:meth:`bind`, used by phase-2 training), the weight itself
    holds ``base + values`` at the positions, refreshed before each forward of the base layer
    whenever the values changed: the forward is the base layer's alone and the backward adds
    only the sampled gradient of the values (no sparse product, no dense weight gradient).
    """

    def __init__(self, in_features: int, out_features: int, positions: torch.Tensor) -> None:
        super().__init__()
        self.shape = (out_features, in_features)
        self.sft_values = nn.Parameter(torch.zeros(positions.numel()))
        self.register_buffer("sft_rows", positions // in_features, persistent=False)
        self.register_buffer("sft_cols", positions % in_features, persistent=False)
        # (weight, flat positions, its original entries there, version of the values written in it)
        self.__dict__["_bound"] = None

    @property
    def positions(self) -> torch.Tensor:
        """``(k,)`` int64 row-major flat positions in the weight."""
        return self.sft_rows * self.shape[1] + self.sft_cols

    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Returns ``y + x @ D.T``; ``x`` is ``(..., in)``, ``y`` is ``(..., out)``."""
        if self._bound is not None:
            return _ValuesInWeight.apply(y, x, self.sft_values, self.sft_rows, self.sft_cols)
        return y + sparse_linear(x, self.sft_values, self.sft_rows, self.sft_cols, self.shape)

    @torch.no_grad()
    def bind(self, weight: torch.Tensor) -> None:
        """Makes ``weight`` (the base layer's ``(out, in)`` weight, frozen, contiguous) hold the values.

        Raises:
            ConfigError: If already bound, or ``weight`` has another shape or is not contiguous.
        """
        check(self._bound is None, "sparse_ft layer is already bound to a weight")
        check(
            tuple(weight.shape) == self.shape and weight.is_contiguous(),
            f"sparse_ft layer of shape {self.shape} cannot hold its values in a weight of shape {tuple(weight.shape)}",
        )
        positions = self.positions
        self.__dict__["_bound"] = (weight, positions, weight.detach().view(-1)[positions].clone(), None)
        self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """Writes ``original + values`` into the bound weight if the values changed since the last write."""
        if self._bound is None:
            return
        weight, positions, original, version = self._bound
        if version == self.sft_values._version:
            return
        merged = (original.to(self.sft_values.dtype) + self.sft_values).to(weight.dtype)
        weight.detach().view(-1).index_copy_(0, positions, merged)
        self.__dict__["_bound"] = (weight, positions, original, self.sft_values._version)

    @torch.no_grad()
    def unbind(self) -> None:
        """Restores the bound weight's original entries bit-exactly; a no-op when not bound."""
        if self._bound is None:
            return
        weight, positions, original, _ = self._bound
        weight.detach().view(-1).index_copy_(0, positions, original)
        self.__dict__["_bound"] = None

    def delta_weight(self) -> torch.Tensor:
        """Returns ``D`` dense, ``(out, in)``."""
        dense = self.sft_values.new_zeros(self.shape[0] * self.shape[1])
        return dense.index_add(0, self.positions, self.sft_values).view(self.shape)

    def route_key(self) -> Hashable | None:
        """Unbound diffs of one weight shape fuse per row; a bound one is in the weight, for every row."""
        return None if self._bound is not None else self.shape

    @classmethod
    def route_weights(cls, layers: Sequence[AdapterLayer]) -> tuple[torch.Tensor, ...]:
        """Entries stacked ``(n, k)`` (rows, cols, values), zero-padded to the largest diff."""
        return (
            stack_padded([layer.sft_rows for layer in layers]),
            stack_padded([layer.sft_cols for layer in layers]),
            stack_padded([layer.sft_values for layer in layers]),
        )

    @classmethod
    def route(
        cls,
        layers: Sequence[AdapterLayer],
        weights: tuple[torch.Tensor, ...],
        index: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        tap: torch.Tensor | None,
    ) -> torch.Tensor:
        """``y[b] + x[b] @ D[a].T`` for each row's diff ``a = index[b]``, all rows in one pass (sampled gradients).

        Args:
            layers: Unbound phase-2 layers of one weight shape.
            weights: Their :meth:`route_weights`.
            index: ``(B,)`` int64 in ``[-1, len(layers))``.
            x: ``(B, T, in)``.
            y: ``(B, T, out)``.
            tap: Unused.

        Returns:
            ``(B, T, out)``.
        """
        rows, cols, values = weights
        return sparse_rows(x, y, rows, cols, values, index)


def find_sites(config: SparseFTConfig, host: nn.Module, interface: HostInterface) -> list[Site]:
    """One site per targeted linear layer; in phase 2 only those the mask names.

    Raises:
        ConfigError: If the mask names a site the targets do not select.
    """
    sites = linear_sites(host, interface, config.targets, config.layers)
    if config.mask is None:
        return sites
    keys = {key for key, _ in config.mask}
    unknown = sorted(keys - {site.key for site in sites})
    check(not unknown, f"sparse_ft mask names sites the targets do not select: {unknown[:3]}")
    return [site for site in sites if site.key in keys]


def build_layer(config: SparseFTConfig, site: Site, peer: AdapterLayer | None) -> AdapterLayer:
    """Builds the phase-1 or phase-2 layer for one linear layer.

    Raises:
        ConfigError: If a mask position lies outside the weight.
    """
    if config.mask is None:
        return SparseDeltaLayer(site.in_features, site.out_features)
    positions = dict(config.mask)
    idx = decode_mask(positions[site.key])
    size = site.in_features * site.out_features
    check(
        idx.numel() == 0 or int(idx[-1]) < size,
        f"sparse_ft mask position {int(idx[-1]) if idx.numel() else 0} is outside {site.key} ({size} entries)",
    )
    return SparseValuesLayer(site.in_features, site.out_features, idx)
