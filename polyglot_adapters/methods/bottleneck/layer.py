"""Bottleneck and invertible-coupling layers and their placement."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...config import check
from ...errors import CompositionError
from ...interfaces import HostInterface
from ...kernels.rows import bottleneck_rows, stack_padded
from ...sites import AdapterLayer, Site, base_linears, unwrap
from ..targets import selected_blocks
from .config import BottleneckConfig

__all__ = ["BottleneckLayer", "InverseCoupling", "InvertibleCoupling", "build_layer", "find_sites"]

_ACT = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


def _bottleneck_params(module: nn.Module, prefix: str, in_features: int, hidden: int, out_features: int) -> None:
    """Registers ``{prefix}_down``/``_up`` weights and biases; up is zero so the branch starts at 0."""
    down = nn.Parameter(torch.empty(hidden, in_features))
    nn.init.kaiming_uniform_(down, a=math.sqrt(5))
    module.register_parameter(f"{prefix}_down", down)
    module.register_parameter(f"{prefix}_down_bias", nn.Parameter(torch.zeros(hidden)))
    module.register_parameter(f"{prefix}_up", nn.Parameter(torch.zeros(out_features, hidden)))
    module.register_parameter(f"{prefix}_up_bias", nn.Parameter(torch.zeros(out_features)))


def _branch(module: nn.Module, prefix: str, h: torch.Tensor, act: str) -> torch.Tensor:
    down = F.linear(h, getattr(module, f"{prefix}_down"), getattr(module, f"{prefix}_down_bias"))
    return F.linear(_ACT[act](down), getattr(module, f"{prefix}_up"), getattr(module, f"{prefix}_up_bias"))


class BottleneckLayer(AdapterLayer):
    """``h + s * up(act(down(src)))`` on the sub-layer output ``h``; ``src`` depends on the placement.

    ``src`` is ``h`` (series), the sub-layer input ``x`` (parallel) or the host's post-residual
    LayerNorm of ``h + x`` (pfeiffer; the norm comes through :meth:`attach_norm`).
    """

    def __init__(self, features: int, bottleneck: int, act: str, scaling: float, placement: str) -> None:
        super().__init__()
        _bottleneck_params(self, "bn", features, bottleneck, features)
        self.act = act
        self.scaling = scaling
        self.placement = placement

    def source(self, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """What the branch reads, ``(..., hidden)``, from the sub-layer output ``y`` and input ``tap``."""
        if self.placement == "series":
            return y
        if tap is None:
            raise CompositionError(
                f"{self.placement} bottleneck adapter got no sub-layer input; was the host wrapped?"
            )
        if self.placement == "parallel":
            return tap
        norm = self.__dict__.get("norm")
        if norm is None:
            raise CompositionError("pfeiffer bottleneck adapter has no host LayerNorm; attach it with AdaptedModel")
        return norm(y + tap)

    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Adapts the sub-layer output ``y`` ``(..., hidden)``; ``tap`` is the sub-layer input ``(..., hidden)``."""
        return y + self.scaling * _branch(self, "bn", self.source(y, tap), self.act)

    def route_key(self) -> Hashable:
        """Bottlenecks fuse when they share the activation and the placement (widths are zero-padded)."""
        return (self.act, self.placement)

    @classmethod
    def route_weights(cls, layers: Sequence[AdapterLayer]) -> tuple[torch.Tensor, ...]:
        """Stacked down ``(n, m, hidden)``, its bias ``(n, m)``, up ``(n, hidden, m)``, its bias, scalings ``(n,)``."""
        down = stack_padded([b.bn_down for b in layers])
        scaling = torch.tensor([b.scaling for b in layers], dtype=torch.float32).to(down.device)
        return (
            down,
            stack_padded([b.bn_down_bias for b in layers]),
            stack_padded([b.bn_up for b in layers]),
            stack_padded([b.bn_up_bias for b in layers]),
            scaling,
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
        """Row ``b`` goes through ``layers[index[b]]``, all rows in two gathered products (down, up).

        Args:
            layers: Bottleneck layers with one activation and placement, possibly of different widths.
            weights: Their :meth:`route_weights`.
            index: ``(B,)`` int64 in ``[-1, len(layers))``.
            x: ``(B, T, hidden)`` (unused: a bottleneck reads ``y`` or the sub-layer input).
            y: ``(B, T, hidden)`` sub-layer output.
            tap: ``(B, T, hidden)`` sub-layer input, for parallel and Pfeiffer placements.

        Returns:
            ``(B, T, hidden)``.
        """
        first = layers[0]
        down, down_bias, up, up_bias, scaling = weights
        # One placement and one site: every layer reads the same source (one LayerNorm pass for pfeiffer).
        src = first.source(y, tap)
        return bottleneck_rows(src, y, (down, down_bias), (up, up_bias), scaling, index, _ACT[first.act])


class InvertibleCoupling(AdapterLayer):
    """Additive coupling (NICE) on embeddings: ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``; exactly invertible."""

    def __init__(self, features: int, reduction: float, act: str) -> None:
        super().__init__()
        self.split = features // 2
        half_a, half_b = self.split, features - self.split
        # F maps the second half to the first; G maps the first half to the second.
        _bottleneck_params(self, "bn_inv_f", half_b, max(1, int(half_b / reduction)), half_a)
        _bottleneck_params(self, "bn_inv_g", half_a, max(1, int(half_a / reduction)), half_b)
        self.act = act

    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Couples the embedding output ``y`` ``(..., hidden)``."""
        y1, y2 = y[..., : self.split], y[..., self.split :]
        y1 = y1 + _branch(self, "bn_inv_f", y2, self.act)
        y2 = y2 + _branch(self, "bn_inv_g", y1, self.act)
        return torch.cat([y1, y2], dim=-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Undoes :meth:`forward` on ``(..., hidden)``."""
        y1, y2 = y[..., : self.split], y[..., self.split :]
        x2 = y2 - _branch(self, "bn_inv_g", y1, self.act)
        x1 = y1 - _branch(self, "bn_inv_f", x2, self.act)
        return torch.cat([x1, x2], dim=-1)


class InverseCoupling(AdapterLayer):
    """The inverse of an :class:`InvertibleCoupling` owned by another site (no parameters of its own)."""

    def __init__(self, coupling: InvertibleCoupling) -> None:
        super().__init__()
        self.__dict__["coupling"] = coupling  # not a submodule: the embedding site owns it

    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Applies the inverse coupling to ``y`` ``(..., hidden)``: the head's input or the output embedding's."""
        return self.coupling.inverse(y)


def find_sites(config: BottleneckConfig, host: nn.Module, interface: HostInterface) -> list[Site]:
    """Sub-layer sites in each selected block, embedding and head sites if ``invertible``, then ``outputs``."""
    root, blocks = selected_blocks(host, interface, config.layers)
    linears = base_linears(host)
    sites = []
    for position in config.positions:
        check(
            position in interface.sublayers,
            f"position {position!r} is not a sub-layer of {interface.name!r}: {sorted(interface.sublayers)}",
        )
        sub = interface.sublayers[position]
        check(
            config.placement != "pfeiffer" or sub.norm is not None,
            f"sub-layer {position!r} of {interface.name!r} has no post-residual LayerNorm for a pfeiffer "
            "bottleneck (a pre-LN host); use placement 'series'",
        )
        for _, block in blocks:
            out_path, in_path = f"{block}.{sub.output}", f"{block}.{sub.input}"
            check(out_path in linears and in_path in linears, f"{out_path} or {in_path} is not a linear layer")
            norm_path = f"{block}.{sub.norm}" if config.placement == "pfeiffer" else None
            if norm_path is not None:
                check(_is_layer_norm(host, norm_path), f"{norm_path} is not a LayerNorm of the host")
            hidden = linears[out_path].out_features
            sites.append(
                Site(
                    path=out_path,
                    key=out_path[len(root) :],
                    role="sublayer",
                    in_features=hidden,
                    out_features=hidden,
                    tap=in_path if config.placement != "series" else None,
                    norm=norm_path,
                )
            )
    if config.invertible:
        check(
            interface.embeddings is not None,
            f"interface {interface.name!r} has no embeddings for an invertible adapter",
        )
        check(bool(sites), "an invertible adapter needs at least one adapted block; 'layers' is empty")
        emb_path = f"{root}{interface.embeddings}"
        hidden = sites[0].out_features
        sites.append(
            Site(path=emb_path, key=interface.embeddings, role="embeddings", in_features=hidden, out_features=hidden)
        )
        inverse = _inverse_site(config, host, interface, hidden, emb_path)
        if inverse is not None:
            sites.append(inverse)
    for name in config.outputs:
        check(
            name in interface.outputs,
            f"output {name!r} is not an adaptable output of {interface.name!r}: {sorted(interface.outputs)}",
        )
        path = interface.outputs[name]
        check(path in linears, f"output {name!r} -> {path} is not a linear layer of the host")
        features = linears[path].out_features
        sites.append(
            Site(path=path, key=path, role="linear", in_features=linears[path].in_features, out_features=features)
        )
    return sites


def _inverse_site(
    config: BottleneckConfig, host: nn.Module, interface: HostInterface, hidden: int, emb_path: str
) -> Site | None:
    """Where the inverse coupling goes: the head's input, or the output embedding's input (``inverse_at``)."""
    if config.inverse_at == "head":
        path, role = interface.head, "head"
    else:
        check(
            interface.decoder_input is not None,
            f"interface {interface.name!r} names no output-embedding input; use inverse_at='head'",
        )
        path, role = interface.decoder_input, "decoder_input"
    if path is None:
        return None
    try:
        unwrap(host.get_submodule(path))
    except AttributeError:
        return None  # a backbone without a head: nothing to invert
    return Site(path=path, key=path, role=role, in_features=hidden, out_features=hidden, peer=emb_path)


def _is_layer_norm(host: nn.Module, path: str) -> bool:
    try:
        return isinstance(unwrap(host.get_submodule(path)), nn.LayerNorm)
    except AttributeError:
        return False


def build_layer(config: BottleneckConfig, site: Site, peer: AdapterLayer | None) -> AdapterLayer:
    """Builds the layer for one site: bottleneck, coupling, or the coupling's inverse."""
    if site.role == "embeddings":
        return InvertibleCoupling(site.out_features, config.invertible_reduction, config.non_linearity)
    if site.role in ("head", "decoder_input"):
        assert isinstance(peer, InvertibleCoupling), "the inverse's site is built after its embedding site"
        return InverseCoupling(peer)
    bottleneck = max(1, int(site.out_features / config.reduction_factor))
    return BottleneckLayer(site.out_features, bottleneck, config.non_linearity, config.scaling, config.placement)
