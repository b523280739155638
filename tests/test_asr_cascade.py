"""The cascaded transducer: a full-context second-pass encoder over the streaming one."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torchaudio
from conftest import randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig
from polyglot_adapters.asr import (
    SAMPLE_RATE,
    ConformerTransducer,
    ConformerTransducerConfig,
    beam_search,
    conformer_transducer,
    conformer_transducer_tiny,
    load_transducer,
    save_transducer,
    train_tokenizer,
    transducer_loss,
    write_audio,
)
from polyglot_adapters.asr.recipe import language_adapter_config, train_base
from polyglot_adapters.asr.streaming import Recognizer
from polyglot_adapters.asr.training import evaluate, transcribe_features
from polyglot_adapters.cli.main import main
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.training import TrainConfig

V = 33


def pair(num_symbols: int = V) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A cascaded tiny model (one second-pass layer) and the streaming model with its first-pass weights."""
    config = conformer_transducer_tiny(num_symbols=num_symbols).config
    torch.manual_seed(0)
    cascaded = ConformerTransducer(dataclasses.replace(config, cascade_layers=1)).eval()
    streaming = ConformerTransducer(config).eval()
    state = {k: v for k, v in cascaded.state_dict().items() if k in streaming.state_dict()}
    streaming.load_state_dict(state, strict=True)
    return cascaded, streaming


def features(seed: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), max(lengths), 80, generator=gen), torch.tensor(lengths)


def test_config_validates_and_streaming_models_keep_their_tensor_names() -> None:
    cascaded, streaming = pair()
    with pytest.raises(ConfigError, match="cascade_weight must be above 0"):
        dataclasses.replace(streaming.config, cascade_layers=1, cascade_weight=0.0)
    with pytest.raises(ConfigError, match="cascade_layers must be an integer >= 0"):
        conformer_transducer(input_dim=80, num_symbols=V, cascade_layers=-1)
    old = {k: v for k, v in streaming.config.to_dict().items() if not k.startswith("cascade")}
    assert ConformerTransducerConfig.from_dict(old) == streaming.config  # files written before the cascade
    names = set(streaming.state_dict())
    assert not any("cascade" in n or "conformer_layers.2." in n for n in names)
    extra = set(cascaded.state_dict()) - names
    assert extra and all(
        n.startswith(("transcriber.cascade_norm.", "transcriber.conformer.conformer_layers.2.")) for n in extra
    )
    assert cascaded.cascaded and not streaming.cascaded
    with pytest.raises(ConfigError, match="no second-pass encoder"):
        streaming.second_pass(torch.zeros(1, 4, 64), torch.tensor([4]))


def test_first_pass_is_the_streaming_model_and_second_pass_sees_the_whole_utterance() -> None:
    cascaded, streaming = pair()
    x, lengths = features(1, [48, 28])
    later = x.clone()
    later[0, 40:] += 3.0  # the last encoder frames of row 0 only
    with torch.no_grad():
        first, first_lengths = cascaded.transcriber(x, lengths)
        assert torch.equal(first, streaming.transcriber(x, lengths)[0])
        second, second_lengths = cascaded.encode(x, lengths)
        assert torch.equal(second_lengths, first_lengths) and second.shape == first.shape
        assert torch.equal(cascaded.encode(x, lengths, first_pass=True)[0], first)
        first_later, _ = cascaded.transcriber(later, lengths)
        second_later, _ = cascaded.encode(later, lengths)
    # The streaming pass at frame 0 cannot see frame 10; the second pass can.
    torch.testing.assert_close(first_later[0, :8], first[0, :8], rtol=0, atol=1e-6)
    assert (second_later[0, 0] - second[0, 0]).abs().max() > 1e-3
    # Padding never reaches valid frames: row 1 alone equals row 1 in the padded batch.
    with torch.no_grad():
        alone, _ = cascaded.encode(x[1:2, :28], lengths[1:2])
    torch.testing.assert_close(second[1:2, :7], alone, rtol=1e-5, atol=1e-5)


def test_training_loss_weights_both_passes_and_decoding_uses_the_second() -> None:
    cascaded, _ = pair()
    x, lengths = features(2, [40, 24])
    targets = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0]])
    batch = {"features": x, "lengths": lengths, "targets": targets, "target_lengths": torch.tensor([4, 2])}
    start = torch.full((2, 1), cascaded.blank)
    with torch.no_grad():
        predictions, pred_lengths, _ = cascaded.predict(torch.cat([start, targets], 1), torch.tensor([5, 3]), None)
        losses = []
        for first_pass in (True, False):
            enc, enc_lengths = cascaded.encode(x, lengths, first_pass=first_pass)
            logits, _, _ = cascaded.join(enc, enc_lengths, predictions, pred_lengths)
            losses.append(
                torchaudio.functional.rnnt_loss(
                    logits, targets.int(), enc_lengths.int(), torch.tensor([4, 2]).int(), blank=cascaded.blank
                )
            )
        expected = 0.5 * losses[0] + 0.5 * losses[1]
        torch.testing.assert_close(transducer_loss(cascaded, batch, augment=False), expected)
        second = transcribe_features(cascaded, x, lengths)
        first = transcribe_features(cascaded, x, lengths, first_pass=True)
    assert second != first  # random weights: the passes disagree
    _, streaming = pair()
    assert first == transcribe_features(streaming, x, lengths)
    assert beam_search(cascaded, x[0], 40, beam_width=2, first_pass=True) == beam_search(
        streaming, x[0], 40, beam_width=2
    )
    assert beam_search(cascaded, x[0], 40, beam_width=2) != beam_search(streaming, x[0], 40, beam_width=2)


def test_adapters_reach_both_passes_and_files_round_trip(tmp_path) -> None:
    tokenizer = train_tokenizer(["watu wote wamezaliwa huru", "alle menschen sind frei"] * 3, vocab_size=24)
    cascaded, _ = pair(tokenizer.num_symbols)
    save_transducer(cascaded, tokenizer, tmp_path / "m")
    am = AdaptedModel(cascaded)
    am.add_adapter("sw", BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=8))
    am.train_adapters("sw")
    wrapped = {n.split(".adapters.")[0] for n, _ in am.model.named_parameters() if ".adapters.sw." in n}
    assert {w.split("conformer_layers.")[1].split(".")[0] for w in wrapped} == {"0", "1", "2"}
    x, lengths = features(3, [32])
    with torch.no_grad():
        before = [cascaded.encode(x, lengths, first_pass=f)[0] for f in (True, False)]
        randomize(am.model)  # only the adapter is trainable
        am.set_active("sw")
        after = [cascaded.encode(x, lengths, first_pass=f)[0] for f in (True, False)]
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(after, before, strict=True))
    loaded, _, _ = load_transducer(tmp_path / "m")
    assert loaded.config.cascade_layers == 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x, lengths)[0], before[1])


def test_streams_show_first_pass_partials_and_end_with_the_second_pass(tmp_path, capsys) -> None:
    tokenizer = train_tokenizer(["watu wote wamezaliwa huru", "alle menschen sind frei"] * 4, vocab_size=30)
    model = pair(tokenizer.num_symbols)[0].requires_grad_(False)
    save_transducer(model, tokenizer, tmp_path / "model", languages=["sw", "de"])
    am = AdaptedModel(model)
    am.add_adapter("sw", language_adapter_config(8))
    am.train_adapters("sw")
    randomize(am.model, seed=1, std=0.3)  # a random adapter, so that it changes the output
    am.save_adapter("sw", tmp_path / "sw")
    recognizer = Recognizer.load(tmp_path / "model", {"sw": tmp_path / "sw"})
    t = torch.arange(int(1.1 * SAMPLE_RATE)) / SAMPLE_RATE
    waves = [
        0.3 * torch.sin(2 * math.pi * (f0 + 300 * t) * t)[: int(s * SAMPLE_RATE)] for f0, s in ((200, 1.1), (450, 0.6))
    ]
    languages = ["sw", "de"]
    results = recognizer.stream(waves, languages, chunk_ms=160)
    assert [r.text for r in results] == recognizer.transcribe(waves, languages)  # the second pass, offline
    assert all(r.final_seconds > 0 for r in results)
    # The partials are the streaming pass's, which differs from the final text here (random weights).
    assert [r.partials[-1] for r in results] == recognizer.transcribe(waves, languages, first_pass=True)
    assert [r.partials[-1] for r in results] != [r.text for r in results]
    # The CLI prints the second pass's text and its latency after the end of each stream.
    a = write_audio(tmp_path / "a.wav", waves[0])
    args = ["--model", str(tmp_path / "model"), "--adapter", f"sw={tmp_path / 'sw'}", "--chunk-ms", "160"]
    assert main(["asr", "stream", f"{a}:sw", *args]) == 0
    out = capsys.readouterr().out
    assert f"[0] {a} (sw, adapter sw; second pass " in out and " ms after the end): " in out


def test_train_base_adds_a_cascade_to_a_trained_streaming_base(tmp_path) -> None:
    from test_asr_recipe import corpus

    data = corpus()
    quick = TrainConfig(steps=2, batch_size=2, eval_every=2, save_every=2, best_metric="valid_loss")
    train_base(data, tmp_path / "base", preset="tiny", config=quick, progress=False)
    streaming, _, _ = load_transducer(tmp_path / "base" / "model")
    report = train_base(
        data, tmp_path / "cascade", config=quick, cascade_layers=1, init=tmp_path / "base" / "model", progress=False
    )
    model, _, meta = load_transducer(tmp_path / "cascade" / "model")
    assert model.config.cascade_layers == 1 and meta["preset"] == report["preset"] == "tiny"
    assert report["parameters"] > sum(p.numel() for p in streaming.parameters())
    assert torch.equal(model.transcriber.feature_mean, streaming.transcriber.feature_mean)  # from the init
    scores = evaluate(model, data.select("test"), data.tokenizer)
    assert set(scores) == {"loss", "wer", "cer", "first_pass_wer", "first_pass_cer"}
    with pytest.raises(ConfigError, match="at least as large"):
        train_base(data, tmp_path / "x", config=quick, init=tmp_path / "cascade" / "model", progress=False)
    other = dataclasses.replace(data, tokenizer=train_tokenizer(["ganz andere saetze hier"] * 3, vocab_size=20))
    with pytest.raises(ConfigError, match="tokenizer is not the corpus's"):
        train_base(other, tmp_path / "y", config=quick, cascade_layers=1, init=tmp_path / "base" / "model")
