"""A multilingual SentencePiece tokenizer for transducer targets; the blank is appended after its pieces.

Targets are normalised transcripts (:func:`normalize_transcript`): what can be heard, without
case or punctuation; word and character error rates are scored on the same normalisation.
"""

from __future__ import annotations

import io
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import sentencepiece

from ..errors import ConfigError, CorruptArtifactError, MissingArtifactError
from ..io import atomic_write_bytes

__all__ = ["SpeechTokenizer", "normalize_transcript", "train_tokenizer"]

_APOSTROPHES = "'’ʼ"  # part of words in several orthographies (Oromo, Swahili loans, ...)


def normalize_transcript(text: str) -> str:
    """Lower-cases (NFC), turns punctuation and symbols into spaces and collapses whitespace.

    Letters, combining marks, digits and apostrophes are kept, in every script.
    """
    text = unicodedata.normalize("NFC", text.lower())
    kept = "".join(ch if unicodedata.category(ch)[0] in "LMN" or ch in _APOSTROPHES else " " for ch in text)
    return " ".join(kept.split())


class SpeechTokenizer:
    """SentencePiece pieces ``0 .. n-1`` (``0`` is ``<unk>``) plus the transducer blank ``n``.

    Args:
        model_proto: A serialised SentencePiece model.
    """

    def __init__(self, model_proto: bytes) -> None:
        self.proto = model_proto
        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    @property
    def num_symbols(self) -> int:
        """Pieces plus the blank."""
        return self.sp.get_piece_size() + 1

    @property
    def blank(self) -> int:
        """The blank's index (the last symbol)."""
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        """Piece ids of the normalised ``text`` (:func:`normalize_transcript`)."""
        return self.sp.encode(normalize_transcript(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of piece ids (blanks and out-of-range ids are skipped)."""
        return self.sp.decode([i for i in ids if 0 <= i < self.blank])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the SentencePiece model file atomically."""
        atomic_write_bytes(Path(path), self.proto)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SpeechTokenizer:
        """Reads a SentencePiece model file.

        Raises:
            MissingArtifactError: If the file is missing.
            CorruptArtifactError: If it is not a SentencePiece model.
        """
        source = Path(path)
        if not source.is_file():
            raise MissingArtifactError(f"{source}: no tokenizer file; train one with train_tokenizer(...)")
        data = source.read_bytes()
        try:
            return cls(data)
        except RuntimeError:
            raise CorruptArtifactError(f"{source}: not a SentencePiece model; rebuild the tokenizer") from None


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 256, seed_chars: str = "") -> SpeechTokenizer:
    """Trains a unigram SentencePiece model on normalised text (all its characters covered).

    Args:
        texts: Training sentences (e.g. UDHR training articles of every language).
        vocab_size: Pieces wanted (a soft limit: tiny corpora give fewer).
        seed_chars: Characters that must be pieces even if absent from ``texts``.

    Raises:
        ConfigError: If ``texts`` is empty or ``vocab_size`` is below 8.
    """
    lines = [line for line in (normalize_transcript(t) for t in texts) if line]
    if not lines:
        raise ConfigError("train_tokenizer needs at least one non-empty text")
    if vocab_size < 8:
        raise ConfigError(f"vocab_size must be >= 8, got {vocab_size}")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        user_defined_symbols=list(dict.fromkeys(seed_chars)),
        num_threads=1,
        minloglevel=2,
    )
    return SpeechTokenizer(model.getvalue())
