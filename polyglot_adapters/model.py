"""``AdaptedModel``: attach, compose, train, merge, save and load adapters on a frozen host."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import methods  # noqa: F401  (registers every method)
from .composition import Composition, Gate, Parallel, adapter_names, validate
from .config import AdapterConfig
from .errors import (
    AdapterNotFoundError,
    CompositionError,
    ConfigError,
    CorruptArtifactError,
    NotMergeableError,
)
from .interfaces import HostInterface, find_interface
from .io import CONFIG_NAME, check_fingerprint, fingerprint, read_adapter_config, write_adapter
from .registry import get_method
from .sites import ActiveState, AdaptedLinear, AdaptedModule, GateLayer, Site, link_tap, unwrap

__all__ = ["AdaptedModel"]


class AdaptedModel(nn.Module):
    """A host model with named adapters attached by wrapping its modules.

    Args:
        model: Any ``nn.Module`` host, e.g. a transformers ``BertModel`` or ``XLMRobertaForMaskedLM``.
        interface: Preset name, explicit :class:`HostInterface`, or ``None`` to detect.

    Example:
        >>> am = AdaptedModel(model)
        >>> am.add_adapter("sw", BottleneckConfig.language())
        >>> am.set_active("sw")
        >>> am.train_adapters("sw")
    """

    def __init__(self, model: nn.Module, interface: HostInterface | str | None = None) -> None:
        super().__init__()
        self.model = model
        self.interface = find_interface(model, interface)
        self.base_fingerprint = fingerprint(model, self.interface)
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self._state = ActiveState(batch_dim=self.interface.batch_dim)
        self._configs: dict[str, AdapterConfig] = {}
        self._gates: dict[str, int] = {}
        self._sites: dict[str, AdaptedLinear | AdaptedModule] = {}
        self._originals: dict[str, torch.Tensor] = {}
        self._merged: dict[str, list[str]] = {}

    # ---------------------------------------------------------------- adapters
    @property
    def adapters(self) -> dict[str, AdapterConfig]:
        """Attached adapters by name (a copy)."""
        return dict(self._configs)

    @property
    def active(self) -> Composition | None:
        """The active composition."""
        return self._state.composition

    def add_adapter(self, name: str, config: AdapterConfig) -> None:
        """Attaches a new adapter; a fresh adapter leaves the host's outputs unchanged.

        Raises:
            ConfigError: If the name is taken or the config does not fit this host.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigError(f"adapter names must be non-empty strings without '.', got {name!r}")
        if name in self._configs or name in self._gates:
            raise ConfigError(
                f"an adapter or gate named {name!r} already exists; delete it first or pick another name"
            )
        if not isinstance(config, AdapterConfig):
            raise ConfigError(f"expected an AdapterConfig, got {type(config).__name__}")
        # Every layer is built before the host is touched, so a failure attaches nothing.
        layers = self._build_layers(config)
        for site, layer in layers:
            _follow(layer, unwrap(self.model.get_submodule(site.path)))
        for site, layer in layers:
            wrapper = self._wrap(site)
            wrapper.add_layer(name, layer, register=site.peer is None)
            if site.tap is not None:
                self._connect_tap(site, wrapper)
        self._configs[name] = config
        self._state.version += 1

    def _build_layers(self, config: AdapterConfig) -> list[tuple[Site, nn.Module]]:
        """Finds a config's sites and builds its layers (on the current default device).

        Raises:
            ConfigError: If no site is selected or a layer cannot be built (e.g. absurd sizes).
        """
        spec = get_method(config.method)
        sites = spec.find_sites(config, self.model, self.interface)
        if not sites:
            raise ConfigError(f"{config.method} config {config} selects no site in this host")
        built: dict[str, nn.Module] = {}
        try:
            for site in sites:
                built[site.path] = spec.build_layer(config, site, built.get(site.peer) if site.peer else None)
                if site.norm is not None:
                    built[site.path].attach_norm(unwrap(self.model.get_submodule(site.norm)))
        except ConfigError:
            raise
        except (OverflowError, RuntimeError, TypeError, ValueError, MemoryError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{config.method} config cannot be built on this host: {first}") from None
        return [(site, built[site.path]) for site in sites]

    def delete_adapter(self, name: str) -> None:
        """Removes an adapter (unmerging it first) and drops it from the active composition."""
        self._require(name)
        if name in self._state.merged:
            self.unmerge(name)
        for wrapper in self._sites.values():
            wrapper.remove_layer(name)
        del self._configs[name]
        self._state.version += 1
        if self._state.composition is not None and name in adapter_names(self._state.composition):
            self._state.composition = None

    def _require(self, name: str) -> None:
        if name not in self._configs:
            raise AdapterNotFoundError(f"no adapter named {name!r}; attached: {sorted(self._configs)}")

    def _wrap(self, site: Site) -> AdaptedLinear | AdaptedModule:
        if site.path in self._sites:
            return self._sites[site.path]
        parent_path, _, child = site.path.rpartition(".")
        parent = self.model.get_submodule(parent_path) if parent_path else self.model
        module = getattr(parent, child)
        wrapper_cls = AdaptedLinear if isinstance(module, nn.Linear) else AdaptedModule
        wrapper = wrapper_cls(module, site, self._state)
        setattr(parent, child, wrapper)
        self._sites[site.path] = wrapper
        return wrapper

    def _connect_tap(self, site: Site, wrapper: AdaptedLinear | AdaptedModule) -> None:
        if wrapper.tap_in is not None:
            return
        source_module = unwrap(self.model.get_submodule(site.tap))
        root_len = len(site.path) - len(site.key)
        source = self._wrap(
            Site(
                path=site.tap,
                key=site.tap[root_len:],
                role="linear",
                in_features=source_module.in_features,
                out_features=source_module.out_features,
            )
        )
        link_tap(source, wrapper)

    # ------------------------------------------------------------- composition
    def set_active(self, composition: Composition | None) -> None:
        """Activates a composition (an adapter name or a block tree); ``None`` runs the bare host.

        Gates named in the composition get their parameters here, at every site where one of
        their branches has a layer.

        Raises:
            CompositionError: On an invalid nesting or an unknown adapter name.
        """
        if composition is None:
            self._state.composition = None
            return
        validate(composition)
        unknown = [n for n in adapter_names(composition) if n not in self._configs]
        if unknown:
            raise CompositionError(f"composition names unknown adapters {unknown}; attached: {sorted(self._configs)}")
        for gate in _blocks_of(composition, Gate):
            self._ensure_gate(gate)
        self._state.composition = composition

    def _ensure_gate(self, gate: Gate) -> None:
        k = len(gate.children)
        if gate.name in self._configs:
            raise CompositionError(f"gate name {gate.name!r} is already an adapter's name")
        if self._gates.get(gate.name, k) != k:
            raise CompositionError(f"gate {gate.name!r} already mixes {self._gates[gate.name]} branches, not {k}")
        for wrapper in self._sites.values():
            if gate.name not in wrapper.gates and wrapper.has_any(gate):
                layer = GateLayer(wrapper.site.out_features, k, gate.prior)
                _follow(layer, unwrap(wrapper))
                wrapper.gates[gate.name] = layer
        self._gates[gate.name] = k

    def gate_layers(self, name: str) -> dict[str, GateLayer]:
        """The layers of the gate ``name`` by site key (empty until a composition holding it is activated)."""
        return {w.site.key: w.gates[name] for w in self._sites.values() if name in w.gates}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Runs the host with the active composition.

        With a ``Parallel`` block of ``k`` branches, every tensor argument whose first dimension
        equals the batch size is repeated ``k`` times along it, and the host returns ``k * B``
        rows: rows ``[i * B, (i + 1) * B)`` went through branch ``i``.
        """
        parallel = next(iter(_blocks_of(self._state.composition, Parallel)), None)
        if parallel is not None:
            args, kwargs = _replicate(args, kwargs, len(parallel.children))
        return self.model(*args, **kwargs)

    # ---------------------------------------------------------------- training
    def train_adapters(self, *names: str, head: bool = False) -> list[str]:
        """Freezes everything except the named adapters and gates (and the head if ``head``).

        Returns:
            Names of the parameters left trainable.

        Raises:
            AdapterNotFoundError: If a name is neither an adapter nor a gate.
            NotMergeableError: If an adapter is merged (unmerge it before training).
        """
        for name in names:
            if name not in self._configs and name not in self._gates:
                raise AdapterNotFoundError(f"no adapter or gate named {name!r}; attached: {sorted(self._configs)}")
            if name in self._state.merged:
                raise NotMergeableError(
                    f"adapter {name!r} is merged into the base weights; unmerge it before training"
                )
        for param in self.model.parameters():
            param.requires_grad_(False)
        for wrapper in self._sites.values():
            for name in names:
                for store in (wrapper.adapters, wrapper.gates):
                    if name in store:
                        store[name].requires_grad_(True)
        if head:
            if self.interface.head is None:
                raise ConfigError(f"interface {self.interface.name!r} names no head to train")
            self.model.get_submodule(self.interface.head).requires_grad_(True)
        return list(self.trainable_parameters())

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters with ``requires_grad``, by name."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """An adapter's or gate's tensors keyed by backbone-relative site key and parameter name."""
        if name not in self._configs and name not in self._gates:
            raise AdapterNotFoundError(f"no adapter or gate named {name!r}; attached: {sorted(self._configs)}")
        out = {}
        for wrapper in self._sites.values():
            for store in (wrapper.adapters, wrapper.gates):
                if name in store:
                    for pname, param in store[name].named_parameters():
                        out[f"{wrapper.site.key}.{pname}"] = param
        return out

    def num_parameters(self, name: str | None = None) -> int:
        """Number of parameters of one adapter or gate, or of the host when ``name`` is ``None``."""
        if name is None:
            return sum(
                p.numel() for n, p in self.model.named_parameters() if ".adapters." not in n and ".gates." not in n
            )
        return sum(t.numel() for t in self.adapter_state_dict(name).values())

    # ----------------------------------------------------------------- merging
    def merge(self, name: str) -> None:
        """Folds an adapter into the base weights; it then applies to every row, active or not.

        Unmerging restores the saved original weights, so it is bit-exact.

        Raises:
            NotMergeableError: If the method is not linear (checked before anything changes).
        """
        self._require(name)
        if name in self._state.merged:
            return
        holders = [w for w in self._sites.values() if name in w.adapters]
        for wrapper in holders:
            if not isinstance(wrapper, AdaptedLinear) or wrapper.adapters[name].delta_weight() is None:
                raise NotMergeableError(
                    f"adapter {name!r} ({self._configs[name].method}) is not linear at {wrapper.site.path} "
                    "and cannot be merged; keep it unmerged"
                )
        for wrapper in holders:
            self._merged.setdefault(wrapper.site.path, []).append(name)
            self._refresh_weight(wrapper)
        self._state.merged.add(name)
        self._state.version += 1

    def unmerge(self, name: str) -> None:
        """Takes a merged adapter back out of the base weights (bit-exact)."""
        self._require(name)
        if name not in self._state.merged:
            return
        for path, names in self._merged.items():
            if name in names:
                names.remove(name)
                self._refresh_weight(self._sites[path])
        self._state.merged.discard(name)
        self._state.version += 1

    @torch.no_grad()
    def _refresh_weight(self, wrapper: AdaptedLinear) -> None:
        path = wrapper.site.path
        weight = wrapper.base_layer.weight
        names = self._merged.get(path, [])
        if path not in self._originals:
            self._originals[path] = weight.detach().clone()
        if not names:
            weight.copy_(self._originals.pop(path))
            return
        # Low-precision weights are summed in float32, then rounded once.
        compute = torch.promote_types(weight.dtype, torch.float32)
        merged = self._originals[path].to(compute)
        for name in names:
            merged = merged + wrapper.adapters[name].delta_weight().to(compute)
        weight.copy_(merged.to(weight.dtype))

    def unload(self) -> nn.Module:
        """Unmerges everything, puts the original modules back and returns the bare host.

        The host's outputs are then bit-identical to before it was wrapped, and its parameters'
        ``requires_grad`` flags are restored. This ``AdaptedModel`` is empty afterwards.
        """
        for name in list(self._state.merged):
            self.unmerge(name)
        for path, wrapper in self._sites.items():
            parent_path, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            setattr(parent, child, wrapper.base_layer)
        self._sites.clear()
        self._state.version += 1
        self._configs.clear()
        self._gates.clear()
        self._state.composition = None
        for name, param in self.model.named_parameters():
            param.requires_grad_(self._requires_grad.get(name, True))
        return self.model

    # ------------------------------------------------------------------ saving
    def save_adapter(self, name: str, directory: str | os.PathLike[str]) -> Path:
        """Writes ``adapter.json`` and ``adapter.safetensors`` for one adapter (atomically).

        Raises:
            AdapterNotFoundError: If there is no such adapter.
        """
        self._require(name)
        config = self._configs[name]
        meta = {"name": name, "method": config.method, "config": config.to_dict(), "base": self.base_fingerprint}
        return write_adapter(directory, meta, self.adapter_state_dict(name))

    def load_adapter(
        self,
        directory: str | os.PathLike[str],
        name: str | None = None,
        *,
        check_base: bool = True,
        layers: Sequence[int] | None = None,
    ) -> str:
        """Reads a saved adapter and attaches it.

        Args:
            directory: A directory written by :meth:`save_adapter`.
            name: Name to attach it under; defaults to the saved name.
            check_base: Refuse an adapter saved for a different base model.
            layers: Attach only these blocks of it (some of the blocks it was saved with, e.g. the
                lower half of a token-type adapter); ``None`` for all. Methods without per-block
                layers (``layers`` in their config) take only ``None``.

        Returns:
            The name it was attached under.

        Raises:
            ArtifactError: Missing, corrupted, unknown-schema or wrong-base files (one subclass each).
            UnknownMethodError: If the saved method is not registered.
            ConfigError: If the name is taken, or ``layers`` names blocks the adapter does not have.
        """
        directory = Path(directory)
        meta, config, tensors = read_adapter_config(directory)
        if check_base:
            check_fingerprint(meta["base"], self.base_fingerprint, directory)
        name = meta["name"] if name is None else name
        try:
            self._check_shapes(config, tensors, directory)
            if layers is not None:
                config = self._some_layers(config, layers)
            self.add_adapter(name, config)
        except ConfigError as err:
            raise type(err)(f"{directory / CONFIG_NAME}: {err}") from None
        if layers is not None:
            kept = self.adapter_state_dict(name)
            tensors = {key: value for key, value in tensors.items() if key in kept}
        try:
            self._copy_into(name, tensors, directory)
        except BaseException:
            self.delete_adapter(name)
            raise
        return name

    def _some_layers(self, config: AdapterConfig, layers: Sequence[int]) -> AdapterConfig:
        """``config`` restricted to ``layers``, which must be blocks it adapts."""
        if not dataclasses.is_dataclass(config) or "layers" not in {f.name for f in dataclasses.fields(config)}:
            raise ConfigError(f"a {config.method} adapter has no per-block layers to choose from")
        have = config.layers if config.layers is not None else range(self.base_fingerprint["num_layers"])
        wanted = tuple(sorted(set(layers)))
        missing = sorted(set(wanted) - set(have))
        if not wanted or missing:
            raise ConfigError(f"layers {list(wanted)}: choose among the adapter's blocks {list(have)}")
        return dataclasses.replace(config, layers=wanted)

    def _check_shapes(self, config: AdapterConfig, tensors: dict[str, torch.Tensor], source: Path) -> None:
        """Compares the file's tensors with the config's layers built on the meta device (no memory)."""
        with torch.device("meta"):
            layers = self._build_layers(config)
        expected = {
            f"{site.key}.{pname}": tuple(param.shape)
            for site, layer in layers
            if site.peer is None
            for pname, param in layer.named_parameters()
        }
        found = {key: tuple(value.shape) for key, value in tensors.items()}
        if expected != found:
            bad = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
            raise CorruptArtifactError(
                f"{source}: tensors do not match the config (first difference: {bad[0]}: "
                f"file {found.get(bad[0])}, config {expected.get(bad[0])})"
            )

    @torch.no_grad()
    def _copy_into(self, name: str, tensors: dict[str, torch.Tensor], source: Path) -> None:
        params = self.adapter_state_dict(name)
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise CorruptArtifactError(
                f"{source}: tensors do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        for key, param in params.items():
            value = tensors[key]
            if value.shape != param.shape or value.dtype != param.dtype:
                raise CorruptArtifactError(
                    f"{source}: tensor {key} is {tuple(value.shape)} {value.dtype}, "
                    f"expected {tuple(param.shape)} {param.dtype}"
                )
        for key, param in params.items():
            param.copy_(tensors[key])


def _follow(layer: nn.Module, base: nn.Module) -> None:
    """Moves a new layer to the device and floating dtype of the module it adapts."""
    ref = next((p for p in base.parameters() if p.dtype.is_floating_point), None)
    if ref is not None:
        layer.to(device=ref.device, dtype=ref.dtype)


def _blocks_of(node: Composition | None, kind: type) -> list[Any]:
    if node is None or isinstance(node, str):
        return []
    found = [node] if isinstance(node, kind) else []
    for child in node.children:
        found.extend(_blocks_of(child, kind))
    return found


def _replicate(args: tuple[Any, ...], kwargs: dict[str, Any], k: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.ndim > 0]
    if not tensors:
        raise CompositionError("Parallel needs at least one batched tensor argument to replicate")
    rows = tensors[0].shape[0]

    def rep(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == rows:
            return value.repeat(k, *([1] * (value.ndim - 1)))
        return value

    return tuple(rep(a) for a in args), {key: rep(v) for key, v in kwargs.items()}
