"""Code: token types of Python source (AST/tokenize), the code corpus, token-type classification, code search."""

from __future__ import annotations

from .token_types import NO_TYPE, TOKEN_TYPES, LabelledSource, SourceError, label_source, typed_tokens

__all__ = ["NO_TYPE", "TOKEN_TYPES", "LabelledSource", "SourceError", "label_source", "typed_tokens"]
