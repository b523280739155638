"""Log-mel features (whole utterances and streamed), SpecAugment.

Frames are 25 ms windows every 10 ms without centring (``center=False``), so frame ``i`` covers
samples ``[160 i, 160 i + 400)`` and streamed features equal whole-utterance ones.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from .audio import SAMPLE_RATE

__all__ = ["HOP", "N_MELS", "WINDOW", "LogMel", "StreamingLogMel", "num_frames", "spec_augment"]

N_MELS = 80
WINDOW = 400  # samples (25 ms)
HOP = 160  # samples (10 ms)


def num_frames(num_samples: int) -> int:
    """Feature frames for a waveform of ``num_samples`` samples (0 below one window)."""
    return 0 if num_samples < WINDOW else 1 + (num_samples - WINDOW) // HOP


class LogMel(nn.Module):
    """``log(mel power + 1e-6)`` with 80 mel bins (no parameters).

    Args:
        n_mels: Mel bins.
    """

    def __init__(self, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=WINDOW, win_length=WINDOW, hop_length=HOP, n_mels=n_mels, center=False
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Features of waveforms.

        Args:
            waveform: Samples ``(N,)`` or ``(B, N)`` (at least one window).

        Returns:
            ``(T, n_mels)`` or ``(B, T, n_mels)`` with ``T = num_frames(N)``.
        """
        return torch.log(self.mel(waveform).transpose(-1, -2) + 1e-6)

    def batch(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of waveforms of different lengths, right-padded with zeros.

        Returns:
            ``(B, T, n_mels)`` features and ``(B,)`` valid frame counts.
        """
        feats = [self(w) for w in waveforms]
        lengths = torch.tensor([f.shape[0] for f in feats])
        return nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


class StreamingLogMel:
    """Streams :class:`LogMel` features: keeps the samples not yet covered by a whole frame.

    Args:
        logmel: The feature extractor.
    """

    def __init__(self, logmel: LogMel) -> None:
        self.logmel = logmel
        self.buffer = torch.zeros(0)

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        """Adds samples ``(n,)``; returns the frames they complete ``(t, n_mels)`` (possibly ``t = 0``)."""
        self.buffer = torch.cat([self.buffer, samples.to(torch.float32)])
        frames = num_frames(self.buffer.numel())
        if frames == 0:
            return torch.zeros(0, self.logmel.mel.n_mels)
        used = WINDOW + (frames - 1) * HOP
        out = self.logmel(self.buffer[:used])  # (frames, n_mels)
        self.buffer = self.buffer[frames * HOP :]
        return out


def spec_augment(
    features: torch.Tensor,
    *,
    freq_masks: int = 2,
    freq_width: int = 15,
    time_masks: int = 2,
    time_width: int = 20,
) -> torch.Tensor:
    """SpecAugment (torchaudio) on ``(B, T, F)`` features: masks bands and spans with the mean, per example.

    The masks draw from the global RNG (the training loop seeds it at every step).
    """
    augment = torchaudio.transforms.SpecAugment(
        n_time_masks=time_masks,
        time_mask_param=time_width,
        n_freq_masks=freq_masks,
        freq_mask_param=freq_width,
        iid_masks=True,
        zero_masking=False,
    )
    return augment(features.transpose(1, 2)).transpose(1, 2)  # masks act on (..., F, T)
