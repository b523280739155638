"""The speech recipe's steps on a tiny featurised corpus: base, adapter (+ noisy student), baseline, evaluation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize

from polyglot_adapters.asr import (
    SpeechExample,
    beam_search,
    conformer_transducer_tiny,
    load_transducer,
    pseudo_label,
    train_tokenizer,
    transducer_loss,
)
from polyglot_adapters.asr.recipe import (
    SpeechData,
    evaluate_languages,
    fine_tune_language,
    language_adapter_config,
    train_base,
    train_language_adapter,
    train_language_adapters,
)
from polyglot_adapters.asr.training import collate_speech, error_rates, evaluate, transcribe_features
from polyglot_adapters.cli.main import main
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.model import AdaptedModel
from polyglot_adapters.training import TrainConfig

TEXTS = {"de": ["alle menschen", "sind frei"], "sw": ["watu wote", "ni huru"]}


def corpus() -> SpeechData:
    tokenizer = train_tokenizer([t for texts in TEXTS.values() for t in texts] * 3, vocab_size=24)
    gen = torch.Generator().manual_seed(0)
    languages = list(TEXTS)

    def split(n: int, only: str | None = None) -> list[SpeechExample]:
        out = []
        for i in range(n):
            lang = only or languages[i % 2]
            text = TEXTS[lang][i % 2]
            features = torch.randn(20 + 4 * (i % 3), 80, generator=gen) * 2 - 5
            out.append(SpeechExample(features, tuple(tokenizer.encode(text)), languages.index(lang), text))
        return out

    return SpeechData(
        tokenizer,
        languages,
        {
            "train_head": split(6, "de"),
            "train_tail": split(4, "sw"),
            "unlabelled": split(3, "sw"),
            "valid": split(4),
            "test": split(4),
        },
    )


def test_feature_packs_round_trip(tmp_path) -> None:
    data = corpus()
    data.save(tmp_path)
    loaded = SpeechData.load(tmp_path)
    assert loaded.languages == data.languages and set(loaded.splits) == set(data.splits)
    for name, examples in data.splits.items():
        for a, b in zip(examples, loaded.splits[name], strict=True):
            assert (a.text, a.targets, a.language) == (b.text, b.targets, b.language)
            assert (a.features - b.features).abs().max() <= 0.0625 + 1e-6  # uint8 steps of 0.125


def test_pseudo_labels_are_the_teachers_hypotheses() -> None:
    data = corpus()
    torch.manual_seed(0)
    teacher = conformer_transducer_tiny(num_symbols=data.tokenizer.num_symbols).eval()
    unlabelled = data.select("unlabelled")
    labelled = pseudo_label(teacher, unlabelled, data.tokenizer)
    batch = collate_speech(unlabelled, [])
    expected = [t for t in transcribe_features(teacher, batch["features"], batch["lengths"]) if t]
    assert [list(e.targets) for e in labelled] == expected and labelled
    assert all(e.text == data.tokenizer.decode(e.targets) for e in labelled)
    searched = pseudo_label(teacher, unlabelled, data.tokenizer, beam_width=3)
    expected = [beam_search(teacher, e.features, e.features.shape[0], beam_width=3) for e in unlabelled]
    assert [list(e.targets) for e in searched] == [t for t in expected if t] and searched
    teacher.train()
    loss = transducer_loss(teacher, collate_speech(labelled, []))  # the student's loss, with SpecAugment
    assert torch.isfinite(loss)


def test_beam_evaluation_searches_each_row_with_its_languages_adapter() -> None:
    data = corpus()
    torch.manual_seed(0)
    am = AdaptedModel(conformer_transducer_tiny(num_symbols=data.tokenizer.num_symbols).eval())
    for seed, language in enumerate(data.languages):
        am.add_adapter(language, language_adapter_config(8, predictor=True))
        randomize(am.model, seed=seed, std=0.3)
    examples = data.select("test")
    routes = dict(enumerate(data.languages))
    routed = evaluate(am, examples, data.tokenizer, routes=routes, beam_width=3)
    hypotheses = []
    for example in examples:
        am.set_active(routes[example.language])
        tokens = beam_search(am.model, example.features, example.features.shape[0], beam_width=3)
        hypotheses.append(data.tokenizer.decode(tokens))
    assert routed == {
        "loss": evaluate(am, examples, data.tokenizer, routes=routes)["loss"],
        **error_rates([e.text for e in examples], hypotheses),
    }
    with pytest.raises(ValueError, match="beam_width must be at least 1"):
        evaluate(am, examples, data.tokenizer, beam_width=0)


def test_recipe_steps_end_to_end(tmp_path) -> None:
    data = corpus()
    quick = TrainConfig(steps=3, batch_size=2, eval_every=3, save_every=3, best_metric="valid_loss")
    report = train_base(data, tmp_path / "base", preset="tiny", config=quick, progress=False)
    assert report["train_utterances"] == 10 and report["best"]["step"] == 3
    model, tokenizer, meta = load_transducer(tmp_path / "base" / "model")
    assert meta["languages"] == ["de", "sw"] and tokenizer.num_symbols == model.config.num_symbols

    lda = train_language_adapter(
        tmp_path / "base" / "model",
        data,
        "sw",
        tmp_path / "lda",
        config=quick,
        noisy_student=True,
        teacher_beam_width=2,
        progress=False,
    )
    assert 0 < lda["adapter_fraction"] < 0.05 and lda["pseudo_labelled_utterances"] <= 3
    assert lda["teacher_beam_width"] == 2
    assert (tmp_path / "lda" / "student" / "best").is_dir()
    assert set(lda["test_before"]) == {"loss", "wer", "cer"}
    saved = json.loads((tmp_path / "lda" / "report.json").read_text())
    assert saved["test_after"] == lda["test_after"]

    full = fine_tune_language(tmp_path / "base" / "model", data, "sw", tmp_path / "full", config=quick, progress=False)
    assert full["trained_parameters"] == sum(p.numel() for p in model.parameters())

    table = evaluate_languages(tmp_path / "base" / "model", data, adapters={"sw": tmp_path / "lda" / "adapter"})
    assert set(table) == {"de", "sw"} and "lda_wer" in table["sw"] and "lda_wer" not in table["de"]
    am = AdaptedModel(model)
    am.load_adapter(tmp_path / "lda" / "adapter", name="sw")  # the adapter fits the saved base

    # One file for every language's best adapter; decoding from it equals decoding from the adapter.
    assert main(["asr", "bundle", "--lda", f"sw={tmp_path / 'lda'}", "--out", str(tmp_path / "bundle")]) == 0
    notes = json.loads((tmp_path / "bundle" / "bundle.json").read_text())["adapters"]["sw"]
    assert notes["step"] == json.loads((tmp_path / "lda" / "run" / "best.json").read_text())["step"]
    from_bundle = evaluate_languages(tmp_path / "base" / "model", data, bundle=tmp_path / "bundle")
    assert from_bundle["sw"] == table["sw"] and "lda_wer" not in from_bundle["de"]
    assert main(["asr", "bundle", "--lda", "sw", "--out", str(tmp_path / "b2")]) != 0

    data.save(tmp_path / "features")
    command = ["asr", "evaluate", "--model", str(tmp_path / "base" / "model"), "--data", str(tmp_path / "features")]
    command += ["--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "e.json")]
    assert main([*command, "--beam-width", "2"]) == 0
    saved = SpeechData.load(tmp_path / "features")  # packs quantise features to 8 bits
    beam = evaluate_languages(tmp_path / "base" / "model", saved, bundle=tmp_path / "bundle", beam_width=2)
    assert json.loads((tmp_path / "e.json").read_text()) == beam
    greedy = evaluate_languages(tmp_path / "base" / "model", saved, bundle=tmp_path / "bundle")
    assert {k: v for k, v in beam["sw"].items() if "loss" in k} == {
        k: v for k, v in greedy["sw"].items() if "loss" in k
    }


def test_joint_adapters_keep_each_languages_best_checkpoint(tmp_path) -> None:
    data = corpus()
    data.splits["train_tail"] += data.select("train_head", "de")[:4]  # de becomes a second tail language
    data.splits["unlabelled"] += data.select("train_head", "de")[4:]
    quick = TrainConfig(steps=3, batch_size=2, eval_every=3, save_every=3, best_metric="valid_loss")
    train_base(data, tmp_path / "base", preset="tiny", config=quick, progress=False)
    base = tmp_path / "base" / "model"
    config = TrainConfig(steps=4, lr=5e-2, batch_size=4, eval_every=2, save_every=2, best_metric="valid_wer")
    report = train_language_adapters(
        base,
        data,
        ["sw", "de"],
        tmp_path / "joint",
        predictor=True,
        config=config,
        noisy_student=True,
        teacher_beam_width=2,
        progress=False,
    )
    lines = [json.loads(line) for line in (tmp_path / "joint" / "run" / "selection.jsonl").read_text().splitlines()]
    assert report["evaluations"] == 4 and len(lines) == 8  # two evaluations per round, two rounds
    assert 0 <= report["pseudo_label_error_rates"]["cer"] and report["pseudo_labelled_utterances"] <= 6
    assert report["teacher_beam_width"] == 2
    base_parameters = sum(p.numel() for p in load_transducer(base)[0].parameters())
    assert report["adapter_fraction"] == pytest.approx(report["adapter_parameters"] / base_parameters)
    for language in ("sw", "de"):
        mine = [line for line in lines if line["language"] == language]
        best = min(mine, key=lambda line: line["score"])  # the first of equal scores
        assert report["selected"][language] == f"run/{best['checkpoint']}"
    # The bundle decodes exactly like the selected checkpoints loaded one by one.
    selected = {lang: tmp_path / "joint" / path for lang, path in report["selected"].items()}
    table = evaluate_languages(base, data, adapters=selected)
    for language in ("sw", "de"):
        assert report["test"][language]["bundle"] == {k[4:]: v for k, v in table[language].items() if k[:4] == "lda_"}
        assert report["test"][language]["base"]["wer"] == table[language]["base_wer"]
    assert set(report["test"]["sw"]) == {"base", "bundle", "best_mean_checkpoint", "last_checkpoint"}
    first = AdaptedModel(load_transducer(base)[0])
    first.load_adapter(tmp_path / "joint" / "run" / "evals" / "eval-000" / "sw", name="sw")
    trained = first.adapter_state_dict("sw")
    assert any(t.abs().sum() > 0 for k, t in trained.items() if "up" in k)  # it trained
    assert trained["predictor.output.bn_up"].abs().sum() > 0  # the prediction network's bottleneck too

    with pytest.raises(ConfigError, match="give each language once"):
        train_language_adapters(base, data, ["sw", "sw"], tmp_path / "x", config=config, progress=False)
    with pytest.raises(ConfigError, match="no labelled tail audio"):
        train_language_adapters(base, data, ["sw", "xx"], tmp_path / "x", config=config, progress=False)
    with pytest.raises(ConfigError, match="needs the noisy-student round"):
        train_language_adapters(base, data, ["sw"], tmp_path / "x", teacher_beam_width=4, progress=False)
    data.save(tmp_path / "features")
    command = [
        "asr",
        "train-lda",
        "--model",
        str(base),
        "--data",
        str(tmp_path / "features"),
        "--out",
        str(tmp_path / "y"),
    ]
    assert main([*command, "--lang", "sw,de", "--full"]) != 0  # full fine-tuning is one language per run
    assert main([*command, "--lang", "sw", "--full", "--predictor-adapter"]) != 0
    assert main([*command, "--lang", "sw", "--full", "--noisy-student"]) != 0
    assert main([*command, "--lang", "sw", "--teacher-beam-width", "4"]) != 0  # no noisy-student round
    assert main([*command, "--lang", "sw,xx"]) != 0
    assert not (tmp_path / "y").exists()


def test_train_base_command_groups_by_length_under_bf16(tmp_path) -> None:
    corpus().save(tmp_path / "features")
    command = ["asr", "train-base", "--data", str(tmp_path / "features"), "--preset", "tiny", "--steps", "2"]
    assert (
        main([*command, "--batch-size", "2", "--eval-every", "2", "--precision", "bf16", "--out", str(tmp_path / "a")])
        == 0
    )
    config = json.loads((tmp_path / "a" / "report.json").read_text())["config"]
    assert config["precision"] == "bf16" and config["group_by_length"] is True
    assert load_transducer(tmp_path / "a" / "model")[0].config.num_layers == 2
    assert main([*command, "--no-group-by-length", "--precision", "fp16", "--out", str(tmp_path / "b")]) != 0
    assert not (tmp_path / "b").exists()
