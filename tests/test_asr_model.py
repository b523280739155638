"""The streaming Conformer transducer: shapes, streaming equivalence, decoding, training, adapters, files."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, Route
from polyglot_adapters.asr import (
    ConformerTransducerConfig,
    SpeechExample,
    beam_search,
    beam_search_encodings,
    collate_speech,
    conformer_transducer,
    conformer_transducer_small,
    conformer_transducer_tiny,
    greedy_search,
    load_transducer,
    save_transducer,
    stack_decoder_states,
    stack_states,
    train_tokenizer,
    transducer_loss,
    unstack_decoder_states,
    unstack_states,
)
from polyglot_adapters.errors import ConfigError, CorruptArtifactError
from polyglot_adapters.sites import AdaptedLinear
from polyglot_adapters.training import TrainConfig, train

V = 33  # symbols including the blank


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return conformer_transducer_tiny(num_symbols=V).eval()


def features(seed: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), 80, generator=gen)
    return x, torch.tensor(lengths)


def stream(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor, chunks: int = 1):
    """Encodes and greedily decodes ``chunks`` model chunks per call; returns encodings and hypotheses."""
    size = model.config.chunk_size * chunks
    total = -(-x.shape[1] // size) * size
    x = torch.nn.functional.pad(x, (0, 0, 0, total - x.shape[1]))
    state, decoder, outs = None, None, []
    with torch.no_grad():
        for start in range(0, total, size):
            valid = (lengths - start).clamp(0, size)
            enc, enc_lengths, state = model.infer(x[:, start : start + size], valid, state)
            decoder = greedy_search(model, enc, enc_lengths, decoder)
            outs.append(enc)
    return torch.cat(outs, dim=1), decoder.tokens


def test_factory_is_keyword_only_and_validates() -> None:
    with pytest.raises(TypeError):
        conformer_transducer(80, V)  # type: ignore[misc]
    with pytest.raises(ConfigError, match="kernel_size must be odd"):
        conformer_transducer(input_dim=80, num_symbols=V, kernel_size=4)
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        conformer_transducer(input_dim=80, num_symbols=V, hidden_size=10, num_heads=4)
    config = conformer_transducer_small().config
    assert ConformerTransducerConfig.from_dict(config.to_dict()) == config
    assert 3_000_000 < sum(p.numel() for p in conformer_transducer_small().parameters()) < 6_000_000
    with pytest.raises(ConfigError, match="unknown"):
        ConformerTransducerConfig.from_dict({**config.to_dict(), "heads": 3})


def test_shapes_and_length_semantics() -> None:
    model = tiny()
    x, lengths = features(0, [37, 16, 5])
    with torch.no_grad():
        enc, enc_lengths = model.transcriber(x, lengths)
        assert enc.shape == (3, 10, 64)  # ceil(37 / 4) frames of 40 ms
        assert enc_lengths.tolist() == [10, 4, 2]
        targets = torch.randint(0, V - 1, (3, 6))
        logits, src, tgt, _ = model(x, lengths, targets, torch.tensor([6, 3, 1]))
    assert logits.shape == (3, 10, 6, V) and src.tolist() == [10, 4, 2] and tgt.tolist() == [6, 3, 1]
    # Padding (any content) never changes a row's valid frames.
    noisy = x.clone()
    noisy[1, 16:] = 1e3
    with torch.no_grad():
        again, _ = model.transcriber(noisy, lengths)
        alone, _ = model.transcriber(x[1:2, :16], lengths[1:2])
    torch.testing.assert_close(again[1, :4], enc[1, :4], rtol=0, atol=0)
    torch.testing.assert_close(alone[0], enc[1, :4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_chunked_streaming_equals_full_utterance(chunks: int) -> None:
    model = tiny()
    x, lengths = features(1, [61, 45, 8])
    with torch.no_grad():
        full, full_lengths = model.transcriber(x, lengths)
        full_tokens = greedy_search(model, full, full_lengths).tokens
    streamed, streamed_tokens = stream(model, x, lengths, chunks)
    for b, n in enumerate(full_lengths.tolist()):
        torch.testing.assert_close(streamed[b, :n], full[b, :n], rtol=1e-5, atol=1e-5)
    assert streamed_tokens == full_tokens
    assert all(full_tokens)  # a random joiner emits: the comparison is not between empty lists


def test_attention_is_chunk_causal_with_limited_left_context() -> None:
    model = tiny()  # chunks of 2 frames (8 feature frames), 2 chunks of left context
    x, lengths = features(2, [192])
    changed = x.clone()
    changed[:, 40:] += 1.0  # encoder frames 10.. (chunk 5 onwards)
    early = x.clone()
    early[:, :8] += 1.0  # chunk 0 only
    with torch.no_grad():
        base, _ = model.transcriber(x, lengths)
        later, _ = model.transcriber(changed, lengths)
        far, _ = model.transcriber(early, lengths)
    assert torch.equal(later[:, :10], base[:, :10])  # the future never leaks back
    assert not torch.equal(later[:, 10:], base[:, 10:])
    # Chunk 0 reaches later frames only through attention windows (5 frames back) and causal
    # convolutions (6 frames back), so at most 22 frames further in two layers.
    assert not torch.equal(far[:, :2], base[:, :2])
    assert not torch.equal(far[:, 8:10], base[:, 8:10])
    assert torch.equal(far[:, 24:], base[:, 24:])


def test_stacked_streams_match_single_streams() -> None:
    model = tiny()
    x, lengths = features(3, [32, 32])
    size = model.config.chunk_size
    with torch.no_grad():
        # Stream 0 starts one chunk before stream 1; from then on they run as one batch.
        enc0, l0, s0 = model.infer(x[:1, :size], lengths[:1].clamp(max=size), None)
        d0 = greedy_search(model, enc0, l0)
        batch_state = stack_states([s0, model.init_state(1)])
        decoder = stack_decoder_states([d0, greedy_search(model, enc0[:, :0], l0 * 0)])
        chunk = torch.cat([x[:1, size : 2 * size], x[1:, :size]])
        enc, enc_l, batch_state = model.infer(chunk, torch.tensor([size, size]), batch_state)
        decoder = greedy_search(model, enc, enc_l, decoder)
        first, second = unstack_states(batch_state)
        d_first, d_second = unstack_decoder_states(decoder)
        alone0, _, s_alone0 = model.infer(x[:1, size : 2 * size], torch.tensor([size]), s0)
        alone1, _, s_alone1 = model.infer(x[1:, :size], torch.tensor([size]), None)
    torch.testing.assert_close(enc[0], alone0[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc[1], alone1[0], rtol=1e-5, atol=1e-5)
    for mine, ref in ((first, s_alone0), (second, s_alone1)):
        for layer_a, layer_b in zip(mine, ref, strict=True):
            for a, b in zip(layer_a, layer_b, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert d_first.tokens[0][: len(d0.tokens[0])] == d0.tokens[0]
    assert len(d_second.tokens) == 1


def test_streaming_rejects_misaligned_chunks() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="multiple of 8 frames"):
        model.infer(torch.zeros(1, 5, 80), torch.tensor([5]), None)
    with pytest.raises(ValueError, match="expected features of shape"):
        model.transcriber(torch.zeros(1, 8, 40), torch.tensor([8]))


def test_beam_search_runs_without_grad_and_returns_symbols() -> None:
    model = tiny()
    x, lengths = features(4, [24])
    tokens = beam_search(model, x[0], 24, beam_width=3)
    assert tokens and all(0 <= t < V - 1 for t in tokens)


def test_beam_search_of_a_padded_batch_searches_each_row_over_its_valid_frames() -> None:
    model = tiny()
    x, lengths = features(6, [40, 24])
    x[1, 24:] = 1e3  # padding content must not reach the search
    with torch.no_grad():
        enc, enc_lengths = model.encode(x, lengths)  # (2, T', D)
    rows = beam_search_encodings(model, enc, enc_lengths, beam_width=3)
    assert rows == [beam_search(model, x[i], int(n), beam_width=3) for i, n in enumerate(lengths)]
    assert rows[1] == beam_search(model, x[1, :24], 24, beam_width=3)
    with pytest.raises(ValueError, match="beam_width must be at least 1"):
        beam_search_encodings(model, enc, enc_lengths, beam_width=0)


def _memorisation_set() -> list[SpeechExample]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for i in range(4):
        t = 24 + 8 * i
        targets = tuple(torch.randint(0, V - 1, (3 + i,), generator=gen).tolist())
        out.append(SpeechExample(torch.randn(t, 80, generator=gen), targets, i % 2, ""))
    return out


def test_rnnt_loss_decreases_through_the_shared_loop() -> None:
    model = tiny().train()
    examples = _memorisation_set()
    batch = collate_speech(examples, [0] * 4)
    with torch.no_grad():
        before = float(transducer_loss(model.eval(), batch, augment=False))
    result = train(
        model,
        examples,
        collate_speech,
        transducer_loss,
        TrainConfig(steps=30, lr=3e-3, batch_size=4),
        progress=False,
    )
    with torch.no_grad():
        after = float(transducer_loss(model.eval(), batch, augment=False))
    assert result.steps == 30
    assert after < 0.6 * before, (before, after)


def test_auxiliary_ctc_loss_adds_to_the_transducer_loss_and_is_saved(tmp_path) -> None:
    torch.manual_seed(0)
    model = conformer_transducer_tiny(num_symbols=V, ctc_weight=0.25).eval()
    assert tiny().ctc_output is None and model.ctc_output is not None
    batch = collate_speech(_memorisation_set(), [0] * 4)
    with torch.no_grad():
        total = transducer_loss(model, batch, augment=False)
        rnnt = transducer_loss(model, batch, augment=False, ctc=False)
        encodings, lengths = model.transcribe(batch["features"], batch["lengths"])
        log_probs = torch.log_softmax(model.ctc_output(encodings), dim=-1).transpose(0, 1)
        ctc = torch.nn.functional.ctc_loss(
            log_probs, batch["targets"].long(), lengths, batch["target_lengths"].long(), blank=V - 1, reduction="sum"
        )
    torch.testing.assert_close(total, 0.75 * rnnt + 0.25 * ctc / 4)
    assert ctc > 0 and not torch.allclose(total, rnnt)
    tokenizer = train_tokenizer(["watu wote wamezaliwa huru", "all human beings are born free"], vocab_size=20)
    saved = conformer_transducer_tiny(num_symbols=tokenizer.num_symbols, ctc_weight=0.25)
    save_transducer(saved, tokenizer, tmp_path / "m")
    loaded = load_transducer(tmp_path / "m")[0]
    assert loaded.config.ctc_weight == 0.25
    assert torch.equal(loaded.ctc_output.weight, saved.ctc_output.weight)
    legacy = {k: v for k, v in tiny().config.to_dict().items() if k != "ctc_weight"}  # saved before the field
    assert ConformerTransducerConfig.from_dict(legacy).ctc_weight == 0
    with pytest.raises(ConfigError, match="ctc_weight must be in"):
        ConformerTransducerConfig(input_dim=80, num_symbols=V, ctc_weight=1.0)


def test_language_adapters_attach_route_per_stream_and_switch_off() -> None:
    model = tiny().requires_grad_(False)  # frozen host (SDPA's CPU kernel choice depends on requires_grad)
    x, lengths = features(6, [40, 40, 21])
    with torch.no_grad():
        pristine, _ = model.transcriber(x, lengths)
    am = AdaptedModel(model)
    assert am.interface.name == "conformer-transducer"
    lda = BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=16)
    am.add_adapter("sw", lda)
    am.add_adapter("om", LoraConfig(r=2, targets=("ffn1_in", "ffn_out")))
    am.set_active("sw")
    with torch.no_grad():
        assert torch.equal(model.transcriber(x, lengths)[0], pristine)  # fresh adapters are the identity
    trainable = am.train_adapters("sw", "om")
    assert trainable and all(n.split(".")[-1].startswith(("bn_", "lora_")) for n in trainable)
    randomize(am)
    am.set_active(Route(torch.tensor([0, 1, 0]), {0: "sw", 1: "om"}))
    routed, routed_tokens = stream(model, x, lengths)
    am.set_active("sw")
    sw_only, sw_tokens = stream(model, x[[0, 2]], lengths[[0, 2]])
    am.set_active("om")
    om_only, _ = stream(model, x[[1]], lengths[[1]])
    torch.testing.assert_close(routed[[0, 2]], sw_only, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed[[1]], om_only, rtol=1e-5, atol=1e-5)
    assert [routed_tokens[0], routed_tokens[2]] == sw_tokens
    assert not torch.allclose(sw_only[0, :10], pristine[0, :10])
    am.set_active(None)
    with torch.no_grad():
        assert torch.equal(model.transcriber(x, lengths)[0], pristine)  # switched off: bit-identical


def test_predictor_adapters_route_per_stream_and_round_trip(tmp_path) -> None:
    model = tiny().requires_grad_(False)
    x, lengths = features(9, [40, 33, 40])
    symbols = torch.randint(0, V - 1, (3, 5), generator=torch.Generator().manual_seed(1))
    one = torch.full((3,), 5)
    with torch.no_grad():
        pristine = model.predictor(symbols, one)[0]
        _, pristine_tokens = stream(model, x, lengths)
    am = AdaptedModel(model)
    lda = BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=8, outputs=("predictor",))
    for language in ("sw", "om"):
        am.add_adapter(language, lda)
    assert {"predictor.output.bn_down", "predictor.output.bn_up"} <= set(am.adapter_state_dict("sw"))
    am.set_active("sw")
    with torch.no_grad():
        assert torch.equal(model.predictor(symbols, one)[0], pristine)  # zero up-projection: the identity
    assert stream(model, x, lengths)[1] == pristine_tokens
    am.train_adapters("sw", "om")
    randomize(am)
    am.set_active(Route(torch.tensor([1, 0, 1]), {0: "sw", 1: "om"}))
    with torch.no_grad():
        routed = model.predictor(symbols, one)[0]
    _, routed_tokens = stream(model, x, lengths)
    for language, rows in (("sw", [1]), ("om", [0, 2])):
        am.set_active(language)
        with torch.no_grad():
            alone = model.predictor(symbols[rows], one[rows])[0]
        torch.testing.assert_close(routed[rows], alone, rtol=1e-5, atol=1e-5)
        assert [routed_tokens[r] for r in rows] == stream(model, x[rows], lengths[rows])[1]
    assert not torch.allclose(routed, pristine)
    am.save_adapter("sw", tmp_path / "sw")
    fresh = AdaptedModel(tiny().requires_grad_(False))
    fresh.load_adapter(tmp_path / "sw")
    fresh.set_active("sw")
    am.set_active("sw")
    with torch.no_grad():
        assert torch.equal(fresh.model.predictor(symbols, one)[0], model.predictor(symbols, one)[0])


def test_predictor_outputs_are_validated() -> None:
    with pytest.raises(ConfigError, match="series bottleneck"):
        BottleneckConfig(placement="parallel", outputs=("predictor",))
    with pytest.raises(ConfigError, match="distinct names"):
        BottleneckConfig(outputs=("predictor", "predictor"))
    am = AdaptedModel(tiny())
    with pytest.raises(ConfigError, match="'joiner' is not an adaptable output"):
        am.add_adapter("sw", BottleneckConfig(outputs=("joiner",)))
    assert "sw" not in am.adapters
    assert not any(isinstance(m, AdaptedLinear) for m in am.model.modules())  # nothing was wrapped


def test_language_adapter_size_on_the_small_preset() -> None:
    am = AdaptedModel(conformer_transducer_small())
    am.add_adapter("sw", BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=16))
    total = sum(p.numel() for p in am.model.parameters()) - am.num_parameters("sw")
    assert am.num_parameters("sw") / total < 0.005  # the paper's budget: about 0.4% of the model


def test_save_and_load_round_trip(tmp_path) -> None:
    tokenizer = train_tokenizer(["watu wote wamezaliwa huru", "all human beings are born free"], vocab_size=20)
    torch.manual_seed(0)
    model = conformer_transducer_tiny(num_symbols=tokenizer.num_symbols).eval()
    model.transcriber.set_feature_stats(torch.full((80,), 0.5), torch.full((80,), 2.0))
    save_transducer(model, tokenizer, tmp_path / "m", languages=["sw", "en"])
    loaded, tok, meta = load_transducer(tmp_path / "m")
    assert meta["languages"] == ["sw", "en"] and tok.num_symbols == tokenizer.num_symbols
    x, lengths = features(7, [30])
    with torch.no_grad():
        assert torch.equal(loaded.transcriber(x, lengths)[0], model.transcriber(x, lengths)[0])
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CorruptArtifactError, match="model.safetensors"):
        load_transducer(tmp_path / "m")


def test_adapter_training_leaves_the_frozen_base_untouched(tmp_path) -> None:
    from polyglot_adapters.asr import train_transducer

    model = tiny().requires_grad_(False)
    x, lengths = features(8, [40, 24])
    with torch.no_grad():
        pristine, _ = model.transcriber(x, lengths)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    am = AdaptedModel(model)
    am.add_adapter("sw", BottleneckConfig(placement="series", positions=("ffn",), reduction_factor=8))
    am.set_active("sw")
    am.train_adapters("sw")
    tokenizer = train_tokenizer(["abc def"] * 3, vocab_size=40)
    result = train_transducer(
        am, _memorisation_set(), [], tokenizer, TrainConfig(steps=5, batch_size=2), progress=False
    )
    assert result.steps == 5
    for m, (mean, var) in zip(norms, stats, strict=True):  # the loop calls train(): frozen norms stay put
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    am.set_active(None)
    with torch.no_grad():
        assert torch.equal(model.transcriber(x, lengths)[0], pristine)
