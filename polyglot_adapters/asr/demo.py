"""The streaming demo: held-out UDHR phrases spoken by espeak-ng, decoded as concurrent streams in one batch.

:func:`run_demo` picks one test phrase per language (the test split the corpus builder uses,
so the phrase is unseen in training), speaks it with a voice drawn from the seed, and streams
all of them at once through :meth:`Recognizer.stream`, each row routed to its language's
adapter (or the base model when the language has none). It echoes partial hypotheses as
chunks arrive, then each stream's hypothesis against its reference with WER/CER, the
real-time factor and per-chunk compute latency. By default it decodes with the checkpoint
shipped in the package (:data:`DEMO_CHECKPOINT`): a model and a bundle of tail-language adapters.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, MissingArtifactError
from .audio import SAMPLE_RATE
from .data import _VARIANTS, ESPEAK_VOICES, _texts, espeak_available, synthesize
from .streaming import Recognizer, StreamTiming
from .training import error_rates, load_transducer

__all__ = [
    "DEMO_CHECKPOINT",
    "DEMO_LANGUAGES",
    "DemoUtterance",
    "demo_checkpoint",
    "demo_utterances",
    "run_demo",
]

DEMO_CHECKPOINT = Path(str(resources.files("polyglot_adapters.asr") / "checkpoint"))
"""Package data: the shipped model (``save_transducer``) and its adapter bundle (``write_bundle``), side by side."""

DEMO_LANGUAGES = ("sw", "om", "de", "en")
"""Two tail languages (adapters in the shipped bundle) and two head languages (the base model)."""

_MODEL_FILES = ("model.json", "model.safetensors", "tokenizer.model")
_BUNDLE_FILES = ("bundle.json", "bundle.safetensors")
_MAX_WORDS = 10  # as the corpus builder cuts its phrases


@dataclasses.dataclass(frozen=True)
class DemoUtterance:
    """One demo stream's phrase and voice.

    Attributes:
        language: Language code (a key of ``ESPEAK_VOICES``).
        text: The phrase (a UDHR test-split phrase).
        phrase: Its index among the language's test phrases (as in the corpus's ``test`` manifest).
        variant: espeak-ng voice variant, e.g. ``+f2``.
        speed: Words per minute.
        pitch: espeak-ng pitch (0-99).
    """

    language: str
    text: str
    phrase: int
    variant: str
    speed: int
    pitch: int

    @property
    def voice(self) -> str:
        """The espeak-ng voice with its variant."""
        return ESPEAK_VOICES[self.language] + self.variant

    def synthesize(self) -> torch.Tensor:
        """Speaks the phrase with espeak-ng: 16 kHz float32 samples ``(N,)``."""
        return synthesize(self.text, self.language, variant=self.variant, speed=self.speed, pitch=self.pitch)


def demo_checkpoint(directory: str | os.PathLike[str] | None = None) -> Path:
    """The shipped checkpoint directory, checked to hold the model and its adapter bundle.

    Args:
        directory: Check this directory instead of :data:`DEMO_CHECKPOINT`.

    Raises:
        MissingArtifactError: If a file is missing (the message says how to produce them).
    """
    source = Path(DEMO_CHECKPOINT if directory is None else directory)
    missing = [name for name in (*_MODEL_FILES, *_BUNDLE_FILES) if not (source / name).is_file()]
    if missing:
        raise MissingArtifactError(
            f"{source}: no demo checkpoint (missing {', '.join(missing)}); run asr/run_recipe.sh OUT, then copy "
            f"OUT/base/model/{{{','.join(_MODEL_FILES)}}} and OUT/lda/bundle/{{{','.join(_BUNDLE_FILES)}}} "
            "there, or give a model directory"
        )
    return source


def demo_utterances(languages: Sequence[str], *, seed: int = 0) -> list[DemoUtterance]:
    """Picks one held-out phrase and one voice per language, deterministically from ``seed``.

    The phrase is one of the language's UDHR test-split phrases (cut as the corpus builder cuts
    them); the voice variant, speed and pitch are drawn as the corpus builder draws them. Each
    language has its own generator, so its choice does not depend on the other languages.

    Raises:
        ConfigError: No language, a repeated one, or one without an espeak-ng voice or test phrases.
    """
    if not languages:
        raise ConfigError("give at least one language")
    if len(set(languages)) != len(languages):
        raise ConfigError(f"give each language once, got {list(languages)}")
    out = []
    for language in languages:
        if language not in ESPEAK_VOICES:
            raise ConfigError(f"no espeak-ng voice for language {language!r}; voices: {sorted(ESPEAK_VOICES)}")
        texts = _texts(language, "test", _MAX_WORDS)
        if not texts:
            raise ConfigError(f"no UDHR test phrases for language {language!r}")
        rng = random.Random(f"{seed}:demo:{language}")
        phrase = rng.randrange(len(texts))
        variant, speed, pitch = rng.choice(_VARIANTS), rng.randint(130, 200), rng.randint(30, 70)
        out.append(DemoUtterance(language, texts[phrase], phrase, variant, speed, pitch))
    return out


def _distinct(partials: Sequence[str]) -> list[str]:
    out: list[str] = []
    for text in partials:
        if text and (not out or text != out[-1]):
            out.append(text)
    return out


def run_demo(
    *,
    model_dir: str | os.PathLike[str] | None = None,
    bundle: str | os.PathLike[str] | None = None,
    languages: Sequence[str] = DEMO_LANGUAGES,
    chunk_ms: int = 320,
    threads: int = 1,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Streams one held-out phrase per language as concurrent streams and reports what each decoded.

    Echoes each stream's partial hypothesis whenever it changes, then per stream its adapter,
    hypothesis, reference and WER/CER, then the real-time factor and per-chunk compute p50/p95.

    Args:
        model_dir: A ``save_transducer`` directory (default: the shipped checkpoint, :func:`demo_checkpoint`).
        bundle: A bundle of language adapters (default: the shipped one when ``model_dir`` is not
            given, else ``model_dir``'s own ``bundle.json`` if it has one, else none).
        languages: One stream per language (:func:`demo_utterances`).
        chunk_ms: Audio per streaming step; a multiple of the model's chunk.
        threads: Torch CPU threads while decoding (restored afterwards).
        seed: Picks the phrases and voices.
        echo: Where the lines go.

    Returns:
        JSON-ready results: the settings, ``streams`` (per stream: ``language``, ``adapter``,
        ``note``, ``reference``, ``hypothesis``, ``wer``, ``cer``, ``partials``, the phrase and
        voice), ``wer``/``cer`` over all streams and ``timing`` (:class:`StreamTiming` fields).

    Raises:
        ConfigError: On bad languages, ``chunk_ms`` or ``threads``.
        MissingArtifactError: If espeak-ng is not installed, or the checkpoint or model is missing.
        ArtifactError: If the model or bundle cannot be read or do not fit each other.
    """
    utterances = demo_utterances(languages, seed=seed)
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    if not espeak_available():
        raise MissingArtifactError(
            "espeak-ng is not installed; the demo speaks its phrases with it: apt-get install espeak-ng"
        )
    if model_dir is None:
        model_dir = demo_checkpoint()
        bundle = model_dir if bundle is None else bundle
    elif bundle is None and (Path(model_dir) / "bundle.json").is_file():
        bundle = model_dir
    model, tokenizer, _ = load_transducer(model_dir)
    model_chunk_ms = 10 * model.config.chunk_size
    if chunk_ms <= 0 or chunk_ms % model_chunk_ms:
        raise ConfigError(f"chunk_ms must be a positive multiple of the model's {model_chunk_ms} ms, got {chunk_ms}")
    recognizer = Recognizer(model, tokenizer, bundle=bundle)
    waves = [u.synthesize() for u in utterances]

    echo(
        f"{len(utterances)} held-out UDHR phrase(s) spoken by espeak-ng, decoded as concurrent streams in one "
        f"batch ({chunk_ms} ms chunks); adapters: {', '.join(recognizer.languages) or 'none'}"
    )
    notes: list[str | None] = []
    for i, (u, wave) in enumerate(zip(utterances, waves, strict=True)):
        echo(f"[{i} {u.language}] {u.voice}, {u.speed} wpm, pitch {u.pitch}, {wave.numel() / SAMPLE_RATE:.2f} s")
        note = None
        if u.language not in recognizer.languages:
            note = f"no adapter for {u.language!r}; decoding it with the base model"
            echo(f"[{i} {u.language}] note: {note}")
        notes.append(note)
    shown = [""] * len(utterances)

    def partial(i: int, text: str) -> None:
        if text != shown[i]:
            shown[i] = text
            echo(f"[{i} {utterances[i].language}] … {text}")

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        clock = time.perf_counter()
        results = recognizer.stream(waves, [u.language for u in utterances], chunk_ms=chunk_ms, on_partial=partial)
        timing = StreamTiming.of(results, time.perf_counter() - clock)
    finally:
        torch.set_num_threads(previous_threads)

    streams = []
    for i, (u, result, note) in enumerate(zip(utterances, results, notes, strict=True)):
        rates = error_rates([u.text], [result.text])
        echo(f"[{i} {u.language}] adapter {result.adapter}: {result.text}")
        echo(f"    reference: {u.text}")
        echo(f"    WER {rates['wer']:.3f}, CER {rates['cer']:.3f}")
        streams.append(
            {
                "language": u.language,
                "adapter": result.adapter,
                "note": note,
                "reference": u.text,
                "hypothesis": result.text,
                "wer": rates["wer"],
                "cer": rates["cer"],
                "partials": _distinct(result.partials),
                "phrase": u.phrase,
                "voice": u.voice,
                "speed": u.speed,
                "pitch": u.pitch,
                "audio_seconds": result.audio_seconds,
            }
        )
    overall = error_rates([u.text for u in utterances], [r.text for r in results])
    echo(timing.describe(chunk_ms=chunk_ms, threads=threads))
    echo(f"all streams: WER {overall['wer']:.3f}, CER {overall['cer']:.3f}")
    return {
        "model": str(model_dir),
        "bundle": None if bundle is None else str(bundle),
        "languages": [u.language for u in utterances],
        "chunk_ms": chunk_ms,
        "threads": threads,
        "seed": seed,
        "streams": streams,
        "wer": overall["wer"],
        "cer": overall["cer"],
        "timing": dataclasses.asdict(timing),
    }
