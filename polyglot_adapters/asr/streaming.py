"""Streaming recognition of several concurrent streams in one batch, each with its language's adapter.

Audio arrives in chunks of ``chunk_ms``; each stream keeps its own feature buffer, and all
streams share one batched encoder state and one batched greedy decoder state. Rows are routed
to their language's adapter with ``Route``; a stream whose language has no adapter runs the
base model (through an all-zero adapter, which is exactly the identity) and says so. With a
cascaded model the partial transcripts come from the streaming (first-pass) encoder, and when a
stream ends its second pass re-encodes the whole utterance and gives the final transcript.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from ..composition import Route
from ..merging import load_bundle
from ..model import AdaptedModel
from .audio import SAMPLE_RATE, check_waveform
from .decoding import greedy_search
from .features import HOP, WINDOW, LogMel, StreamingLogMel
from .model import ConformerTransducer
from .recipe import language_adapter_config
from .tokenizer import SpeechTokenizer
from .training import decode_encodings, load_transducer

__all__ = ["BASE", "Recognizer", "StreamResult", "StreamTiming"]

BASE = "base"
"""Name of the identity adapter that streams without a language adapter are routed to."""


@dataclasses.dataclass
class StreamResult:
    """One stream's outcome.

    Attributes:
        language: The requested language.
        adapter: The adapter used (:data:`BASE` when the language has none).
        text: Final transcript (a cascaded model's second pass).
        partials: Transcript after each chunk (the streaming first pass).
        audio_seconds: Length of the audio.
        chunk_seconds: Compute time of each step (shared by the streams of a batch).
        final_seconds: Compute time of the second pass after the stream's end (0 without a cascade).
    """

    language: str
    adapter: str
    text: str
    partials: list[str]
    audio_seconds: float
    chunk_seconds: list[float]
    final_seconds: float = 0.0


@dataclasses.dataclass(frozen=True)
class StreamTiming:
    """How fast a :meth:`Recognizer.stream` call ran.

    Attributes:
        streams: Concurrent streams.
        audio_seconds: The longest stream's audio.
        wall_seconds: Wall time of the whole call.
        rtf: Real-time factor, ``wall_seconds / audio_seconds``.
        chunk_p50_ms: Median compute time of one step (a chunk of every stream), in ms.
        chunk_p95_ms: Its 95th percentile (nearest rank below), in ms.
        steps: Steps (chunks) timed.
    """

    streams: int
    audio_seconds: float
    wall_seconds: float
    rtf: float
    chunk_p50_ms: float
    chunk_p95_ms: float
    steps: int

    @classmethod
    def of(cls, results: Sequence[StreamResult], wall_seconds: float) -> StreamTiming:
        """The timing of one :meth:`Recognizer.stream` call from its results and measured wall time.

        Raises:
            ValueError: If there are no results.
        """
        if not results:
            raise ValueError("no stream results to time")
        audio_seconds = max(r.audio_seconds for r in results)
        chunk = sorted(results[0].chunk_seconds)  # the streams of a batch share their steps
        return cls(
            streams=len(results),
            audio_seconds=audio_seconds,
            wall_seconds=wall_seconds,
            rtf=wall_seconds / audio_seconds,
            chunk_p50_ms=statistics.median(chunk) * 1000 if chunk else 0.0,
            chunk_p95_ms=chunk[min(len(chunk) - 1, int(0.95 * len(chunk)))] * 1000 if chunk else 0.0,
            steps=len(chunk),
        )

    def describe(self, *, chunk_ms: int, threads: int) -> str:
        """One line: real-time factor and per-chunk compute p50/p95."""
        return (
            f"real-time factor {self.rtf:.3f} ({self.streams} stream(s), {threads} thread(s)); "
            f"per-chunk compute p50 {self.chunk_p50_ms:.1f} ms, p95 {self.chunk_p95_ms:.1f} ms "
            f"for {chunk_ms} ms chunks"
        )


class Recognizer:
    """A trained transducer, its tokenizer and language adapters, ready to stream.

    Args:
        model: The transducer.
        tokenizer: Its tokenizer.
        adapters: Language code to adapter directory.
        bundle: A bundle of per-language adapters (``bundle_language_adapters``), loaded too.
    """

    def __init__(
        self,
        model: ConformerTransducer,
        tokenizer: SpeechTokenizer,
        adapters: dict[str, str | os.PathLike[str]] | None = None,
        bundle: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.am = AdaptedModel(self.model)
        for language, directory in (adapters or {}).items():
            self.am.load_adapter(directory, name=language)
        if bundle is not None:
            load_bundle(self.am, bundle)
        self.am.eval()  # new adapter layers start in training mode (LoRA dropout)
        self.logmel = LogMel()

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike[str],
        adapters: dict[str, str | os.PathLike[str]] | None = None,
        bundle: str | os.PathLike[str] | None = None,
    ) -> Recognizer:
        """Loads a model directory (``save_transducer``), adapters and a bundle of adapters."""
        model, tokenizer, _ = load_transducer(model_dir)
        return cls(model, tokenizer, adapters, bundle)

    @property
    def languages(self) -> list[str]:
        """Languages with an adapter."""
        return [name for name in self.am.adapters if name != BASE]

    def _route(self, languages: Sequence[str]) -> list[str]:
        names = [lang if lang in self.am.adapters and lang != BASE else BASE for lang in languages]
        if BASE in names and BASE not in self.am.adapters:
            self.am.add_adapter(BASE, language_adapter_config())  # zero up-projection: exactly the identity
            self.am.eval()
        mapping = {i: name for i, name in enumerate(dict.fromkeys(names))}
        index = {name: i for i, name in mapping.items()}
        self.am.set_active(Route([index[n] for n in names], mapping))
        return names

    @torch.no_grad()
    def transcribe(
        self,
        waveforms: Sequence[torch.Tensor],
        languages: Sequence[str],
        *,
        first_pass: bool = False,
        beam_width: int = 1,
    ) -> list[str]:
        """Offline (whole-utterance) transcripts of 16 kHz waveforms, one language each.

        A cascaded model decodes its second pass unless ``first_pass`` is set. ``beam_width`` 1
        decodes greedily (all waveforms in one batch); more runs beam search per waveform.
        """
        for i, w in enumerate(waveforms):
            check_waveform(w, SAMPLE_RATE, source=f"waveform {i}")
        names = self._route(languages)
        features, lengths = self.logmel.batch(list(waveforms))
        encodings, enc_lengths = self.model.encode(features, lengths, first_pass=first_pass)  # (B, T', D)
        tokens = decode_encodings(self.am, encodings, enc_lengths, beam_width=beam_width, adapters=names)
        return [self.tokenizer.decode(t) for t in tokens]

    def _second_pass(self, encoded: Sequence[list[torch.Tensor]], languages: Sequence[str]) -> list[str]:
        """Final transcripts of ended streams: their first-pass encodings re-encoded by the cascade."""
        self._route(languages)
        chunks = [torch.cat(parts) if parts else torch.zeros(0, self.model.config.hidden_size) for parts in encoded]
        lengths = torch.tensor([c.shape[0] for c in chunks])
        padded = torch.nn.utils.rnn.pad_sequence(chunks, batch_first=True)  # (B, T', D)
        encodings, lengths = self.model.second_pass(padded, lengths)
        return [self.tokenizer.decode(t) for t in greedy_search(self.model, encodings, lengths).tokens]

    @torch.no_grad()
    def stream(
        self,
        waveforms: Sequence[torch.Tensor],
        languages: Sequence[str],
        *,
        chunk_ms: int = 320,
        on_partial: Callable[[int, str], None] | None = None,
    ) -> list[StreamResult]:
        """Decodes concurrent streams chunk by chunk, as if the audio arrived in real time.

        Args:
            waveforms: 16 kHz mono waveforms, one per stream.
            languages: Each stream's language (its adapter, or the base if it has none).
            chunk_ms: Audio per step; a multiple of the model's chunk (``10 * config.chunk_size`` ms).
            on_partial: Called with ``(stream index, transcript so far)`` after every step.

        Raises:
            ValueError: If ``chunk_ms`` is not a positive multiple of the model's chunk.
            AudioError: On a waveform that fails :func:`check_waveform`.
        """
        model_chunk_ms = 10 * self.model.config.chunk_size
        if chunk_ms <= 0 or chunk_ms % model_chunk_ms:
            raise ValueError(f"chunk_ms must be a positive multiple of {model_chunk_ms} ms, got {chunk_ms}")
        if len(waveforms) != len(languages):
            raise ValueError(f"{len(waveforms)} waveforms but {len(languages)} languages")
        waves = [check_waveform(w, SAMPLE_RATE, source=f"stream {i}") for i, w in enumerate(waveforms)]
        names = self._route(languages)
        b = len(waves)
        step_samples, frames_per_step = chunk_ms * SAMPLE_RATE // 1000, chunk_ms * SAMPLE_RATE // 1000 // HOP
        streamers = [StreamingLogMel(self.logmel) for _ in waves]
        pending = [torch.zeros(0, self.logmel.mel.n_mels) for _ in waves]
        done = [False] * b
        state, decoder = None, None
        partials: list[list[str]] = [[] for _ in waves]
        encoded: list[list[torch.Tensor]] = [[] for _ in waves]  # first-pass frames, for a cascade
        finals: dict[int, str] = {}
        final_seconds = [0.0] * b
        timings: list[float] = []
        position, lookahead = 0, WINDOW - HOP
        while not all(done):
            clock = time.perf_counter()
            batch = torch.zeros(b, frames_per_step, self.logmel.mel.n_mels)
            lengths = torch.zeros(b, dtype=torch.long)
            # Each step feeds the window's look-ahead too, so that it completes exactly one chunk of frames.
            start, stop = (position + lookahead if position else 0), position + step_samples + lookahead
            for i, wave in enumerate(waves):
                if done[i]:
                    continue
                pending[i] = torch.cat([pending[i], streamers[i].accept(wave[start:stop])])
                last = stop >= wave.numel()
                if pending[i].shape[0] < frames_per_step and not last:
                    continue  # not a full chunk yet: this row waits (its state is kept)
                take = pending[i][:frames_per_step]
                pending[i] = pending[i][frames_per_step:]
                batch[i, : take.shape[0]] = take
                lengths[i] = take.shape[0]
                done[i] = last and pending[i].shape[0] == 0
            encodings, enc_lengths, state = self.model.infer(batch, lengths, state)
            decoder = greedy_search(self.model, encodings, enc_lengths, decoder)
            timings.append(time.perf_counter() - clock)
            for i in range(b):
                text = self.tokenizer.decode(decoder.tokens[i])
                partials[i].append(text)
                if on_partial is not None and lengths[i] > 0:
                    on_partial(i, text)
                if self.model.cascaded and lengths[i] > 0:
                    encoded[i].append(encodings[i, : enc_lengths[i]])
            ended = [i for i in range(b) if done[i] and i not in finals] if self.model.cascaded else []
            if ended:
                clock = time.perf_counter()
                texts = self._second_pass([encoded[i] for i in ended], [languages[i] for i in ended])
                elapsed = time.perf_counter() - clock
                self._route(languages)
                for i, text in zip(ended, texts, strict=True):
                    finals[i], final_seconds[i] = text, elapsed
            position += step_samples
        return [
            StreamResult(
                language=languages[i],
                adapter=names[i],
                text=finals.get(i, partials[i][-1] if partials[i] else ""),
                partials=partials[i],
                audio_seconds=waves[i].numel() / SAMPLE_RATE,
                chunk_seconds=timings,
                final_seconds=final_seconds[i],
            )
            for i in range(b)
        ]
