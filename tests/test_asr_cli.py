"""Streaming recognition of concurrent streams and the ``polyglot-adapters asr`` commands."""

from __future__ import annotations

import math

import pytest
import torch

from polyglot_adapters.asr import (
    SAMPLE_RATE,
    AudioError,
    LogMel,
    beam_search,
    conformer_transducer_tiny,
    espeak_available,
    greedy_search,
    read_audio,
    save_transducer,
    train_tokenizer,
    write_audio,
)
from polyglot_adapters.asr.recipe import language_adapter_config
from polyglot_adapters.asr.streaming import BASE, Recognizer
from polyglot_adapters.cli.main import main
from polyglot_adapters.model import AdaptedModel


def chirp(seconds: float, f0: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.3 * torch.sin(2 * math.pi * (f0 + 300 * t) * t)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random tiny model with a Swahili adapter (random, so that it changes the output), saved."""
    root = tmp_path_factory.mktemp("asr")
    tokenizer = train_tokenizer(["watu wote wamezaliwa huru", "alle menschen sind frei"] * 4, vocab_size=30)
    torch.manual_seed(0)
    model = conformer_transducer_tiny(num_symbols=tokenizer.num_symbols).eval().requires_grad_(False)
    save_transducer(model, tokenizer, root / "model", languages=["sw", "de"])
    am = AdaptedModel(model)
    am.add_adapter("sw", language_adapter_config(8))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in am.model.named_parameters():
            if ".adapters.sw." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    am.save_adapter("sw", root / "sw")
    return root


def test_concurrent_streams_equal_offline_decoding_with_their_adapters(model_dir) -> None:
    recognizer = Recognizer.load(model_dir / "model", {"sw": model_dir / "sw"})
    waves = [chirp(1.3, 200), chirp(0.7, 500), chirp(1.0, 300)]
    languages = ["sw", "de", "sw"]
    seen: list[tuple[int, str]] = []
    results = recognizer.stream(waves, languages, chunk_ms=160, on_partial=lambda i, t: seen.append((i, t)))
    offline = recognizer.transcribe(waves, languages)
    assert [r.text for r in results] == offline
    assert [r.adapter for r in results] == ["sw", BASE, "sw"]
    assert any(r.text for r in results) and seen
    # Each stream decodes the same alone, and the adapter matters.
    alone = recognizer.stream([waves[1]], ["de"], chunk_ms=320)[0]
    assert alone.text == results[1].text
    assert recognizer.transcribe([waves[0]], ["de"]) != recognizer.transcribe([waves[0]], ["sw"])
    # The identity adapter that stands for the base is exactly the base.
    bare = Recognizer.load(model_dir / "model")
    features, lengths = LogMel().batch([waves[1]])
    with torch.no_grad():
        enc, enc_lengths = bare.model.transcriber(features, lengths)
    assert results[1].text == bare.tokenizer.decode(greedy_search(bare.model, enc, enc_lengths).tokens[0])
    with pytest.raises(ValueError, match="multiple of 80 ms"):
        recognizer.stream(waves, languages, chunk_ms=100)
    with pytest.raises(AudioError, match="stream 1: .*NaN"):
        recognizer.stream([waves[0], torch.full((8000,), float("nan"))], ["sw", "sw"])


def test_beam_transcripts_search_each_waveform_with_its_own_adapter(model_dir, tmp_path, capsys) -> None:
    recognizer = Recognizer.load(model_dir / "model", {"sw": model_dir / "sw"})
    waves = [chirp(1.3, 200), chirp(0.7, 500), chirp(1.0, 300)]
    languages = ["sw", "de", "sw"]
    texts = recognizer.transcribe(waves, languages, beam_width=3)
    for wave, language, text in zip(waves, languages, texts, strict=True):
        features, lengths = LogMel().batch([wave])
        recognizer.am.set_active("sw" if language == "sw" else None)
        alone = beam_search(recognizer.model, features[0], int(lengths[0]), beam_width=3)
        assert text == recognizer.tokenizer.decode(alone)
    assert texts[0] != recognizer.transcribe([waves[0]], ["de"], beam_width=3)[0]  # the adapter matters
    with pytest.raises(ValueError, match="beam_width must be at least 1"):
        recognizer.transcribe(waves, languages, beam_width=0)
    a = write_audio(tmp_path / "a.wav", waves[0])
    args = ["--model", str(model_dir / "model"), "--adapter", f"sw={model_dir / 'sw'}"]
    assert main(["asr", "transcribe", f"{a}:sw", *args, "--beam-width", "3"]) == 0
    assert capsys.readouterr().out == f"{a}: {texts[0]}\n"
    assert main(["asr", "transcribe", f"{a}:sw", *args, "--beam-width", "0"]) != 0


def test_cli_stream_transcribe_and_bad_input(model_dir, tmp_path, capsys) -> None:
    a, b = write_audio(tmp_path / "a.wav", chirp(1.2, 250)), write_audio(tmp_path / "b.wav", chirp(0.8, 400))
    args = ["--model", str(model_dir / "model"), "--adapter", f"sw={model_dir / 'sw'}"]
    assert main(["asr", "stream", f"{a}:sw", f"{b}:am", *args, "--chunk-ms", "160"]) == 0
    out = capsys.readouterr().out
    assert "note: no adapter for 'am'" in out and "real-time factor" in out and "p95" in out
    assert f"[0] {a} (sw, adapter sw):" in out and f"[1] {b} (am, adapter {BASE}):" in out
    assert main(["asr", "transcribe", str(a), "--lang", "sw", *args]) == 0
    assert capsys.readouterr().out.startswith(f"{a}: ")

    import soundfile

    soundfile.write(tmp_path / "low.wav", chirp(1.0, 300).numpy(), 8000)
    assert main(["asr", "stream", str(tmp_path / "low.wav"), "--lang", "sw", *args]) == 1
    assert "low.wav: sample rate 8000 Hz, expected 16000 Hz" in capsys.readouterr().err
    assert main(["asr", "stream", str(tmp_path / "low.wav"), "--lang", "sw", "--resample", *args]) == 0
    (tmp_path / "cut.wav").write_bytes(a.read_bytes()[:40])
    assert main(["asr", "transcribe", str(tmp_path / "cut.wav"), "--lang", "sw", *args]) == 1
    assert "cut.wav: cannot read audio" in capsys.readouterr().err
    assert main(["asr", "stream", str(a), *args]) != 0  # no language for the stream
    assert main(["asr", "transcribe", str(a), "--lang", "sw", "--model", str(tmp_path)]) == 1
    assert "model.json: missing" in capsys.readouterr().err


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_cli_synth_writes_a_16khz_wav(tmp_path, capsys) -> None:
    assert main(["asr", "synth", "watu wote wamezaliwa huru", "--lang", "sw", "--out", str(tmp_path / "s.wav")]) == 0
    assert read_audio(tmp_path / "s.wav").numel() > SAMPLE_RATE // 2
    assert main(["asr", "synth", "ẹ ku aarọ", "--lang", "yo", "--out", str(tmp_path / "y.wav")]) == 1
    assert "no espeak-ng voice for language 'yo'" in capsys.readouterr().err
    assert not (tmp_path / "y.wav").exists()
