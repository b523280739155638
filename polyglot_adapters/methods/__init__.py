"""Adapter methods, one folder each; importing this package imports (and so registers) every folder."""

from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []

for _info in pkgutil.iter_modules(__path__):
    if _info.ispkg:
        importlib.import_module(f"{__name__}.{_info.name}")
        __all__.append(_info.name)
