"""The CLDR multilingual KG and PyKEEN's bundled benchmarks as one dataset type (real data, no download).

The CLDR build reads the ``cldr-core`` tarball that the install step (``python -m
polyglot_adapters.kg fetch``) put in the cache; these tests never fetch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from polyglot_adapters.cli.kg import kg_group
from polyglot_adapters.errors import PolyglotAdaptersError
from polyglot_adapters.kg import (
    RELATIONS,
    KGDataset,
    KGError,
    UnknownKGError,
    build_cldr_kg,
    build_kg,
    fetch_cldr_core,
    load_kg,
    load_kg_dir,
    save_kg,
)
from polyglot_adapters.kg.cldr import TARBALL

LOW_RESOURCE = ("sw", "yo", "zu", "ha", "am")


@pytest.fixture(scope="module")
def cldr_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache holding only the fetched tarball, and the CLDR KG built into it once."""
    try:
        tarball = fetch_cldr_core(download=False)
    except KGError as err:
        pytest.fail(f"the cache lacks cldr-core ({err})")
    cache = tmp_path_factory.mktemp("kg-cache")
    shutil.copy(tarball, cache / TARBALL)
    build_kg("cldr", cache_dir=cache)
    return cache


@pytest.fixture(scope="module")
def cldr(cldr_cache: Path) -> KGDataset:
    return load_kg("cldr", cache_dir=cldr_cache)


@pytest.fixture
def pystow_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYSTOW_HOME", str(tmp_path / "pystow"))
    return tmp_path / "pystow"


def _ids(dataset: KGDataset, split: str) -> set[str]:
    return {e for h, _, t in dataset.triples(split) for e in (h, t)}


def test_cldr_coverage(cldr: KGDataset) -> None:
    stats = cldr.statistics()
    assert stats["entities_per_kind"]["territory"] >= 250 and stats["entities_per_kind"]["language"] >= 400
    assert stats["entities_per_kind"]["currency"] >= 140 and stats["entities_per_kind"]["script"] >= 30
    assert stats["entities_per_kind"]["region"] == 28  # 5 continents + 23 sub-regions (UN M49, as in CLDR)
    assert set(stats["triples_per_relation"]) == set(RELATIONS) == set(cldr.relations)
    assert min(stats["triples_per_relation"].values()) >= 150 and stats["triples"] >= 3000
    assert len(stats["labels_per_language"]) >= 300
    territories = [e for e, kind in cldr.kinds.items() if kind == "territory"]
    for lang in LOW_RESOURCE:
        labelled = sum(lang in cldr.entities[t] for t in territories)
        assert labelled >= 0.95 * len(territories), lang
    # Every entity is labelled in many locales, every entity occurs in a triple.
    assert min(len(labels) for labels in cldr.entities.values()) >= 20
    assert _ids(cldr, "train") | _ids(cldr, "valid") | _ids(cldr, "test") == set(cldr.entities)


def test_cldr_facts(cldr: KGDataset) -> None:
    facts = set(cldr.triples())
    for triple in [
        ("territory:FR", "official_language", "language:fr"),
        ("territory:FR", "currency", "currency:EUR"),
        ("territory:FR", "continent", "region:150"),
        ("territory:FR", "subregion", "region:155"),
        ("territory:FR", "shares_border_with", "territory:DE"),
        ("territory:DE", "shares_border_with", "territory:FR"),
        ("territory:TZ", "official_language", "language:sw"),
        ("territory:JP", "language_spoken", "language:ja"),
        ("territory:KE", "continent", "region:002"),
        ("language:am", "written_in_script", "script:Ethi"),
        ("language:sw", "primary_country", "territory:TZ"),
        ("language:ru", "written_in_script", "script:Cyrl"),
    ]:
        assert triple in facts, triple
    assert ("territory:FR", "official_language", "language:de") not in facts
    assert ("territory:FR", "shares_border_with", "territory:PT") not in facts
    assert cldr.entities["territory:FR"]["en"] == "France" and cldr.entities["territory:FR"]["sw"] == "Ufaransa"
    assert cldr.entities["language:fr"]["fr"] == "français" and cldr.entities["currency:EUR"]["de"] == "Euro"
    assert cldr.entities["region:002"]["en"] == "Africa" and cldr.entities["script:Ethi"]["am"] == "ኢትዮፒክ"
    # Each territory has exactly one continent and one sub-region.
    for relation in ("continent", "subregion"):
        heads = [h for h, r, _ in cldr.triples() if r == relation]
        assert len(heads) == len(set(heads)) == sum(k == "territory" for k in cldr.kinds.values())


def test_cldr_split(cldr: KGDataset) -> None:
    train, valid, test = (set(cldr.triples(s)) for s in ("train", "valid", "test"))
    assert not train & valid and not train & test and not valid & test
    total = len(train) + len(valid) + len(test)
    assert 0.08 * total <= len(valid) <= 0.12 * total and 0.08 * total <= len(test) <= 0.12 * total
    assert (_ids(cldr, "valid") | _ids(cldr, "test")) <= _ids(cldr, "train")
    assert {r for _, r, _ in valid | test} <= {r for _, r, _ in train}
    for split in (valid, test):  # a border and its reverse are never split apart
        for h, r, t in split:
            if r == "shares_border_with":
                assert (t, r, h) in split


def test_cldr_deterministic(cldr_cache: Path, cldr: KGDataset, tmp_path: Path) -> None:
    shutil.copy(cldr_cache / TARBALL, tmp_path / TARBALL)
    again = build_kg("cldr", cache_dir=tmp_path)
    first = cldr_cache / again.name
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in first.iterdir())
    for path in again.iterdir():
        assert path.read_bytes() == (first / path.name).read_bytes(), path.name
    assert build_cldr_kg(cache_dir=tmp_path) == cldr  # built in memory equals saved-and-loaded


def test_cldr_needs_the_fetched_tarball(tmp_path: Path) -> None:
    with pytest.raises(KGError, match=r"cldr-core-48\.2\.0\.tgz: missing; run `python -m polyglot_adapters.kg fetch`"):
        build_kg("cldr", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    (tmp_path / TARBALL).write_bytes(b"not the tarball")
    with pytest.raises(KGError, match="checksum does not match"):
        build_kg("cldr", cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [TARBALL]


@pytest.mark.parametrize(
    ("name", "entities", "relations", "sizes"),
    [
        ("nations", 14, 55, (1592, 199, 201)),
        ("kinships", 104, 25, (8544, 1068, 1074)),
        ("umls", 135, 46, (5216, 652, 661)),
    ],
)
def test_pykeen_datasets(
    pystow_home: Path, tmp_path: Path, name: str, entities: int, relations: int, sizes: tuple[int, ...]
) -> None:
    dataset = load_kg(name, cache_dir=tmp_path)
    stats = dataset.statistics()
    assert (stats["entities"], stats["relations"]) == (entities, relations)
    assert tuple(stats["triples_per_split"].values()) == sizes
    assert stats["labels_per_language"] == {"en": entities}
    assert all(labels == {"en": e} for e, labels in dataset.entities.items())
    assert load_kg_dir(tmp_path / f"{name}-v1") == dataset
    left = sorted(p.name for p in tmp_path.iterdir() if p != pystow_home)
    assert left == [f"{name}-v1"]  # no temporary directory left


@pytest.fixture
def nations_dir(pystow_home: Path, tmp_path: Path) -> Path:
    return build_kg("nations", cache_dir=tmp_path)


def _edit(path: Path, line: int, text: str | None) -> None:
    """Replaces (or with None deletes) one line, 1-based."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if text is None:
        del lines[line - 1]
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "line", "text", "message"),
    [
        ("train.tsv", 3, "brazil\tembassy\tatlantis", r"train\.tsv:3: unknown tail entity 'atlantis'"),
        ("test.tsv", 2, "utopia\tembassy\tbrazil", r"test\.tsv:2: unknown head entity 'utopia'"),
        ("valid.tsv", 4, "brazil\tinvades\tchina", r"valid\.tsv:4: unknown relation 'invades'"),
        ("train.tsv", 5, "brazil\tembassy\tchina\textra", r"train\.tsv:5: expected 3 tab-separated columns, got 4"),
        ("entities.tsv", 2, "brazil", r"entities\.tsv:2: expected 2 tab-separated columns, got 1"),
        ("labels.tsv", 3, "brazil\ten\tBrasil", r"labels\.tsv:3: duplicate label of 'brazil' in language 'en'"),
        ("labels.tsv", 2, "brazil\ten\t", r"labels\.tsv:2: a cell is empty"),
        ("labels.tsv", 2, "brazil\ten\t Brazil", r"labels\.tsv:2: a cell ' Brazil' has leading or trailing"),
        ("labels.tsv", 2, "atlantis\ten\tAtlantis", r"labels\.tsv:2: label for unknown entity 'atlantis'"),
        ("labels.tsv", 1, "entity\tlang\tlabel", r"labels\.tsv:1: header must be"),
        ("labels.tsv", 2, None, r"labels\.tsv: entity 'brazil' has no label"),
    ],
)
def test_bad_files(nations_dir: Path, file: str, line: int, text: str | None, message: str) -> None:
    assert load_kg_dir(nations_dir).entities["brazil"] == {"en": "brazil"}  # the file is fine before the edit
    _edit(nations_dir / file, line, text)
    with pytest.raises(KGError, match=message) as info:
        load_kg_dir(nations_dir)
    assert "\n" not in str(info.value) and str(nations_dir / file) in str(info.value)


def test_bad_meta(nations_dir: Path) -> None:
    (nations_dir / "meta.json").write_text('{"schema": "something else"}', encoding="utf-8")
    with pytest.raises(KGError, match=r"meta\.json: not a polyglot-adapters/kg file of version 1"):
        load_kg_dir(nations_dir)
    (nations_dir / "meta.json").write_text("{", encoding="utf-8")
    with pytest.raises(KGError, match=r"meta\.json: not valid JSON"):
        load_kg_dir(nations_dir)


def test_bad_datasets_are_refused_before_writing(pystow_home: Path, nations_dir: Path) -> None:
    good = load_kg_dir(nations_dir)
    splits = dict(good.splits)
    splits["test"] = tuple(sorted({*splits["test"], ("brazil", "embassy", "atlantis")}))
    with pytest.raises(KGError, match=r"test triple .*unknown tail entity 'atlantis'"):
        KGDataset(good.name, good.entities, good.kinds, good.relations, splits)
    with pytest.raises(KGError, match=r"label of 'brazil' in 'en' is empty"):
        KGDataset(good.name, {**good.entities, "brazil": {"en": ""}}, good.kinds, good.relations, good.splits)
    with pytest.raises(KGError, match="contains a tab"):
        KGDataset(good.name, {**good.entities, "brazil": {"en": "a\tb"}}, good.kinds, good.relations, good.splits)
    # Saving over an existing build replaces it whole and leaves no temporary directory.
    smaller = KGDataset(good.name, good.entities, good.kinds, good.relations, {**good.splits, "test": ()})
    save_kg(smaller, nations_dir)
    assert load_kg_dir(nations_dir) == smaller
    assert sorted(p.name for p in nations_dir.parent.iterdir() if p != pystow_home) == [nations_dir.name]


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownKGError, match="unknown knowledge graph 'wikidata'; choose one of cldr, nations"):
        load_kg("wikidata", cache_dir=tmp_path)


def test_module_entry(pystow_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYSTOW_HOME": str(pystow_home)}
    command = [sys.executable, "-m", "polyglot_adapters.kg"]
    done = subprocess.run(
        [*command, "stats", "--kg", "nations", "--cache-dir", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["entities", "14"] and ["train", "1,592"] in [line.split() for line in lines]
    empty = tmp_path / "empty"
    done = subprocess.run([*command, "build", "--cache-dir", str(empty)], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "polyglot_adapters.kg fetch" in done.stderr


def test_click_group(pystow_home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(kg_group, ["build", "--kg", "umls", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "umls-v1" / "train.tsv").is_file()
    result = runner.invoke(kg_group, ["stats", "--kg", "umls", "--cache-dir", str(tmp_path), "--languages", "all"])
    assert result.exit_code == 0 and "entities" in result.output and "5,216" in result.output
    result = runner.invoke(kg_group, ["stats", "--cache-dir", str(tmp_path / "empty")])
    assert isinstance(result.exception, PolyglotAdaptersError) and "kg fetch" in str(result.exception)
