"""The shipped probing templates (probe-v1) and their loader: coverage, validation, slot filling, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import polyglot_adapters.probing.templates as probing_templates
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.kg.cldr import RELATIONS
from polyglot_adapters.kg.templates import TEMPLATE_SET as KG_TEMPLATE_SET
from polyglot_adapters.kg.templates import TRIPLE_TEMPLATES
from polyglot_adapters.probing import (
    KINDS,
    TEMPLATE_SET,
    ProbeTemplate,
    TemplateError,
    load_templates,
    parse_template,
    template_languages,
)

REQUIRED = {"en", "de", "fr", "es", "ru", "hi", "ja", "ar", "sw", "am", "yo"}
PACKAGE_DIR = Path(probing_templates.__file__).parent / "templates"


def _entry(natural: str = "[X] has [Y].") -> dict:
    return {"natural": natural, "train": ["[Y] of [X].", "[X]: [Y]."], "heldout": ["[X] with [Y]."]}


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def test_shipped_languages_cover_every_relation_with_five_distinct_templates():
    assert TEMPLATE_SET == "probe-v1" != KG_TEMPLATE_SET
    languages = template_languages()
    assert REQUIRED <= set(languages)
    templates = load_templates()
    for language in languages:
        for relation in RELATIONS:
            mine = [t for t in templates if t.language == language and t.relation == relation]
            per_kind = {kind: [t.text for t in mine if t.kind == kind] for kind in KINDS}
            assert len(per_kind["natural"]) == 1, (language, relation)
            assert len(per_kind["train"]) >= 2 and len(per_kind["heldout"]) >= 2, (language, relation)
            texts = [t.text for t in mine]
            assert len(set(texts)) == len(texts), (language, relation)
            for t in mine:
                assert parse_template(t.text) == t.text


def test_package_files_are_named_after_their_language():
    files = sorted(PACKAGE_DIR.glob("*.json"))
    assert [f.stem for f in files] == template_languages()
    for file in files:
        data = json.loads(file.read_text(encoding="utf-8"))
        assert data["language"] == file.stem
        assert set(data["relations"]) == set(RELATIONS)


def test_no_probing_template_is_a_kg_training_template():
    training = {
        (language, relation): template.format(s="[X]", o="[Y]")
        for language, table in TRIPLE_TEMPLATES.items()
        for relation, template in table.items()
    }
    assert len(training) == 40  # en, de, fr, es, sw: the check below must see them
    clashes = [t for t in load_templates() if training.get((t.language, t.relation)) == t.text]
    assert clashes == []
    filled_probe = {t.fill("Kenya", "Shilingi")[0] for t in load_templates()}
    filled_train = {text.replace("[X]", "Kenya").replace("[Y]", "Shilingi") for text in training.values()}
    assert filled_probe.isdisjoint(filled_train)


def test_every_relation_has_a_paraphrase_with_the_object_before_other_words():
    templates = load_templates(kinds=("train", "heldout"))
    for language in template_languages():
        for relation in RELATIONS:
            after = [t.text.split("[Y]")[1] for t in templates if (t.language, t.relation) == (language, relation)]
            assert any(re.search(r"\w", rest) for rest in after), (language, relation)


def test_fill_spans_are_exact_for_every_template_and_both_slot_orders():
    subject, obj = "Côte d’Ivoire [Y]", "Faranga ya CFA ya Afrika Magharibi"
    orders = set()
    for t in load_templates():
        text, (s0, s1), (o0, o1) = t.fill(subject, obj)
        assert text[s0:s1] == subject and text[o0:o1] == obj
        assert s1 <= o0 or o1 <= s0
        assert text == t.text.replace("[X]", "\0").replace("[Y]", obj).replace("\0", subject)
        orders.add(s0 < o0)
    assert orders == {True, False}


def test_fill_on_handmade_templates_and_the_documented_example():
    assert ProbeTemplate("en", "r", "train", 0, "[Y] is [X]").fill("ab", "c") == ("c is ab", (5, 7), (0, 1))
    assert ProbeTemplate("ja", "r", "train", 0, "[X]の[Y]").fill("日本", "円") == ("日本の円", (0, 2), (3, 4))
    sw = load_templates(["sw"], ["currency"], ["natural"])
    assert len(sw) == 1
    assert sw[0].fill("Ufaransa", "Yuro") == ("Fedha inayotumika nchini Ufaransa ni Yuro.", (25, 33), (37, 41))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[X] and [X] share [Y].", "2 [X] slots"),
        ("[X] is a country.", "0 [Y] slots"),
        ("[X] borders [Y] and [Z].", "[Z]"),
        ("[X] uses [MASK] as [Y].", "[MASK]"),
        ("[X] is in [Y] [", "stray bracket"),
        ("", "non-empty"),
        (" [X] is [Y].", "whitespace"),
        ("[X] is\n[Y].", "one line"),
    ],
)
def test_bad_templates_raise_a_one_line_template_error(text, expected):
    with pytest.raises(TemplateError) as info:
        parse_template(text, source="my.json en/currency")
    message = str(info.value)
    assert expected in message and "my.json en/currency" in message and "\n" not in message
    assert isinstance(info.value, ConfigError)


def test_probe_template_validates_kind_and_text():
    with pytest.raises(TemplateError, match="kind"):
        ProbeTemplate("en", "currency", "test", 0, "[X]: [Y].")
    with pytest.raises(TemplateError, match=r"en/currency/train\[3\]"):
        ProbeTemplate("en", "currency", "train", 3, "[X]: [X].")


def test_unknown_language_relation_and_kind_are_reported_with_suggestions():
    with pytest.raises(TemplateError) as info:
        load_templates(["swa"])
    message = str(info.value)
    assert "'swa'" in message and "did you mean 'sw'" in message and "am, ar, de" in message
    assert "\n" not in message
    with pytest.raises(TemplateError, match="did you mean 'currency'") as info:
        load_templates(["en"], ["curency"])
    assert "official_language" in str(info.value)
    with pytest.raises(TemplateError, match="choose from"):
        load_templates(["en"], kinds=["held-out"])


def test_selection_and_order_are_deterministic():
    chosen = load_templates(["sw", "en"], ["currency", "continent"], ["heldout", "natural"])
    assert chosen == load_templates(["en", "sw"], ["continent", "currency"], ["natural", "heldout"])
    keys = [(t.language, t.relation, KINDS.index(t.kind), t.index) for t in chosen]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert {t.language for t in chosen} == {"en", "sw"} and {t.kind for t in chosen} == {"natural", "heldout"}
    assert [t.index for t in chosen if (t.language, t.relation, t.kind) == ("en", "currency", "heldout")] == [0, 1]


def test_package_data_is_parsed_once():
    load_templates(["en"])
    before = probing_templates._package_table.cache_info()
    load_templates(["de"])
    template_languages()
    after = probing_templates._package_table.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 2


def test_loading_from_a_user_directory_and_file(tmp_path):
    _write(tmp_path / "xx.json", {"language": "xx", "relations": {"currency": _entry(), "capital": _entry("[Y] [X]")}})
    _write(tmp_path / "yy.json", {"language": "yy", "relations": {"currency": _entry()}})
    assert template_languages(tmp_path) == ["xx", "yy"]
    loaded = load_templates(["xx"], path=tmp_path)
    assert [(t.relation, t.kind, t.index) for t in loaded] == [
        (relation, kind, i)
        for relation in ("capital", "currency")
        for kind, n in zip(KINDS, (1, 2, 1), strict=True)
        for i in range(n)
    ]
    assert load_templates(path=str(tmp_path / "yy.json")) == load_templates(["yy"], path=tmp_path)
    with pytest.raises(TemplateError, match="'yy' has no templates for relation 'capital'"):
        load_templates(["yy"], ["capital"], path=tmp_path)
    with pytest.raises(TemplateError, match="did you mean 'xx'"):
        load_templates(["xxx"], path=tmp_path)
    with pytest.raises(TemplateError, match="'en' in .*; available: xx, yy"):
        load_templates(["en"], path=tmp_path)


def test_malformed_user_files_give_one_line_errors_naming_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"language": "xx", "relations": {', encoding="utf-8")
    with pytest.raises(TemplateError) as info:
        load_templates(path=broken)
    message = str(info.value)
    assert str(broken) in message and "not valid JSON" in message and "\n" not in message

    cases = [
        ({"language": "xx"}, 'exactly the keys "language" and "relations"'),
        (
            {"language": "xx", "relations": {"currency": {"natural": "[X] [Y]", "train": ["[X]: [Y]"]}}},
            "exactly the keys",
        ),
        ({"language": "xx", "relations": {"currency": {**_entry(), "train": "[X]: [Y]"}}}, "non-empty list"),
        ({"language": "xx", "relations": {"currency": {**_entry(), "heldout": ["[X] of [Y] and [Z]"]}}}, "[Z]"),
        ({"language": "xx", "relations": {"currency": {**_entry(), "heldout": ["[X] has [Y]."]}}}, "appears twice"),
    ]
    for i, (data, expected) in enumerate(cases):
        file = _write(tmp_path / f"case{i}.json", data)
        with pytest.raises(TemplateError) as info:
            load_templates(path=file)
        message = str(info.value)
        assert str(file) in message and expected in message and "\n" not in message, message

    _write(tmp_path / "a.json", {"language": "zz", "relations": {"currency": _entry()}})
    _write(tmp_path / "b.json", {"language": "zz", "relations": {"currency": _entry()}})
    with pytest.raises(TemplateError, match="also defined in"):
        template_languages(tmp_path)
    with pytest.raises(TemplateError, match="no such template file"):
        load_templates(path=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TemplateError, match="no \\*.json template files"):
        template_languages(empty)
