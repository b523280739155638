"""Character n-gram similarity of labels: the name-overlap baseline of entity alignment and a hard-negative miner."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse

from ..errors import ConfigError

__all__ = ["char_ngrams", "ngram_similarity"]


def char_ngrams(text: str, sizes: Sequence[int] = (2, 3)) -> list[str]:
    """Character n-grams of ``" " + text + " "`` after NFKC, case folding and accent stripping.

    Accents are dropped (NFD, combining marks removed) so that ``Faransé`` and ``Faranse`` share
    their n-grams; scripts are kept, so labels in different scripts share none.

    Args:
        text: A label.
        sizes: The n-gram lengths (each >= 1).

    Returns:
        The n-grams, with repeats (a bag).
    """
    if not sizes or any(not isinstance(n, int) or n < 1 for n in sizes):
        raise ConfigError(f"n-gram sizes must be positive integers, got {sizes!r}")
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = "".join(c for c in unicodedata.normalize("NFD", folded) if not unicodedata.combining(c))
    padded = f" {folded} "
    return [padded[i : i + n] for n in sizes for i in range(len(padded) - n + 1)]


def ngram_similarity(queries: Sequence[str], candidates: Sequence[str], sizes: Sequence[int] = (2, 3)) -> torch.Tensor:
    """Cosine similarity of character n-gram count vectors (TF-IDF weighted over both lists).

    Identical strings score 1 (the maximum); strings without a shared n-gram score 0.

    Args:
        queries: ``Q`` labels.
        candidates: ``C`` labels.
        sizes: The n-gram lengths.

    Returns:
        ``(Q, C)`` float32 similarities in ``[0, 1]``.
    """
    bags = [char_ngrams(t, sizes) for t in [*queries, *candidates]]
    vocabulary: dict[str, int] = {}
    for bag in bags:
        for gram in bag:
            vocabulary.setdefault(gram, len(vocabulary))
    rows, cols = [], []
    for r, bag in enumerate(bags):
        rows.extend([r] * len(bag))
        cols.extend(vocabulary[g] for g in bag)
    counts = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(len(bags), max(len(vocabulary), 1))
    )  # (Q + C, V), duplicates summed
    documents = np.asarray((counts > 0).sum(0)).ravel()  # (V,)
    idf = np.log((1 + len(bags)) / (1 + documents)) + 1.0  # (V,) smoothed, as scikit-learn's TfidfVectorizer
    weighted = counts.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(1)).ravel()).clip(1e-12)  # (Q + C,)
    unit = sparse.diags(1.0 / norms) @ weighted
    q = len(queries)
    scores = (unit[:q] @ unit[q:].T).toarray()  # (Q, C)
    return torch.from_numpy(scores).float().clamp(0.0, 1.0)
