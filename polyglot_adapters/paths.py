"""Where builders cache what they make: ``$POLYGLOT_ADAPTERS_HOME`` or ``~/.cache/polyglot_adapters``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_home"]


def cache_home(subdir: str | None = None) -> Path:
    """Returns the cache directory (created if missing), or one of its subdirectories.

    Args:
        subdir: Optional relative path inside the cache, e.g. ``"models/e5-small"``.
    """
    root = Path(os.environ.get("POLYGLOT_ADAPTERS_HOME") or Path.home() / ".cache" / "polyglot_adapters")
    path = root / subdir if subdir else root
    path.mkdir(parents=True, exist_ok=True)
    return path
