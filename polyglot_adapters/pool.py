"""An adapter pool: many adapters registered in host memory, only those a batch uses attached to the model.

S-LoRA's idea, at the granularity of this library: every registered adapter keeps its tensors in
CPU memory; at most ``capacity`` of them are attached to the :class:`~polyglot_adapters.AdaptedModel`
(on its device) at a time, and the least recently used one not needed by the current batch is
evicted to make room. A batch names one adapter per row; :meth:`AdapterPool.run` attaches what
is missing, then runs every row through its own adapter in one fused pass (``Route``).

Example:
    >>> pool = AdapterPool(am, capacity=64)
    >>> for directory in adapter_dirs:          # thousands are fine: they stay in CPU memory
    ...     pool.register_saved(directory)
    >>> hidden = pool.run(["sw", "yo", "sw", "am"], input_ids=ids, attention_mask=mask)

Pool adapters are for inference: an attached copy is dropped on eviction, so train adapters
with the model itself and register the results.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .composition import Route
from .config import AdapterConfig
from .errors import AdapterNotFoundError, ConfigError
from .io import check_fingerprint, read_adapter_config
from .model import AdaptedModel

__all__ = ["AdapterPool"]


class AdapterPool:
    """Registered adapters in CPU memory with a bounded, least-recently-used set attached to the model.

    Args:
        model: The model the adapters run on; the pool owns every adapter it attaches there.
        capacity: Most adapters attached at once (a batch may use at most this many distinct ones).

    Raises:
        ConfigError: If ``capacity`` is not a positive integer.
    """

    def __init__(self, model: AdaptedModel, capacity: int = 64) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"pool capacity must be a positive integer, got {capacity!r}")
        self.model = model
        self.capacity = capacity
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self._entries: dict[str, tuple[AdapterConfig, dict[str, torch.Tensor], str]] = {}
        self._resident: collections.OrderedDict[str, None] = collections.OrderedDict()  # oldest use first

    # ------------------------------------------------------------ registration
    @property
    def names(self) -> tuple[str, ...]:
        """Registered adapter names; an adapter's id is its position here."""
        return tuple(self._names)

    @property
    def resident(self) -> tuple[str, ...]:
        """Adapters attached to the model now, least recently used first."""
        return tuple(self._resident)

    def __len__(self) -> int:
        return len(self._names)

    def register(
        self,
        name: str,
        config: AdapterConfig,
        tensors: Mapping[str, torch.Tensor],
        *,
        base: Mapping[str, Any] | None = None,
        source: str = "<memory>",
    ) -> int:
        """Adds an adapter's config and tensors (copied to CPU memory); nothing is attached yet.

        Args:
            name: Adapter name, unique in the pool and not attached to the model otherwise.
            config: Its config.
            tensors: Its tensors, keyed as :meth:`AdaptedModel.adapter_state_dict` keys them.
            base: The base fingerprint it was trained for (as saved files carry it); checked if given.
            source: What to name in error messages (a file, a directory).

        Returns:
            The adapter's id (its position in :attr:`names`).

        Raises:
            ConfigError: If the name is taken or invalid.
            BaseModelMismatchError: If ``base`` differs from the model's base.
            CorruptArtifactError: If the tensors do not fit the config on this model.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigError(f"{source}: adapter names must be non-empty strings without '.', got {name!r}")
        if name in self._ids:
            raise ConfigError(
                f"{source}: the pool already has an adapter named {name!r}; register it under another name"
            )
        if name in self.model.adapters:
            raise ConfigError(f"{source}: {name!r} is attached to the model outside the pool; delete it or rename it")
        if base is not None:
            check_fingerprint(dict(base), self.model.base_fingerprint, Path(source))
        copied = {key: value.detach().to("cpu", copy=True) for key, value in tensors.items()}
        self.model._check_shapes(config, copied, Path(source))
        self._ids[name] = len(self._names)
        self._names.append(name)
        self._entries[name] = (config, copied, source)
        return self._ids[name]

    def register_saved(self, directory: str | os.PathLike[str], name: str | None = None) -> int:
        """Registers an adapter saved by :meth:`AdaptedModel.save_adapter` (checksums and base checked).

        Returns:
            The adapter's id.
        """
        meta, config, tensors = read_adapter_config(directory)
        return self.register(
            meta["name"] if name is None else name, config, tensors, base=meta["base"], source=str(directory)
        )

    # ----------------------------------------------------------------- batches
    def ids_of(self, adapters: Sequence[int | str] | torch.Tensor) -> list[int]:
        """Adapter ids for one batch's rows, given as ids or names.

        Raises:
            AdapterNotFoundError: For an id out of range or an unknown name.
        """
        values = adapters.tolist() if isinstance(adapters, torch.Tensor) else list(adapters)
        ids = []
        for row, value in enumerate(values):
            if isinstance(value, str):
                if value not in self._ids:
                    raise AdapterNotFoundError(f"row {row}: no adapter named {value!r} is registered in the pool")
                ids.append(self._ids[value])
            elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self._names):
                ids.append(value)
            else:
                raise AdapterNotFoundError(
                    f"row {row}: adapter id {value!r} is out of range; the pool has {len(self._names)} adapters "
                    f"(ids 0-{len(self._names) - 1})"
                )
        return ids

    def route(self, adapters: Sequence[int | str] | torch.Tensor) -> Route:
        """Attaches every adapter the rows name (evicting least recently used ones) and returns their ``Route``.

        Args:
            adapters: One adapter id or name per row.

        Returns:
            ``Route`` with row ``b`` on ``adapters[b]``, valid until the next call of this pool.

        Raises:
            AdapterNotFoundError: For an unknown adapter.
            ConfigError: If the batch names more distinct adapters than the pool's capacity.
        """
        ids = self.ids_of(adapters)
        needed = list(dict.fromkeys(self._names[i] for i in ids))
        if len(needed) > self.capacity:
            raise ConfigError(
                f"the batch uses {len(needed)} distinct adapters but the pool attaches at most {self.capacity}; "
                "split the batch or raise the pool's capacity"
            )
        keep = set(needed)
        for name in needed:
            if name not in self._resident:
                self._make_room(keep)
                self._attach(name)
            self._resident.move_to_end(name)
        return Route(torch.tensor(ids, dtype=torch.long), {i: self._names[i] for i in set(ids)})

    def run(self, adapters: Sequence[int | str] | torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Runs one batch with row ``b`` through adapter ``adapters[b]``, all rows in one pass.

        Args:
            adapters: One adapter id or name per row of the batch.
            *args: The host's positional inputs (batch first, as the host expects).
            **kwargs: The host's keyword inputs (e.g. ``input_ids``, ``attention_mask``).

        Returns:
            The host's output.
        """
        self.model.set_active(self.route(adapters))
        return self.model(*args, **kwargs)

    def _make_room(self, keep: set[str]) -> None:
        """Evicts least recently used adapters outside ``keep`` until one more fits."""
        while len(self._resident) >= self.capacity:
            victim = next(name for name in self._resident if name not in keep)
            self.model.delete_adapter(victim)
            del self._resident[victim]

    def _attach(self, name: str) -> None:
        config, tensors, source = self._entries[name]
        self.model.add_adapter(name, config)
        try:
            self.model._copy_into(name, tensors, Path(source))
        except BaseException:
            self.model.delete_adapter(name)
            raise
        self._resident[name] = None
