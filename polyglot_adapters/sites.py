"""Wrappers that host adapter layers at one place of the base model, and composition evaluation.

A *site* is a module of the host (usually an ``nn.Linear``) replaced by a wrapper that keeps the
original module as ``base_layer``, runs it, then lets the active composition transform its output.
The wrappers hold a reference to the :class:`ActiveState` owned by the ``AdaptedModel``: the
composition is passed explicitly, never through global or thread-local state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from .composition import Average, Composition, Gate, Parallel, Route, Stack
from .errors import CompositionError

__all__ = [
    "ActiveState",
    "AdaptedLinear",
    "AdaptedModule",
    "AdapterLayer",
    "GateLayer",
    "Site",
    "Tap",
    "base_linears",
    "link_tap",
    "unwrap",
]


@dataclasses.dataclass(frozen=True)
class Site:
    """A place in the host where a method attaches a layer.

    Attributes:
        path: Module path in the host (``bert.encoder.layer.0.output.dense``).
        key: The same path relative to the backbone root (``encoder.layer.0.output.dense``);
            saved files use it so adapters move between a backbone and its task models.
        role: ``linear`` (act on a linear layer's output), ``sublayer`` (a residual sub-layer's
            output linear), ``embeddings`` (embedding output), ``head`` (input of the output head)
            or ``decoder_input`` (output of the head module that feeds the output embedding).
        in_features: Size of the wrapped module's input (``linear``/``sublayer``) or hidden size.
        out_features: Size of the wrapped module's output.
        tap: For ``sublayer`` sites, path of the linear layer whose input is the sub-layer input.
        peer: Path of another site whose layer this site's layer reuses (shared parameters).
        norm: Path of a host normalisation module the layer calls at forward time (the LayerNorm a
            Pfeiffer bottleneck reads); the model hands it over with :meth:`AdapterLayer.attach_norm`.
    """

    path: str
    key: str
    role: Literal["linear", "sublayer", "embeddings", "head", "decoder_input"]
    in_features: int
    out_features: int
    tap: str | None = None
    peer: str | None = None
    norm: str | None = None


class AdapterLayer(nn.Module):
    """One adapter's modules at one site. Subclasses implement :meth:`forward`."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Maps the site's current output to the adapted output.

        Args:
            x: Input of the wrapped module, ``(..., in_features)``.
            y: Current output, ``(..., out_features)``: the base output or the previous adapter's.
            tap: Input of the enclosing sub-layer, ``(..., hidden)``, for parallel and Pfeiffer placements.

        Returns:
            The new output, same shape as ``y``.
        """
        raise NotImplementedError

    def attach_norm(self, norm: nn.Module) -> None:
        """Keeps a reference to the host module named by ``Site.norm`` (not a submodule: the host owns it)."""
        self.__dict__["norm"] = norm

    def delta_weight(self) -> torch.Tensor | None:
        """Returns the dense ``(out, in)`` weight change equal to this layer, or ``None`` if non-linear."""
        return None

    def route_key(self) -> Hashable | None:
        """Layers of one class with equal keys run together in :meth:`route`; ``None``: never fused."""
        return None

    @classmethod
    def route_weights(cls, layers: Sequence[AdapterLayer]) -> tuple[torch.Tensor, ...]:
        """The layers' tensors stacked along a new leading adapter dimension, for :meth:`route`.

        Differentiable; sites cache the result while gradients are off (inference), keyed by the
        layers and their parameters' storage and version counters.
        """
        raise NotImplementedError

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
        """Applies ``layers[index[b]]`` to row ``b`` of the batch in one pass (``Route``'s fused path).

        Args:
            layers: Layers of this class with equal :meth:`route_key`.
            weights: :meth:`route_weights` of ``layers``.
            index: ``(B,)`` int64 in ``[-1, len(layers))``; rows with ``-1`` keep ``y`` unchanged.
            x: ``(B, T, in_features)``, batch first.
            y: ``(B, T, out_features)``.
            tap: ``(B, T, hidden)`` or ``None``.

        Returns:
            ``(B, T, out_features)``: what each layer's :meth:`forward` gives for its rows.
        """
        raise NotImplementedError


class GateLayer(nn.Module):
    """Per-token softmax gate over ``k`` branches; zero weight, so it starts at the mixture ``softmax(bias)``.

    Args:
        features: Width of the site output the gate reads.
        k: Number of branches.
        prior: Starting mixture weights (positive, summing to 1); ``None`` for uniform.
    """

    def __init__(self, features: int, k: int, prior: Sequence[float] | None = None) -> None:
        super().__init__()
        self.gate_weight = nn.Parameter(torch.zeros(k, features))
        bias = torch.zeros(k) if prior is None else torch.tensor(prior, dtype=torch.float32).log()
        self.gate_bias = nn.Parameter(bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Maps ``(..., features)`` to mixture weights ``(..., k)`` that sum to 1."""
        return torch.softmax(nn.functional.linear(y, self.gate_weight, self.gate_bias), dim=-1)


class Tap:
    """Holds the input of a sub-layer from its first linear layer until its last one reads it."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None


@dataclasses.dataclass
class ActiveState:
    """What the sites read at forward time; owned and changed only by the ``AdaptedModel``.

    Attributes:
        composition: The active composition, or ``None`` for the bare base model.
        merged: Names of adapters folded into base weights (skipped at forward time).
        batch_dim: Batch dimension of activations at the sites.
        version: Bumped whenever adapters are added, deleted, merged or unmerged (sites cache
            per-composition plans against it).
    """

    composition: Composition | None = None
    merged: set[str] = dataclasses.field(default_factory=set)
    batch_dim: int = 0
    version: int = 0


class _SiteMixin:
    """Adapter storage and composition evaluation shared by both wrappers."""

    base_layer: nn.Module
    adapters: nn.ModuleDict
    gates: nn.ModuleDict
    state: ActiveState
    site: Site

    def _init_site(self, base: nn.Module, site: Site, state: ActiveState) -> None:
        self.base_layer = base
        self.adapters = nn.ModuleDict()
        self.gates = nn.ModuleDict()
        # Plain attributes, not submodules: the state and the tap are shared with other sites.
        self.__dict__["state"] = state
        self.__dict__["site"] = site
        self.__dict__["tap_in"] = None
        self.__dict__["tap_out"] = None
        self.__dict__["shared"] = {}

    def add_layer(self, name: str, layer: AdapterLayer, *, register: bool = True) -> None:
        """Attaches an adapter's layer; ``register=False`` keeps a layer owned by another site."""
        if register:
            self.adapters[name] = layer
        else:
            self.shared[name] = layer

    def remove_layer(self, name: str) -> None:
        """Detaches an adapter's layer if present."""
        if name in self.adapters:
            del self.adapters[name]
        self.shared.pop(name, None)

    def layer(self, name: str) -> AdapterLayer | None:
        """Returns the adapter's layer at this site, or ``None``."""
        if name in self.adapters:
            return self.adapters[name]
        return self.shared.get(name)

    def has_any(self, node: Composition) -> bool:
        """Whether any adapter of ``node`` has a layer here."""
        if isinstance(node, str):
            return self.layer(node) is not None
        return any(self.has_any(child) for child in node.children)

    def adapt(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Applies the active composition to this site's output ``y``."""
        node = self.state.composition
        if node is None:
            return y
        return self._eval(node, x, y, tap)

    def _eval(self, node: Composition, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        if isinstance(node, str):
            layer = self.layer(node)
            if layer is None or node in self.state.merged:
                return y
            return layer(x, y, tap)
        if isinstance(node, Stack):
            for child in node.children:
                y = self._eval(child, x, y, tap)
            return y
        dim = self.state.batch_dim
        if isinstance(node, Route):
            return self._route(node, x, y, tap, dim)
        if not self.has_any(node):
            return y
        # Both mixtures add weighted branch contributions (f_i - y) to y; with weights summing to
        # 1 this equals the weighted mean of the branch outputs, and absent branches add nothing.
        if isinstance(node, Average):
            out = y
            for child, w in zip(node.children, node.weights, strict=True):
                out = out + w * (self._eval(child, x, y, tap) - y)
            return out
        if isinstance(node, Gate):
            weights = self.gates[node.name](y)  # (..., k)
            out = y
            for i, child in enumerate(node.children):
                out = out + weights[..., i : i + 1] * (self._eval(child, x, y, tap) - y)
            return out
        if isinstance(node, Parallel):
            k = len(node.children)
            rows = y.shape[dim]
            if rows % k:
                raise CompositionError(f"Parallel with {k} branches got {rows} rows at {self.site.path}")
            parts = [t.chunk(k, dim) if t is not None else (None,) * k for t in (x, y, tap)]
            outs = [self._eval(c, xi, yi, ti) for c, xi, yi, ti in zip(node.children, *parts, strict=True)]
            return torch.cat(outs, dim)
        raise CompositionError(f"cannot evaluate composition node {node!r}")

    def _route(
        self, node: Route, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None, dim: int
    ) -> torch.Tensor:
        rows = y.shape[dim]
        if rows != node.ids.numel():
            raise CompositionError(
                f"Route has {node.ids.numel()} ids but the batch has {rows} rows at {self.site.path}"
            )
        if len(node.groups) == 1:
            return self._eval(node.mapping[node.groups[0][0]], x, y, tap)
        fused = self._route_fused(node, x, y, tap, dim) if node.fuse else None
        if fused is not None:
            return fused
        if not self.has_any(node):
            return y
        order = node.order.to(y.device)
        xs, ys = x.index_select(dim, order), y.index_select(dim, order)
        taps = tap.index_select(dim, order) if tap is not None else None
        outs = []
        for gid, start, end in node.groups:
            xi, yi = xs.narrow(dim, start, end - start), ys.narrow(dim, start, end - start)
            ti = taps.narrow(dim, start, end - start) if taps is not None else None
            outs.append(self._eval(node.mapping[gid], xi, yi, ti))
        return torch.cat(outs, dim).index_select(dim, node.inverse.to(y.device))

    def _route_fused(
        self, node: Route, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None, dim: int
    ) -> torch.Tensor | None:
        """All rows in one pass per kind of layer, or ``None`` where some group cannot be fused here."""
        plan = self._route_plan(node)
        if plan is None:
            return None
        if not plan:
            return y

        def batch_first(t: torch.Tensor) -> torch.Tensor:
            t = t.movedim(dim, 0)
            return t.reshape(t.shape[0], -1, t.shape[-1])  # (B, T, features)

        xb, yb = batch_first(x), batch_first(y)
        tb = batch_first(tap) if tap is not None else None
        for part in plan:
            yb = part.cls.route(part.layers, part.weights(), part.index(y.device), xb, yb, tb)
        moved = y.movedim(dim, 0).shape
        return yb.reshape(moved).movedim(0, dim)

    def _route_plan(self, node: Route) -> list[_FusedPart] | None:
        """The fused parts of ``node`` at this site: one per kind of layer (class, route key).

        ``None`` when a group with a layer here is not a single fusable adapter; ``[]`` when no group
        has a layer here. Cached per composition until adapters change (``state.version``), so the
        Python work of resolving the batch's adapters happens once per site, not at every call.
        """
        cached = self.__dict__.get("route_plan")
        if cached is not None and cached[0] is node and cached[1] == self.state.version:
            return cached[2]
        parts: dict[tuple[type, Hashable], list[int]] = {}  # (layer class, route key) -> group positions
        layers: list[AdapterLayer | None] = []
        plan: list[_FusedPart] | None = []
        for gid, _, _ in node.groups:
            name = node.mapping[gid]
            layer = None
            if isinstance(name, str):
                layer = None if name in self.state.merged else self.layer(name)
            elif self.has_any(name):
                plan = None  # a nested composition with layers here: one pass per group
                break
            layers.append(layer)
            if layer is not None:
                key = layer.route_key()
                if key is None:
                    plan = None
                    break
                parts.setdefault((type(layer), key), []).append(len(layers) - 1)
        if plan is not None:
            for (cls, _), positions in parts.items():
                lookup = torch.full((len(node.groups),), -1, dtype=torch.long)
                lookup[positions] = torch.arange(len(positions))
                plan.append(_FusedPart(cls, [layers[p] for p in positions], lookup[node.group_index]))
        self.__dict__["route_plan"] = (node, self.state.version, plan)
        return plan


class _FusedPart:
    """Layers of one kind that a site runs together for a ``Route``, with each row's slot among them.

    Attributes:
        cls: The layers' class (its :meth:`AdapterLayer.route` runs them).
        layers: The layers, in slot order.
        rows: ``(B,)`` int64 on CPU: each row's slot, ``-1`` for rows of other layers.
    """

    __slots__ = ("_index", "_params", "_weights", "cls", "layers", "rows")

    def __init__(self, cls: type[AdapterLayer], layers: list[AdapterLayer], rows: torch.Tensor) -> None:
        self.cls, self.layers, self.rows = cls, layers, rows
        self._params = [p for layer in layers for p in layer.parameters()]
        self._index: dict[tuple[torch.device, bool], torch.Tensor] = {}
        self._weights: dict[bool, tuple[Any, tuple[torch.Tensor, ...]]] = {}

    def index(self, device: torch.device) -> torch.Tensor:
        """``rows`` on ``device``, copied once per device and mode (inference tensors never enter autograd)."""
        key = (device, torch.is_inference_mode_enabled())
        if key not in self._index:
            self._index[key] = self.rows.to(device, copy=True)
        return self._index[key]

    def weights(self) -> tuple[torch.Tensor, ...]:
        """The layers' stacked tensors; without gradients, reused until a parameter changes or moves."""
        if torch.is_grad_enabled():
            return self.cls.route_weights(self.layers)
        mode = torch.is_inference_mode_enabled()
        # In-place updates bump version counters; a device or dtype move gives new storage.
        stamp = (self._params[0].data_ptr() if self._params else 0, tuple(p._version for p in self._params))
        hit = self._weights.get(mode)
        if hit is None or hit[0] != stamp:
            hit = self._weights[mode] = (stamp, self.cls.route_weights(self.layers))
        return hit[1]


class AdaptedLinear(_SiteMixin, nn.Module):
    """Wraps an ``nn.Linear``: ``y = adapt(x, base(x))``."""

    def __init__(self, base: nn.Linear, site: Site, state: ActiveState) -> None:
        super().__init__()
        self._init_site(base, site, state)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (some hosts read ``module.weight`` directly)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs the base layer and the active adapters.

        Args:
            x: ``(..., in_features)``.

        Returns:
            ``(..., out_features)``.
        """
        if self.tap_out is not None:
            self.tap_out.value = x
        y = self.base_layer(x)
        tap = None
        if self.tap_in is not None:
            tap, self.tap_in.value = self.tap_in.value, None
        if not self.adapters and not self.shared:
            return y
        return self.adapt(x, y, tap)


class AdaptedModule(_SiteMixin, nn.Module):
    """Wraps a non-linear module: adapters act on its input (``head``) or its output (other roles)."""

    def __init__(self, base: nn.Module, site: Site, state: ActiveState) -> None:
        super().__init__()
        self._init_site(base, site, state)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            # Hosts read attributes of their submodules (e.g. ``embeddings.word_embeddings``).
            return getattr(self.base_layer, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the base module; adapters transform its first input (head) or its output."""
        if self.site.role == "head":
            hidden, *rest = args
            hidden = self.adapt(hidden, hidden, None)
            return self.base_layer(hidden, *rest, **kwargs)
        out = self.base_layer(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return self.adapt(out, out, None)
        first = self.adapt(out[0], out[0], None)
        return (first, *out[1:])


def link_tap(source: AdaptedLinear, target: AdaptedLinear) -> None:
    """Makes ``source`` hand its input to ``target`` (a sub-layer's first and last linear layers)."""
    tap = Tap()
    source.__dict__["tap_out"] = tap
    target.__dict__["tap_in"] = tap


def unwrap(module: nn.Module) -> nn.Module:
    """Returns the original module behind a site wrapper (or the module itself)."""
    return module.base_layer if isinstance(module, AdaptedLinear | AdaptedModule) else module


def base_linears(host: nn.Module) -> dict[str, nn.Linear]:
    """Maps module paths to the host's linear layers, seeing through site wrappers."""
    out = {}
    for path, module in host.named_modules():
        if path.endswith(".base_layer") or ".base_layer." in path or ".adapters." in path or ".gates." in path:
            continue
        module = unwrap(module)
        if isinstance(module, nn.Linear):
            out[path] = module
    return out
