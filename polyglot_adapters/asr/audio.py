"""Audio I/O (soundfile) and waveform checks: 16 kHz mono float32, finite, not empty, not silent."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
import torchaudio

from ..errors import PolyglotAdaptersError
from ..io import atomic_write_bytes

__all__ = ["SAMPLE_RATE", "AudioError", "check_waveform", "read_audio", "write_audio"]

SAMPLE_RATE = 16_000
"""The models' sample rate (Hz)."""

_SILENCE = 1e-4  # peak amplitude below which audio counts as silent
_MIN_SAMPLES = 400  # one 25 ms analysis window


class AudioError(PolyglotAdaptersError, ValueError):
    """Audio that cannot be used: unreadable, wrong rate or channels, empty, silent, NaN/Inf samples."""


def check_waveform(waveform: torch.Tensor, sample_rate: int, *, source: str = "waveform") -> torch.Tensor:
    """Validates a mono waveform at :data:`SAMPLE_RATE` and returns it as float32 ``(N,)``.

    Args:
        waveform: Samples ``(N,)`` (or ``(1, N)``) in ``[-1, 1]``.
        sample_rate: Its sample rate.
        source: What to name in error messages (a file path).

    Raises:
        AudioError: On another rate, several channels, no samples (or fewer than one 25 ms
            window), NaN/Inf samples or silence.
    """
    if sample_rate != SAMPLE_RATE:
        raise AudioError(
            f"{source}: sample rate {sample_rate} Hz, expected {SAMPLE_RATE} Hz; pass 16 kHz audio or let it be "
            f"resampled (CLI --resample, read_audio(..., resample=True))"
        )
    if waveform.dim() == 2 and waveform.shape[0] == 1:
        waveform = waveform[0]
    if waveform.dim() != 1:
        raise AudioError(f"{source}: expected mono audio (N,), got shape {tuple(waveform.shape)}; mix it down first")
    if waveform.numel() == 0:
        raise AudioError(f"{source}: the audio is empty")
    if waveform.numel() < _MIN_SAMPLES:
        raise AudioError(
            f"{source}: {waveform.numel()} samples is shorter than one 25 ms window; nothing to recognise"
        )
    waveform = waveform.to(torch.float32)
    if not torch.isfinite(waveform).all():
        bad = int((~torch.isfinite(waveform)).sum())
        raise AudioError(f"{source}: {bad} samples are NaN or infinite; fix or drop the file")
    if float(waveform.abs().max()) < _SILENCE:
        raise AudioError(f"{source}: the audio is silent (peak below {_SILENCE}); nothing to recognise")
    return waveform


def read_audio(path: str | os.PathLike[str], *, resample: bool = False) -> torch.Tensor:
    """Reads a mono audio file as float32 ``(N,)`` at :data:`SAMPLE_RATE`.

    Args:
        path: A file soundfile reads (WAV, FLAC, OGG).
        resample: Resample other rates to 16 kHz instead of refusing them.

    Raises:
        AudioError: If the file is missing, truncated or unreadable, has several channels, has
            another sample rate (unless ``resample``) or fails :func:`check_waveform`.
    """
    import soundfile  # imported here: training from feature packs needs no audio library

    source = os.fspath(path)
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AudioError(f"{source}: cannot read audio ({first}); pass a complete WAV/FLAC/OGG file") from None
    if data.shape[1] != 1:
        raise AudioError(f"{source}: {data.shape[1]} channels, expected mono; mix it down first (e.g. sox -c 1)")
    waveform = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if rate != SAMPLE_RATE and resample and waveform.numel():
        waveform = torchaudio.functional.resample(waveform, rate, SAMPLE_RATE)
        rate = SAMPLE_RATE
    return check_waveform(waveform, rate, source=source)


def write_audio(path: str | os.PathLike[str], waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> Path:
    """Writes a mono 16-bit PCM WAV atomically (through :func:`polyglot_adapters.io.atomic_write_bytes`)."""
    import soundfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    samples = waveform.detach().to(torch.float32).reshape(-1).clamp(-1, 1).cpu().numpy()
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(target, buffer.getvalue())
    return target
