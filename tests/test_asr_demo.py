"""``asr demo``: held-out phrases streamed concurrently through a small trained model and its adapter bundle."""

from __future__ import annotations

import fnmatch
import json
import shutil

import pytest
import torch

from polyglot_adapters.asr import SpeechExample, espeak_available, load_transducer, train_tokenizer
from polyglot_adapters.asr import demo as demo_module
from polyglot_adapters.asr.data import _texts
from polyglot_adapters.asr.demo import DEMO_CHECKPOINT, demo_checkpoint, demo_utterances, run_demo
from polyglot_adapters.asr.recipe import SpeechData, bundle_language_adapters, language_adapter_config, train_base
from polyglot_adapters.asr.streaming import BASE, Recognizer
from polyglot_adapters.asr.training import error_rates
from polyglot_adapters.cli.main import main
from polyglot_adapters.errors import ConfigError, MissingArtifactError
from polyglot_adapters.model import AdaptedModel
from polyglot_adapters.training import TrainConfig

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)
TEXTS = {"de": ["alle menschen sind frei", "niemand darf"], "sw": ["watu wote wamezaliwa huru", "mtu ye yote"]}
SHIPPED = ("model.json", "model.safetensors", "tokenizer.model", "bundle.json", "bundle.safetensors")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base trained for a few steps, a Swahili adapter in a bundle, and both as one checkpoint directory."""
    root = tmp_path_factory.mktemp("demo")
    tokenizer = train_tokenizer([t for texts in TEXTS.values() for t in texts] * 3, vocab_size=32)
    languages = list(TEXTS)
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> list[SpeechExample]:
        out = []
        for i in range(n):
            language = languages[i % 2]
            text = TEXTS[language][(i // 2) % 2]
            features = torch.randn(24 + 4 * (i % 3), 80, generator=gen) * 2 - 5
            out.append(SpeechExample(features, tuple(tokenizer.encode(text)), i % 2, text))
        return out

    data = SpeechData(tokenizer, languages, {"train_head": split(8), "valid": split(2)})
    quick = TrainConfig(steps=3, batch_size=4, eval_every=3, save_every=3, best_metric="valid_loss")
    train_base(data, root / "base", preset="tiny", config=quick, progress=False)
    model, _, _ = load_transducer(root / "base" / "model")
    am = AdaptedModel(model.requires_grad_(False))
    am.add_adapter("sw", language_adapter_config(8))
    with torch.no_grad():  # a random adapter, so that it changes the output
        for name, p in am.model.named_parameters():
            if ".adapters.sw." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    am.save_adapter("sw", root / "lda" / "adapter")
    bundle_language_adapters({"sw": root / "lda"}, root / "bundle")
    checkpoint = root / "checkpoint"  # the shipped layout: model and bundle side by side
    shutil.copytree(root / "base" / "model", checkpoint)
    for name in ("bundle.json", "bundle.safetensors"):
        shutil.copy(root / "bundle" / name, checkpoint / name)
    return root


def test_utterances_are_held_out_phrases_chosen_by_the_seed() -> None:
    first = demo_utterances(["sw", "de", "en"], seed=0)
    assert demo_utterances(["sw", "de", "en"], seed=0) == first
    assert demo_utterances(["en", "sw"], seed=0) == [first[2], first[0]]  # each language draws on its own
    assert [u.text for u in demo_utterances(["sw", "de", "en"], seed=1)] != [u.text for u in first]
    for u in first:
        assert _texts(u.language, "test", 10)[u.phrase] == u.text
        assert 130 <= u.speed <= 200 and 30 <= u.pitch <= 70
    with pytest.raises(ConfigError, match="no espeak-ng voice for language 'xx'"):
        demo_utterances(["sw", "xx"])
    with pytest.raises(ConfigError, match="give each language once"):
        demo_utterances(["sw", "sw"])
    with pytest.raises(ConfigError, match="at least one language"):
        demo_utterances([])


@needs_espeak
def test_demo_streams_every_language_at_once_and_equals_offline_decoding(trained) -> None:
    lines: list[str] = []
    languages = ("sw", "de")
    results = run_demo(
        model_dir=trained / "base" / "model",
        bundle=trained / "bundle",
        languages=languages,
        chunk_ms=160,
        seed=3,
        echo=lines.append,
    )
    streams = results["streams"]
    assert [s["language"] for s in streams] == list(languages)
    assert [s["adapter"] for s in streams] == ["sw", BASE]
    assert streams[0]["note"] is None and "base model" in streams[1]["note"]
    assert "[1 de] note: no adapter for 'de'; decoding it with the base model" in lines

    # Streaming equals offline decoding of the same waveforms, each with its adapter.
    utterances = demo_utterances(languages, seed=3)
    waves = [u.synthesize() for u in utterances]
    recognizer = Recognizer.load(trained / "base" / "model", bundle=trained / "bundle")
    assert [s["hypothesis"] for s in streams] == recognizer.transcribe(waves, list(languages))
    assert [s["reference"] for s in streams] == [u.text for u in utterances]
    for s in streams:
        assert {"wer": s["wer"], "cer": s["cer"]} == error_rates([s["reference"]], [s["hypothesis"]])
    assert results["wer"] == error_rates([s["reference"] for s in streams], [s["hypothesis"] for s in streams])["wer"]

    # Partials as chunks arrive, then the final lines and the timing.
    partials = [line for line in lines if " … " in line]
    assert partials and all(line.startswith(("[0 sw] … ", "[1 de] … ")) for line in partials)
    assert lines.index(partials[-1]) < lines.index(f"[0 sw] adapter sw: {streams[0]['hypothesis']}")
    assert f"[1 de] adapter {BASE}: {streams[1]['hypothesis']}" in lines
    assert any(line.startswith("real-time factor ") and "p50" in line and "p95" in line for line in lines)
    assert lines[-1].startswith("all streams: WER ")
    timing = results["timing"]
    assert timing["streams"] == 2 and timing["rtf"] > 0 and timing["chunk_p95_ms"] >= timing["chunk_p50_ms"] > 0
    assert results["chunk_ms"] == 160 and results["bundle"] == str(trained / "bundle")
    assert json.loads(json.dumps(results)) == results

    with pytest.raises(ConfigError, match="multiple of the model's 160 ms"):
        run_demo(model_dir=trained / "base" / "model", languages=["sw"], chunk_ms=100, echo=lines.append)


@needs_espeak
def test_cli_demo_defaults_to_the_shipped_checkpoint(trained, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo_module, "DEMO_CHECKPOINT", trained / "checkpoint")
    assert main(["asr", "demo", "--langs", "sw,en", "--chunk-ms", "320", "--out", str(tmp_path / "demo.json")]) == 0
    out = capsys.readouterr().out
    assert " … " in out and "real-time factor" in out and "320 ms chunks" in out
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert [s["adapter"] for s in saved["streams"]] == ["sw", BASE]
    assert saved["model"] == saved["bundle"] == str(trained / "checkpoint")
    # A model directory that holds its own bundle uses it.
    mine = run_demo(model_dir=trained / "checkpoint", languages=["sw"], echo=lambda line: None)
    assert mine["streams"][0]["adapter"] == "sw"


def test_missing_checkpoint_espeak_and_bad_languages_are_one_line_errors(
    trained, tmp_path, monkeypatch, capsys
) -> None:
    with pytest.raises(MissingArtifactError, match=r"no demo checkpoint \(missing model.json, .*run_recipe.sh"):
        demo_checkpoint(tmp_path)
    assert demo_checkpoint(trained / "checkpoint") == trained / "checkpoint"
    monkeypatch.setattr(demo_module, "DEMO_CHECKPOINT", tmp_path)
    monkeypatch.setattr(demo_module, "espeak_available", lambda: True)
    assert main(["asr", "demo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: no demo checkpoint") and err.count("\n") == 1

    monkeypatch.setattr(demo_module, "espeak_available", lambda: False)
    with pytest.raises(MissingArtifactError, match="espeak-ng is not installed"):
        run_demo(model_dir=trained / "base" / "model", echo=lambda line: None)
    assert main(["asr", "demo", "--model", str(trained / "base" / "model")]) == 1
    assert "espeak-ng is not installed" in capsys.readouterr().err

    model = ["--model", str(trained / "base" / "model")]
    assert main(["asr", "demo", "--langs", "sw,xx", *model]) == 1
    assert "error: no espeak-ng voice for language 'xx'" in capsys.readouterr().err
    assert main(["asr", "demo", "--langs", "sw,sw", *model]) == 1
    assert main(["asr", "demo", "--langs", "sw,,de", *model]) != 0
    assert main(["asr", "demo", "--chunk-ms", "100", *model]) != 0


@pytest.mark.skipif(
    not all((DEMO_CHECKPOINT / name).is_file() for name in SHIPPED), reason="no trained checkpoint shipped yet"
)
def test_shipped_checkpoint_loads_fits_its_bundle_and_is_small() -> None:
    files = [path for path in DEMO_CHECKPOINT.iterdir() if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 15_000_000
    patterns = ("*.json", "*.safetensors", "*.model")  # pyproject's package data: every file ships
    assert all(any(fnmatch.fnmatch(path.name, p) for p in patterns) for path in files)
    assert demo_checkpoint() == DEMO_CHECKPOINT
    _, _, meta = load_transducer(DEMO_CHECKPOINT)
    recognizer = Recognizer.load(DEMO_CHECKPOINT, bundle=DEMO_CHECKPOINT)  # checks the bundle's base fingerprint
    assert {"sw", "om"} <= set(recognizer.languages) <= set(meta["languages"])
