"""A multilingual synthetic speech corpus: UDHR text spoken by ``espeak-ng``, 16 kHz, with manifests.

Every utterance is a phrase of a UDHR sentence (sentences are cut at punctuation into phrases
of at most ``max_words`` words) spoken with a random voice variant, speed and pitch, optionally
with white noise at a random SNR. Splits follow the UDHR corpus (``train``, ``valid`` and
``test`` are disjoint articles), so test sentences are unseen. A manifest is JSON lines:
``{"audio": relative path, "text", "language", "duration", "split", "voice", "speed", "pitch", "snr"}``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio

from ..data import load_udhr
from ..errors import ConfigError, MissingArtifactError
from ..io import atomic_write_bytes
from .audio import SAMPLE_RATE, AudioError, check_waveform, read_audio, write_audio

__all__ = [
    "ESPEAK_VOICES",
    "Utterance",
    "build_speech_corpus",
    "espeak_available",
    "iter_audio",
    "phrases",
    "read_manifest",
    "synthesize",
]

ESPEAK_VOICES: dict[str, str] = {
    "af": "af",
    "am": "am",
    "de": "de",
    "en": "en-us",
    "es": "es",
    "fi": "fi",
    "fr": "fr-fr",
    "hi": "hi",
    "om": "om",
    "ru": "ru",
    "sw": "sw",
    "tn": "tn",
}
"""Language code (as the UDHR corpus resolves it) to espeak-ng voice."""

_VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4", "+croak", "+klatt")
_PUNCTUATION = re.compile(r"(?<=[,;:.!?።፣፤])\s+")


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One manifest line.

    Attributes:
        audio: Path of the WAV file (absolute once read by :func:`read_manifest`).
        text: What is said.
        language: Language code.
        duration: Seconds.
        split: ``train``, ``valid`` or ``test``.
        voice: espeak-ng voice with variant.
        speed: Words per minute.
        pitch: espeak-ng pitch (0-99).
        snr: Added noise's signal-to-noise ratio in dB, or ``None``.
    """

    audio: str
    text: str
    language: str
    duration: float
    split: str
    voice: str
    speed: int
    pitch: int
    snr: float | None = None


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` program is on ``PATH``."""
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, language: str, *, variant: str = "", speed: int = 160, pitch: int = 50) -> torch.Tensor:
    """Speaks ``text`` with espeak-ng and returns 16 kHz float32 samples ``(N,)``.

    Args:
        text: What to say.
        language: A key of :data:`ESPEAK_VOICES`.
        variant: Voice variant suffix such as ``+f3`` (speaker variety).
        speed: Words per minute (80-450).
        pitch: Pitch (0-99).

    Raises:
        ConfigError: On a language without an espeak-ng voice here.
        MissingArtifactError: If espeak-ng is not installed.
        AudioError: If espeak-ng produced no usable audio.
    """
    if language not in ESPEAK_VOICES:
        raise ConfigError(f"no espeak-ng voice for language {language!r}; voices: {sorted(ESPEAK_VOICES)}")
    if not espeak_available():
        raise MissingArtifactError("espeak-ng is not installed; install it with `apt-get install espeak-ng`")
    import soundfile

    voice = ESPEAK_VOICES[language] + variant
    result = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"espeak-ng failed for voice {voice!r}: {message[0] if message else 'no output'}")
    data, rate = soundfile.read(BytesIO(result.stdout), dtype="float32")
    waveform = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(data)), rate, SAMPLE_RATE)
    return check_waveform(waveform, SAMPLE_RATE, source=f"espeak-ng {voice}")


def phrases(sentence: str, max_words: int = 10) -> list[str]:
    """Cuts a sentence at punctuation, then into runs of at most ``max_words`` words."""
    out = []
    for part in _PUNCTUATION.split(sentence.strip()):
        words = part.split()
        for start in range(0, len(words), max_words):
            piece = " ".join(words[start : start + max_words]).strip(" ,;:")
            if piece:
                out.append(piece)
    return out


def _texts(language: str, split: str, max_words: int) -> list[str]:
    udhr = load_udhr()
    return [p for s in udhr.texts(language, split, unit="sentence") for p in phrases(s, max_words)]


def build_speech_corpus(
    out_dir: str | os.PathLike[str],
    languages: dict[str, int | tuple[int, int] | None],
    *,
    split: str = "train",
    name: str | None = None,
    renditions: int = 1,
    max_words: int = 10,
    noise: bool = True,
    seed: int = 0,
) -> Path:
    """Synthesises a split's phrases for several languages and writes ``out_dir/<name>.jsonl``.

    Deterministic for a given seed; WAVs go to ``out_dir/<name>/<language>/``.

    Args:
        out_dir: Corpus directory.
        languages: Language code to the phrases to use: a count from the start, a ``(start,
            stop)`` range of phrase indices, or ``None`` for all of the split.
        split: UDHR split (``train``, ``valid``, ``test``).
        name: Manifest and folder name (default: ``split``), e.g. ``unlabelled``.
        renditions: Voices per phrase (speaker variety).
        max_words: Longest phrase in words.
        noise: Add white noise at 15-35 dB SNR to half of the utterances.
        seed: Seeds voices, speeds, pitches and noise.

    Returns:
        The manifest's path.
    """
    out = Path(out_dir)
    name = name or split
    rng = random.Random(f"{seed}:{name}")
    lines = []
    for language, which in languages.items():
        texts = _texts(language, split, max_words)
        start, stop = (0, len(texts)) if which is None else (0, which) if isinstance(which, int) else which
        for i in range(start, min(stop, len(texts))):
            text = texts[i]
            for r in range(renditions):
                variant, speed, pitch = rng.choice(_VARIANTS), rng.randint(130, 200), rng.randint(30, 70)
                snr = rng.uniform(15, 35) if noise and rng.random() < 0.5 else None
                waveform = synthesize(text, language, variant=variant, speed=speed, pitch=pitch)
                if snr is not None:
                    generator = torch.Generator().manual_seed(rng.getrandbits(63))
                    power = waveform.pow(2).mean() / 10 ** (snr / 10)
                    waveform = waveform + power.sqrt() * torch.randn(waveform.shape, generator=generator)
                relative = Path(name) / language / f"{i:05d}-{r}.wav"
                write_audio(out / relative, waveform)
                utterance = Utterance(
                    audio=relative.as_posix(),
                    text=text,
                    language=language,
                    duration=round(waveform.numel() / SAMPLE_RATE, 3),
                    split=split,
                    voice=ESPEAK_VOICES[language] + variant,
                    speed=speed,
                    pitch=pitch,
                    snr=None if snr is None else round(snr, 2),
                )
                lines.append(json.dumps(dataclasses.asdict(utterance), ensure_ascii=False))
    manifest = out / f"{name}.jsonl"
    atomic_write_bytes(manifest, ("\n".join(lines) + "\n").encode())
    return manifest


def read_manifest(path: str | os.PathLike[str], *, languages: Sequence[str] | None = None) -> list[Utterance]:
    """Reads a manifest; audio paths become absolute (relative to the manifest's directory).

    Raises:
        MissingArtifactError: If the manifest is missing.
        ConfigError: On a malformed line (named by number).
    """
    source = Path(path)
    if not source.is_file():
        raise MissingArtifactError(f"{source}: no manifest; build one with build_speech_corpus(...)")
    out = []
    fields = {f.name for f in dataclasses.fields(Utterance)}
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record: dict[str, Any] = json.loads(line)
            record = {k: v for k, v in record.items() if k in fields}
            utterance = Utterance(**record)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{source}:{number}: malformed manifest line ({err}); rebuild the manifest") from None
        if languages is None or utterance.language in languages:
            out.append(dataclasses.replace(utterance, audio=str(source.parent / utterance.audio)))
    return out


def iter_audio(utterances: Sequence[Utterance]) -> Iterator[tuple[Utterance, torch.Tensor]]:
    """Yields each utterance with its samples (read and checked)."""
    for u in utterances:
        yield u, read_audio(u.audio)
