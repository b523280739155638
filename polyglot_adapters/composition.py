"""Composition blocks: a small immutable tree saying how active adapters combine.

Leaves are adapter names. At every site (a wrapped module) a node maps the base output ``y`` to
a new output; an adapter absent from the site is the identity there.

- ``Stack(a, b)``: ``b`` acts on the output of ``a``.
- ``Parallel(a, b)``: the batch is replicated once per branch; rows of copy ``i`` go through
  branch ``i`` only; the model returns ``k * B`` rows (branch-major).
- ``Average(a, b, weights=...)``: weighted mean of the branches' outputs.
- ``Gate(a, b, name=..., prior=...)``: a learned per-token softmax mixture of the branches
  (MixDA-style); the gate's parameters are created at each site when the composition is
  activated, starting from uniform weights or from ``prior``.
- ``Route(ids, {0: a, 1: b})``: row ``r`` of the batch uses ``mapping[ids[r]]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import torch

from .errors import CompositionError

__all__ = ["Average", "Composition", "Gate", "Parallel", "Route", "Stack", "adapter_names", "validate"]


@dataclasses.dataclass(frozen=True, init=False)
class Stack:
    """Applies children in order, each on the previous one's output."""

    children: tuple[Composition, ...]

    def __init__(self, *children: Composition) -> None:
        object.__setattr__(self, "children", tuple(children))


@dataclasses.dataclass(frozen=True, init=False)
class Parallel:
    """Runs each child on its own copy of the batch (output has ``len(children) * B`` rows)."""

    children: tuple[Composition, ...]

    def __init__(self, *children: Composition) -> None:
        object.__setattr__(self, "children", tuple(children))


@dataclasses.dataclass(frozen=True, init=False)
class Average:
    """Weighted average of the children's outputs.

    Attributes:
        children: The branches.
        weights: One weight per child; uniform by default; normalised to sum to 1 unless
            ``normalize=False``.
    """

    children: tuple[Composition, ...]
    weights: tuple[float, ...]

    def __init__(self, *children: Composition, weights: Sequence[float] | None = None, normalize: bool = True) -> None:
        weights = tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(children)
        if len(weights) != len(children):
            raise CompositionError(f"Average has {len(children)} children but {len(weights)} weights")
        if normalize:
            total = sum(weights)
            if total == 0:
                raise CompositionError("Average weights sum to 0 and cannot be normalised")
            weights = tuple(w / total for w in weights)
        object.__setattr__(self, "children", tuple(children))
        object.__setattr__(self, "weights", weights)


@dataclasses.dataclass(frozen=True, init=False)
class Gate:
    """Learned softmax mixture over the children, computed per token from the site's base output.

    Attributes:
        children: The branches.
        name: Name of the gate's parameters (train them with ``train_adapters(name)``).
        prior: The mixture weights the gate starts from, one per child, normalised to sum to 1
            (its bias starts at their logarithms); ``None`` for uniform. It sets the weights only
            where the gate's parameters are created, i.e. the first time this gate is activated.
            A small prior on a new branch starts training from (nearly) the other branches alone.
    """

    children: tuple[Composition, ...]
    name: str
    prior: tuple[float, ...] | None

    def __init__(self, *children: Composition, name: str = "gate", prior: Sequence[float] | None = None) -> None:
        if prior is not None:
            prior = tuple(float(p) for p in prior)
            if len(prior) != len(children):
                raise CompositionError(f"Gate has {len(children)} children but {len(prior)} prior weights")
            if not all(0 < p < float("inf") for p in prior):
                raise CompositionError(f"Gate prior weights must be positive and finite, got {list(prior)}")
            total = sum(prior)
            prior = tuple(p / total for p in prior)
        object.__setattr__(self, "children", tuple(children))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "prior", prior)


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Route:
    """Per-row routing: row ``r`` uses ``mapping[ids[r]]``.

    The grouping (a stable sort of ``ids``) is computed once here, not at every site. Where
    every group maps to a single adapter, a site runs all rows in one fused per-row pass
    (gathered kernels, :mod:`polyglot_adapters.kernels.rows`) when its layers support it;
    otherwise, or with ``fuse=False``, it runs one pass per group.

    Attributes:
        ids: ``(B,)`` integer tensor, one group id per row.
        mapping: Group id to the composition used by those rows.
        fuse: Allow the fused per-row pass (``False``: always one pass per group).
        group_index: ``(B,)`` int64: each row's position in ``groups``.
    """

    ids: torch.Tensor
    mapping: Mapping[int, Composition]
    order: torch.Tensor
    inverse: torch.Tensor
    groups: tuple[tuple[int, int, int], ...]
    fuse: bool
    group_index: torch.Tensor

    def __init__(
        self, ids: torch.Tensor | Sequence[int], mapping: Mapping[int, Composition], *, fuse: bool = True
    ) -> None:
        ids = torch.as_tensor(ids)
        if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise CompositionError(f"Route ids must be a 1-D integer tensor, got shape {tuple(ids.shape)} {ids.dtype}")
        ids = ids.detach().to("cpu", torch.long)
        missing = sorted(set(ids.tolist()) - set(mapping))
        if missing:
            raise CompositionError(f"Route ids {missing} have no entry in the mapping (keys {sorted(mapping)})")
        order = torch.argsort(ids, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel())
        values, counts = torch.unique_consecutive(ids[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        groups = tuple((int(v), int(s), int(s + c)) for v, s, c in zip(values, starts, counts, strict=True))
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "mapping", dict(mapping))
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "inverse", inverse)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "fuse", bool(fuse))
        object.__setattr__(self, "group_index", torch.searchsorted(values, ids))

    @property
    def children(self) -> tuple[Composition, ...]:
        """The compositions the mapping refers to, by ascending group id."""
        return tuple(self.mapping[k] for k in sorted(self.mapping))


Composition = str | Stack | Parallel | Average | Gate | Route

# Which node types may appear as a child of each block (adapters' table of allowed nestings).
ALLOWED_CHILDREN: dict[type, tuple[type, ...]] = {
    Stack: (str, Stack, Parallel, Average, Gate, Route),
    Parallel: (str, Stack, Average, Gate),
    Average: (str, Stack),
    Gate: (str, Stack),
    Route: (str, Stack, Average, Gate),
}


def _walk(node: Composition) -> Iterator[Composition]:
    yield node
    if not isinstance(node, str):
        for child in node.children:
            yield from _walk(child)


def adapter_names(node: Composition) -> list[str]:
    """Returns the adapter names a composition refers to, in first-seen order."""
    seen: dict[str, None] = {}
    for sub in _walk(node):
        if isinstance(sub, str):
            seen.setdefault(sub)
    return list(seen)


def validate(node: Composition) -> None:
    """Checks a composition tree against the table of allowed nestings.

    Raises:
        CompositionError: With the offending node, e.g. ``Parallel`` inside ``Average``.
    """
    if isinstance(node, str):
        if not node:
            raise CompositionError("adapter names in a composition must be non-empty strings")
        return
    if type(node) not in ALLOWED_CHILDREN:
        raise CompositionError(
            f"{node!r} is not a composition block (use a name, Stack, Parallel, Average, Gate, Route)"
        )
    if not node.children:
        raise CompositionError(f"{type(node).__name__} needs at least one child")
    allowed = ALLOWED_CHILDREN[type(node)]
    for child in node.children:
        if not isinstance(child, allowed):
            names = ", ".join(t.__name__ if t is not str else "adapter name" for t in allowed)
            raise CompositionError(
                f"{type(child).__name__} cannot be nested in {type(node).__name__}; allowed: {names}"
            )
        validate(child)
    if isinstance(node, Stack | Parallel | Average | Gate):
        leaves = [c for c in node.children if isinstance(c, str)]
        if len(leaves) != len(set(leaves)):
            raise CompositionError(f"{type(node).__name__} names an adapter twice: {leaves}")
    if sum(isinstance(sub, Parallel) for sub in _walk(node)) > 1:
        raise CompositionError("a composition may contain at most one Parallel block")
