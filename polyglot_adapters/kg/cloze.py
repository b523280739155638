"""Cloze sentences as token pieces: one tokenisation of the filled sentence, cut at the entities' character spans.

Masked-entity training and probing both need the tokens of an entity *as it is tokenised inside
its sentence* (SentencePiece gives ``▁Euro`` after a space but ``ユー ロ`` inside Japanese text),
and the tokens around it, so that the entity can be replaced by as many ``<mask>`` tokens as it
has pieces. :func:`split_by_spans` tokenises the sentence once with character offsets and assigns
every token to the span it overlaps, or to the text between spans.

Example:
    >>> text = "Sarafu ya Ufaransa ni Yuro."
    >>> split_by_spans(tokenizer, text, [(10, 18), (22, 26)])  # Ufaransa, Yuro
    [[ids of '▁Sara', 'fu', '▁ya'], [id of '▁Ufaransa'], [id of '▁ni'], [ids of '▁Yu', 'ro'], [id of '.']]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

__all__ = ["split_by_spans"]


def split_by_spans(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token ids of ``text`` (no special tokens) cut into the pieces outside and inside the spans.

    A token that overlaps a span belongs to it, so the leading ``▁`` piece that SentencePiece
    attaches to a word after a space goes with the word.

    Args:
        tokenizer: A transformers *fast* tokenizer (character offsets are needed).
        text: The filled sentence.
        spans: Sorted, disjoint, non-empty ``(start, end)`` character ranges.

    Returns:
        ``2 * len(spans) + 1`` lists of ids: before the first span, the first span, between, ...,
        after the last span.

    Raises:
        ConfigError: If the spans are empty, unsorted or overlapping, the tokenizer gives no
            offsets, or a span covers no token.
    """
    previous = 0
    for start, end in spans:
        if not previous <= start < end <= len(text):
            raise ConfigError(f"spans must be sorted, disjoint and non-empty inside the text, got {list(spans)!r}")
        previous = end
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("cloze tokenisation needs a fast tokenizer (character offsets)")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    pieces: list[list[int]] = [[] for _ in range(2 * len(spans) + 1)]
    span = 0  # index of the next span not yet passed
    for token, (begin, finish) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        while span < len(spans) and begin >= spans[span][1]:
            span += 1
        inside = span < len(spans) and begin < spans[span][1] and finish > spans[span][0]
        pieces[2 * span + 1 if inside else 2 * span].append(token)
    for i, (start, end) in enumerate(spans):
        if not pieces[2 * i + 1]:
            raise ConfigError(f"the span {text[start:end]!r} of {text!r} covers no token")
    return pieces
