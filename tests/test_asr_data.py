"""Speech data: audio checks, streamed features, tokenizer, espeak-ng corpus and manifests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile
import torch

from polyglot_adapters.asr import (
    SAMPLE_RATE,
    AudioError,
    LogMel,
    StreamingLogMel,
    build_speech_corpus,
    check_waveform,
    error_rates,
    espeak_available,
    normalize_transcript,
    read_audio,
    read_manifest,
    spec_augment,
    synthesize,
    train_tokenizer,
    write_audio,
)
from polyglot_adapters.asr.data import phrases
from polyglot_adapters.asr.features import num_frames
from polyglot_adapters.errors import ConfigError

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


def tone(seconds: float = 0.5, rate: int = SAMPLE_RATE) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return 0.3 * torch.sin(2 * math.pi * 440 * t) * torch.linspace(0.2, 1.0, t.numel())


def test_waveform_checks_name_the_problem() -> None:
    assert check_waveform(tone(), SAMPLE_RATE).dtype == torch.float32
    with pytest.raises(AudioError, match="sample rate 8000 Hz, expected 16000"):
        check_waveform(tone(rate=8000), 8000)
    bad = tone()
    bad[100] = float("nan")
    with pytest.raises(AudioError, match="1 samples are NaN or infinite"):
        check_waveform(bad, SAMPLE_RATE, source="x.wav")
    with pytest.raises(AudioError, match="silent"):
        check_waveform(torch.zeros(16000), SAMPLE_RATE)
    with pytest.raises(AudioError, match="empty"):
        check_waveform(torch.zeros(0), SAMPLE_RATE)
    with pytest.raises(AudioError, match="shorter than one 25 ms window"):
        check_waveform(tone()[:399], SAMPLE_RATE)
    with pytest.raises(AudioError, match="mono"):
        check_waveform(torch.zeros(2, 100), SAMPLE_RATE)


def test_audio_files_round_trip_and_bad_files_fail_clearly(tmp_path) -> None:
    path = write_audio(tmp_path / "a.wav", tone())
    assert not list(tmp_path.glob(".*.tmp"))
    torch.testing.assert_close(read_audio(path), tone(), rtol=0, atol=1 / 32767)
    soundfile.write(tmp_path / "stereo.wav", np.zeros((800, 2), dtype=np.float32) + 0.1, SAMPLE_RATE)
    with pytest.raises(AudioError, match="stereo.wav: 2 channels, expected mono"):
        read_audio(tmp_path / "stereo.wav")
    soundfile.write(tmp_path / "low.wav", tone(rate=8000).numpy(), 8000)
    with pytest.raises(AudioError, match="low.wav: sample rate 8000 Hz"):
        read_audio(tmp_path / "low.wav")
    assert read_audio(tmp_path / "low.wav", resample=True).numel() == 8000
    (tmp_path / "cut.wav").write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioError, match="cut.wav: cannot read audio"):
        read_audio(tmp_path / "cut.wav")
    with pytest.raises(AudioError, match="missing.wav: cannot read audio"):
        read_audio(tmp_path / "missing.wav")


def test_streamed_features_equal_whole_utterance_features() -> None:
    logmel = LogMel()
    wave = tone(0.83)
    whole = logmel(wave)
    assert whole.shape == (num_frames(wave.numel()), 80)
    streamer = StreamingLogMel(logmel)
    parts = [streamer.accept(piece) for piece in torch.split(wave, [123, 4000, 1, 2555, 6601])]
    streamed = torch.cat(parts)
    assert streamed.shape == whole.shape
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    batch, lengths = logmel.batch([wave, wave[:5000]])
    assert batch.shape == (2, whole.shape[0], 80) and lengths.tolist() == [whole.shape[0], num_frames(5000)]


def test_spec_augment_masks_with_the_mean_and_keeps_shape() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 50, 80)
    y = spec_augment(x, freq_masks=1, freq_width=10, time_masks=1, time_width=10)
    assert y.shape == x.shape and not torch.equal(x, y)


def test_tokenizer_round_trips_multilingual_text() -> None:
    texts = ["Watu wote wamezaliwa huru", "Alle Menschen sind frei", "ሁሉም ሰዎች"]
    tokenizer = train_tokenizer(texts * 5, vocab_size=40)
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text.lower()
    assert tokenizer.blank == tokenizer.num_symbols - 1
    assert tokenizer.decode([tokenizer.blank]) == ""
    with pytest.raises(ConfigError, match="at least one"):
        train_tokenizer([" "])


def test_transcripts_are_normalised_for_targets_and_scoring() -> None:
    assert normalize_transcript("Kila mtu, ana haki (ya) kuishi!") == "kila mtu ana haki ya kuishi"
    assert normalize_transcript("ማንም፡ሰው፡ቢሆን።") == "ማንም ሰው ቢሆን"  # Ethiopic word space and full stop
    assert normalize_transcript("Namni kamiyyuu ga'uu") == "namni kamiyyuu ga'uu"
    assert error_rates(["Alle Menschen, frei."], ["alle menschen frei"]) == {"wer": 0.0, "cer": 0.0}
    assert error_rates(["a b c d"], ["a x c"]) == {"wer": 0.5, "cer": 3 / 7}


def test_phrases_cut_at_punctuation_and_length() -> None:
    sentence = "Kila mtu ana haki ya kuishi, uhuru na usalama wa maisha yake na familia yake yote kabisa."
    out = phrases(sentence, max_words=5)
    assert out[0] == "Kila mtu ana haki ya"
    assert all(len(p.split()) <= 5 for p in out)
    assert " ".join(out).replace(",", "") == sentence.replace(",", "").rstrip(".") + "."


@needs_espeak
def test_espeak_corpus_manifest_and_splits(tmp_path) -> None:
    wave = synthesize("watu wote wamezaliwa huru", "sw", variant="+f2", speed=170, pitch=60)
    assert wave.numel() > SAMPLE_RATE // 2 and torch.isfinite(wave).all()
    manifest = build_speech_corpus(tmp_path, {"sw": 3, "de": 2}, split="test", renditions=2, seed=1)
    utterances = read_manifest(manifest)
    assert len(utterances) == 10 and {u.language for u in utterances} == {"sw", "de"}
    assert all(u.split == "test" and u.duration > 0.2 for u in utterances)
    assert abs(read_audio(utterances[0].audio).numel() - utterances[0].duration * SAMPLE_RATE) <= 8  # ms rounding
    again = build_speech_corpus(tmp_path / "again", {"sw": 3, "de": 2}, split="test", renditions=2, seed=1)
    assert [json.loads(line) for line in again.read_text().splitlines()] == [
        json.loads(line) for line in manifest.read_text().splitlines()
    ]
    assert read_manifest(manifest, languages=["de"])[0].language == "de"
    (tmp_path / "bad.jsonl").write_text(manifest.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(ConfigError, match="bad.jsonl:2: malformed manifest line"):
        read_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="no espeak-ng voice for language 'yo'"):
        synthesize("bawo ni", "yo")
