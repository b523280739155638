"""The masked-entity KG objective on a tiny hand-built KG (CLDR-style labels in 11 languages) and a tiny BERT MLM.

The tokenizer is character-level WordPiece over the KG's labels and the training templates; the
host is a tiny random ``BertForMaskedLM`` built in-process.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import char_tokenizer, saved_language_adapter, text_mlm
from transformers import BertForMaskedLM, BertModel, PreTrainedTokenizerFast

from polyglot_adapters import AdaptedModel
from polyglot_adapters.composition import Stack
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.kg import KGDataset, KGError, TemplateError
from polyglot_adapters.kg.adapters import HELD_OUT_LANGUAGES
from polyglot_adapters.kg.masked import (
    MaskedEntityCollate,
    MaskedKGSettings,
    masked_entity_accuracy,
    masked_entity_examples,
    masked_entity_loss,
    train_masked_kg_adapter,
)
from polyglot_adapters.kg.templates import TRIPLE_TEMPLATES, verbalise_triple

_LANGS = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "sw", "yo")
_LABELS = {  # en de fr es ru zh ja ar hi sw yo
    "territory:FR": "France|Frankreich|France|Francia|Франция|法国|フランス|فرنسا|फ़्रांस|Ufaransa|Faranse".split("|"),
    "territory:DE": (
        "Germany|Deutschland|Allemagne|Alemania|Германия|德国|ドイツ|ألمانيا|जर्मनी|Ujerumani|Jámánì"
    ).split("|"),
    "territory:KE": "Kenya|Kenia|Kenya|Kenia|Кения|肯尼亚|ケニア|كينيا|केन्या|Kenya|Kenya".split("|"),
    "territory:JP": "Japan|Japan|Japon|Japón|Япония|日本|日本|اليابان|जापान|Japani|Jápánù".split("|"),
    "region:150": "Europe|Europa|Europe|Europa|Европа|欧洲|ヨーロッパ|أوروبا|यूरोप|Ulaya|Yúróòpù".split("|"),
    "region:002": "Africa|Afrika|Afrique|África|Африка|非洲|アフリカ|أفريقيا|अफ़्रीका|Afrika|Áfíríkà".split("|"),
    "region:142": "Asia|Asien|Asie|Asia|Азия|亚洲|アジア|آسيا|एशिया|Asia|Éṣíà".split("|"),
    "currency:EUR": "Euro|Euro|euro|euro|евро|欧元|ユーロ|يورو|यूरो|Yuro|Yúrò".split("|"),
    "currency:KES": (
        "Kenyan Shilling|Kenia-Schilling|shilling kényan|chelín keniano|кенийский шиллинг|"
        "肯尼亚先令|ケニア・シリング|شلن كينيي|केन्याई शिलिंग|Shilingi ya Kenya|Sile Kenya"
    ).split("|"),
    "currency:JPY": (
        "Japanese Yen|Yen|yen japonais|yen|японская иена|日元|円|ين ياباني|जापानी येन|Yeni ya Japani|Yeni Japan"
    ).split("|"),
}
_TRAIN = (
    ("territory:DE", "continent", "region:150"),
    ("territory:DE", "currency", "currency:EUR"),
    ("territory:DE", "shares_border_with", "territory:FR"),
    ("territory:FR", "continent", "region:150"),
    ("territory:FR", "currency", "currency:EUR"),
    ("territory:FR", "shares_border_with", "territory:DE"),
    ("territory:JP", "currency", "currency:JPY"),
    ("territory:KE", "continent", "region:002"),
    ("territory:KE", "currency", "currency:KES"),
)


@pytest.fixture(scope="module")
def kg() -> KGDataset:
    """Ten entities labelled in 11 languages (no Hindi label for the yen), 9 train and 1 test triples."""
    entities = {e: dict(zip(_LANGS, labels, strict=True)) for e, labels in _LABELS.items()}
    del entities["currency:JPY"]["hi"]
    return KGDataset(
        name="tiny-cldr",
        entities=entities,
        kinds={e: e.split(":")[0] for e in entities},
        relations=("continent", "currency", "shares_border_with"),
        splits={"train": _TRAIN, "valid": (), "test": (("territory:JP", "continent", "region:142"),)},
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Character-level WordPiece over every label and template (``[CLS] ... [SEP]`` framing)."""
    texts = [label for labels in _LABELS.values() for label in labels]
    texts += [t for table in TRIPLE_TEMPLATES.values() for t in table.values()] + ["; continent currency shares"]
    return char_tokenizer(texts)


def tiny_mlm(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> BertForMaskedLM:
    """A tiny random masked LM whose logits are wide enough for a small adapter to move them."""
    return text_mlm(len(tokenizer), seed=seed, positions=64, initializer_range=0.2)


def _settings(**changes: object) -> MaskedKGSettings:
    base = MaskedKGSettings(
        languages=("en", "de", "ja"), sentence_languages=("en",), steps=20, batch_size=8, lr=1e-2, reduction_factor=2
    )
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------ examples


def test_examples_fill_both_labels_in_phrases_and_template_sentences(kg: KGDataset) -> None:
    examples = masked_entity_examples(kg, languages=("en", "hi"), sentence_languages=("de",))
    for ex in examples:
        subject, obj = kg.entities[ex.subject][ex.language], kg.entities[ex.object][ex.language]
        assert ex.text[slice(*ex.subject_span)] == subject and ex.text[slice(*ex.object_span)] == obj
        if ex.form == "phrase":
            assert ex.text == f"{subject} ; {ex.relation.replace('_', ' ')} ; {obj}"
        else:
            assert ex.text == verbalise_triple(ex.language, ex.relation, subject, obj)
    counts = {
        key: sum((ex.form, ex.language) == key for ex in examples) for key in {(e.form, e.language) for e in examples}
    }
    assert counts == {("phrase", "en"): 9, ("phrase", "hi"): 8, ("sentence", "de"): 9}  # the yen has no hi label
    assert any(ex.text == "Kenya ; currency ; Kenyan Shilling" for ex in examples)
    assert any(ex.text == "Die Währung von Frankreich ist Euro." for ex in examples)
    again = masked_entity_examples(kg, languages=("en", "hi"), sentence_languages=("de",), seed=1)
    assert again != examples and sorted(again, key=repr) == sorted(examples, key=repr)  # same set, other order
    test = masked_entity_examples(kg, languages=("en",), sentence_languages=(), split="test")
    assert [ex.text for ex in test] == ["Japan ; continent ; Asia"]


def test_held_out_languages_stay_out_by_default_and_bad_languages_are_refused(kg: KGDataset) -> None:
    defaults = MaskedKGSettings()
    examples = masked_entity_examples(kg, languages=defaults.languages, sentence_languages=defaults.sentence_languages)
    used = {ex.language for ex in examples}
    assert used == set(defaults.languages) and not used & set(HELD_OUT_LANGUAGES)
    assert {ex.language for ex in examples if ex.form == "sentence"} == {"en", "de", "fr", "es"}
    assert {ex.language for ex in masked_entity_examples(kg, languages=("sw",), sentence_languages=())} == {"sw"}
    with pytest.raises(KGError, match=r"no labels in \['xx'\]"):
        masked_entity_examples(kg, languages=("en", "xx"), sentence_languages=())
    with pytest.raises(TemplateError, match="'ja'"):
        masked_entity_examples(kg, languages=(), sentence_languages=("ja",))


def test_settings_are_validated() -> None:
    for bad in (
        {"languages": ["en"]},
        {"languages": ("en", "en")},
        {"languages": (), "sentence_languages": ()},
        {"steps": 0},
        {"batch_size": 0},
        {"lr": float("nan")},
        {"reduction_factor": 0},
        {"layers": ()},
        {"layers": (-1,)},
        {"seed": -1},
    ):
        with pytest.raises(ConfigError):
            dataclasses.replace(MaskedKGSettings(), **bad)


# ------------------------------------------------------------------- collate


def test_collate_masks_exactly_the_objects_tokens_and_pads_right(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast
) -> None:
    examples = masked_entity_examples(kg, languages=("en", "ja", "ar"), sentence_languages=("en", "fr"))[:12]
    batch = MaskedEntityCollate(tokenizer)(examples, list(range(12)))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 12
    lengths = mask.sum(1).tolist()
    assert len(set(lengths)) > 1 and max(lengths) == ids.shape[1]
    for row, ex in enumerate(examples):
        n = lengths[row]
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padding
        assert (ids[row, n:] == tokenizer.pad_token_id).all() and (labels[row, n:] == -100).all()
        restored = torch.where(labels[row, :n] != -100, labels[row, :n], ids[row, :n])
        assert restored.tolist() == tokenizer(ex.text)["input_ids"]  # [CLS] text [SEP] once the masks are filled in
        encoded = tokenizer(ex.text, add_special_tokens=False, return_offsets_mapping=True)
        start, end = ex.object_span
        inside = [1 + i for i, (b, e) in enumerate(encoded["offset_mapping"]) if b < end and e > start]
        assert (ids[row] == tokenizer.mask_token_id).nonzero().flatten().tolist() == inside
        assert (labels[row] != -100).nonzero().flatten().tolist() == inside
        assert labels[row, inside].tolist() == [encoded["input_ids"][i - 1] for i in inside]
    with pytest.raises(ConfigError, match="max_length"):
        MaskedEntityCollate(tokenizer, max_length=8)(examples, list(range(12)))


def test_accuracy_is_the_share_of_examples_with_every_object_token_right(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast
) -> None:
    examples = masked_entity_examples(kg, languages=("en", "ja", "zh"), sentence_languages=())
    model = tiny_mlm(tokenizer)
    yen = tokenizer.convert_tokens_to_ids("円")
    with torch.no_grad():
        model.cls.predictions.bias[yen] = 1e4  # every mask predicts 円: exactly the ja yen example is right
    hits = [ex for ex in examples if ex.text[slice(*ex.object_span)] == "円"]
    assert len(hits) == 1
    for size in (1, 5, 64):
        assert masked_entity_accuracy(model, tokenizer, examples, batch_size=size) == 1 / len(examples)
    assert masked_entity_accuracy(AdaptedModel(model), tokenizer, hits) == 1.0
    with pytest.raises(ConfigError):
        masked_entity_accuracy(model, tokenizer, [])


# ------------------------------------------------------------------ training


def test_training_lowers_the_loss_changes_only_the_adapter_writes_the_run_and_resumes(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    model = tiny_mlm(tokenizer)
    base = {name: p.detach().clone() for name, p in model.named_parameters()}
    params = dict(model.named_parameters())
    settings = _settings()
    examples = masked_entity_examples(kg, languages=settings.languages, sentence_languages=settings.sentence_languages)
    probe = MaskedEntityCollate(tokenizer)(examples, [0] * len(examples))
    with torch.no_grad():
        start = float(masked_entity_loss(model, probe))
    result = train_masked_kg_adapter(model, tokenizer, kg, settings, out_dir=tmp_path / "run", progress=False)
    with torch.no_grad():
        end = float(masked_entity_loss(result.model, probe))
    assert end < start - 0.5
    for name, value in base.items():
        assert torch.equal(params[name], value), name  # the base is bit-identical
    assert set(result.model.trainable_parameters()) == {
        n for n, _ in result.model.model.named_parameters() if ".adapters.kg." in n
    }

    run = tmp_path / "run"
    recorded = json.loads((run / "run.json").read_text())
    report = json.loads((run / "report.json").read_text())
    assert recorded["settings"]["steps"] == 20 and report["settings"] == recorded["settings"]
    assert report["examples"] == {
        "en": {"phrase": 9, "sentence": 9},
        "de": {"phrase": 9, "sentence": 0},
        "ja": {"phrase": 9, "sentence": 0},
    }
    assert report["parameters"] == result.model.num_parameters("kg") > 0
    assert 0 < report["percent_of_base_non_embedding"] < 100
    assert report["train"]["last_loss"] < report["train"]["first_loss"] and report["train"]["seconds"] > 0
    assert result.adapter_dir == run / "kg"
    assert {p.name for p in (run / "kg").iterdir()} == {"adapter.json", "adapter.safetensors"}

    reloaded = AdaptedModel(tiny_mlm(tokenizer))
    reloaded.load_adapter(run / "kg")
    reloaded.set_active("kg")
    with torch.no_grad():
        assert float(masked_entity_loss(reloaded, probe)) == pytest.approx(end, abs=1e-6)

    again = train_masked_kg_adapter(tiny_mlm(tokenizer), tokenizer, kg, settings, out_dir=run, progress=False)
    assert again.report["train"]["resumed_from"] == 20  # the finished checkpoint: nothing retrained
    for key, value in result.model.adapter_state_dict("kg").items():
        assert torch.equal(again.model.adapter_state_dict("kg")[key], value)
    with pytest.raises(ConfigError, match="other settings"):
        train_masked_kg_adapter(tiny_mlm(tokenizer), tokenizer, kg, _settings(steps=21), out_dir=run, progress=False)


def test_the_knowledge_adapter_stacks_on_a_frozen_language_adapter(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    saved = saved_language_adapter(tiny_mlm(tokenizer), tmp_path / "sw")
    result = train_masked_kg_adapter(
        tiny_mlm(tokenizer),
        tokenizer,
        kg,
        _settings(steps=3),
        out_dir=tmp_path / "run",
        progress=False,
        base_adapters=tmp_path / "sw",
    )
    assert result.model.active == Stack("language", "kg")
    for key, value in result.model.adapter_state_dict("language").items():
        assert torch.equal(value, saved[key])
    assert json.loads((tmp_path / "run" / "report.json").read_text())["base_adapters"] == str(tmp_path / "sw")


def test_a_host_without_a_masked_lm_head_is_refused(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    encoder = BertModel(tiny_mlm(tokenizer).config)
    with pytest.raises(ConfigError, match="BertForMaskedLM"):
        train_masked_kg_adapter(encoder, tokenizer, kg, _settings(), out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
