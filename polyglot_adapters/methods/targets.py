"""Helpers that methods use to turn interface data into sites."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from ..config import check
from ..errors import ConfigError
from ..interfaces import HostInterface
from ..sites import Site, base_linears

__all__ = ["linear_sites", "selected_blocks"]


def selected_blocks(
    host: nn.Module, interface: HostInterface, layers: Sequence[int] | None
) -> tuple[str, list[tuple[int, str]]]:
    """Returns the backbone root and the ``(index, path)`` of the blocks an adapter uses.

    Raises:
        ConfigError: If ``layers`` names a block the host does not have.
    """
    root, blocks = interface.find_blocks(host)
    if layers is None:
        return root, [(i, path) for i, (path, _) in enumerate(blocks)]
    bad = sorted(set(layers) - set(range(len(blocks))))
    check(not bad, f"layers {bad} do not exist; the host has {len(blocks)} blocks (0..{len(blocks) - 1})")
    return root, [(i, blocks[i][0]) for i in sorted(set(layers))]


def linear_sites(
    host: nn.Module,
    interface: HostInterface,
    targets: Sequence[str],
    layers: Sequence[int] | None,
    role: str = "linear",
) -> list[Site]:
    """Resolves LoRA-style targets to sites.

    Args:
        host: The host model (possibly already wrapped).
        interface: Its interface.
        targets: Short names from ``interface.linears`` (``q``, ``v``, ...) or regular
            expressions matched in full against linear layers' paths relative to the backbone root.
        layers: Block indices to restrict short-name targets to, or ``None`` for all blocks.
        role: Site role to give.

    Raises:
        ConfigError: If a target matches no linear layer.
    """
    root, blocks = selected_blocks(host, interface, layers)
    linears = base_linears(host)
    paths: dict[str, None] = {}
    for target in targets:
        if target in interface.linears:
            found = [f"{block}.{interface.linears[target]}" for _, block in blocks]
            missing = [p for p in found if p not in linears]
            if missing:
                raise ConfigError(f"target {target!r} -> {missing[0]} is not a linear layer of the host")
        else:
            try:
                pattern = re.compile(target)
            except re.error as err:
                raise ConfigError(
                    f"target {target!r} is neither a short name {sorted(interface.linears)} nor a regex: {err}"
                ) from None
            found = [p for p in linears if p.startswith(root) and pattern.fullmatch(p[len(root) :])]
            if not found:
                raise ConfigError(
                    f"target {target!r} matches no linear layer; short names: {sorted(interface.linears)}"
                )
        paths.update(dict.fromkeys(found))
    return [
        Site(
            path=p,
            key=p[len(root) :] if p.startswith(root) else p,
            role=role,
            in_features=linears[p].in_features,
            out_features=linears[p].out_features,
        )
        for p in paths
    ]
