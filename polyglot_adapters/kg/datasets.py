"""Knowledge-graph datasets: one type for the CLDR multilingual KG and PyKEEN's bundled benchmarks.

A :class:`KGDataset` holds entities with labels per language, relations and triples split into
train, valid and test. It is saved as a directory of TSV files plus ``meta.json`` under the cache
(``paths.cache_home("kg")``), written into a temporary directory and renamed into place, and
validated line by line when loaded: a bad file gives a one-line :class:`KGError` naming the file
and the line.

Layout of a saved dataset (every TSV starts with its header row; UTF-8, tab-separated):
    meta.json       schema, name, relations, sources, statistics
    entities.tsv    entity, kind
    labels.tsv      entity, language, label
    train.tsv / valid.tsv / test.tsv    head, relation, tail

Datasets by name (:data:`KG_NAMES`): ``cldr`` (see :mod:`polyglot_adapters.kg.cldr`) and PyKEEN's
``nations``, ``kinships`` and ``umls``, which ship inside the PyKEEN wheel. The PyKEEN ones have no
multilingual labels: their entity names serve as the ``en`` labels, and their splits are PyKEEN's.

Usage:
    python -m polyglot_adapters.kg fetch                 # download cldr-core (npm) and build the CLDR KG
    python -m polyglot_adapters.kg build --kg nations    # build (or rebuild) one dataset into the cache
    python -m polyglot_adapters.kg stats --kg cldr       # entities, triples per relation, labels per language
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from ..errors import ConfigError, PolyglotAdaptersError
from ..paths import cache_home

__all__ = [
    "FORMAT_VERSION",
    "KG_NAMES",
    "SCHEMA",
    "SPLIT_NAMES",
    "KGDataset",
    "KGError",
    "Triple",
    "UnknownKGError",
    "build_kg",
    "format_statistics",
    "load_kg",
    "load_kg_dir",
    "load_pykeen",
    "main",
    "save_kg",
    "split_triples",
]

SCHEMA = "polyglot-adapters/kg"
FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "valid", "test")
KG_NAMES = ("cldr", "nations", "kinships", "umls")
_PYKEEN = {"nations": "Nations", "kinships": "Kinships", "umls": "UMLS"}
_HEADERS = {
    "entities.tsv": ("entity", "kind"),
    "labels.tsv": ("entity", "language", "label"),
    **{f"{split}.tsv": ("head", "relation", "tail") for split in SPLIT_NAMES},
}
Triple = tuple[str, str, str]


class KGError(PolyglotAdaptersError):
    """A knowledge graph cannot be built, fetched, saved or read (the message names the file and line)."""


class UnknownKGError(KGError, ConfigError):
    """The name is not one of :data:`KG_NAMES`."""


def _field_problem(value: str) -> str | None:
    """Why a name, code or label cannot be stored in a TSV cell, or None."""
    if not value:
        return "is empty"
    if value != value.strip():
        return f"{value!r} has leading or trailing whitespace"
    if any(c in value for c in "\t\n\r"):
        return f"{value!r} contains a tab or line break"
    return None


@dataclasses.dataclass(frozen=True)
class KGDataset:
    """Entities with labels per language, relations, and triples split into train, valid and test.

    Construction validates everything; a problem raises :class:`KGError`.

    Attributes:
        name: Dataset name (``cldr``, ``nations`` ...).
        entities: Entity id -> language code -> label (at least one label each).
        kinds: Entity id -> kind (``territory``, ``language``, ``entity`` ...).
        relations: Relation names.
        splits: ``train``, ``valid``, ``test`` -> (head, relation, tail) triples, sorted, no duplicates.
        sources: Where the data came from (package -> version, settings), for ``meta.json``.
    """

    name: str
    entities: Mapping[str, Mapping[str, str]]
    kinds: Mapping[str, str]
    relations: tuple[str, ...]
    splits: Mapping[str, tuple[Triple, ...]]
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if set(self.kinds) != set(self.entities):
            missing = sorted(set(self.entities) ^ set(self.kinds))[:3]
            raise KGError(f"{where}: entities and kinds disagree on {missing}")
        for entity, labels in self.entities.items():
            for value, what in ((entity, "entity id"), (self.kinds[entity], f"kind of {entity!r}")):
                if problem := _field_problem(value):
                    raise KGError(f"{where}: {what} {problem}")
            if not labels:
                raise KGError(f"{where}: entity {entity!r} has no label")
            for lang, label in labels.items():
                if problem := _field_problem(lang) or _field_problem(label):
                    raise KGError(f"{where}: label of {entity!r} in {lang!r} {problem}")
        if len(set(self.relations)) != len(self.relations):
            raise KGError(f"{where}: duplicate relation names")
        if set(self.splits) != set(SPLIT_NAMES):
            raise KGError(f"{where}: splits must be {SPLIT_NAMES}, got {tuple(self.splits)}")
        relations = set(self.relations)
        for split in SPLIT_NAMES:
            triples = self.splits[split]
            if list(triples) != sorted(set(triples)):
                raise KGError(f"{where}: {split} triples must be sorted and unique")
            for head, relation, tail in triples:
                problem = _triple_problem(head, relation, tail, self.entities, relations)
                if problem:
                    raise KGError(f"{where}: {split} triple {(head, relation, tail)}: {problem}")

    def triples(self, split: str | None = None) -> tuple[Triple, ...]:
        """The triples of one split, or of all three (train, valid, test in that order) with ``None``."""
        if split is None:
            return tuple(t for name in SPLIT_NAMES for t in self.splits[name])
        if split not in self.splits:
            raise KGError(f"dataset {self.name!r}: no split {split!r}; choose one of {SPLIT_NAMES}")
        return self.splits[split]

    def languages(self) -> list[str]:
        """Language codes with at least one label, sorted."""
        return sorted({lang for labels in self.entities.values() for lang in labels})

    def statistics(self) -> dict[str, Any]:
        """Counts: entities (in all and per kind), relations, triples per split and per relation, labels per language.

        Returns:
            ``{"entities", "entities_per_kind", "relations", "triples", "triples_per_split",
            "triples_per_relation", "labels_per_language"}``; the per-language counts are sorted
            by count (largest first), then code.
        """
        per_language = Counter(lang for labels in self.entities.values() for lang in labels)
        per_relation = Counter(r for _, r, _ in self.triples())
        return {
            "entities": len(self.entities),
            "entities_per_kind": dict(sorted(Counter(self.kinds.values()).items())),
            "relations": len(self.relations),
            "triples": sum(len(t) for t in self.splits.values()),
            "triples_per_split": {split: len(self.splits[split]) for split in SPLIT_NAMES},
            "triples_per_relation": {r: per_relation[r] for r in self.relations},
            "labels_per_language": dict(sorted(per_language.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def _triple_problem(
    head: str, relation: str, tail: str, entities: Mapping[str, Any], relations: set[str]
) -> str | None:
    if head not in entities:
        return f"unknown head entity {head!r}"
    if tail not in entities:
        return f"unknown tail entity {tail!r}"
    if relation not in relations:
        return f"unknown relation {relation!r}"
    return None


def split_triples(
    triples: Sequence[Triple],
    *,
    symmetric: Iterable[str] = (),
    seed: int = 0,
    fractions: tuple[float, float] = (0.1, 0.1),
) -> dict[str, tuple[Triple, ...]]:
    """Splits triples into train, valid and test so that every held-out entity and relation stays in train.

    Triples are visited in a seeded shuffle of their sorted order; one is held out only if, in the
    multigraph of the triples still in train (``networkx.MultiGraph``), both of its entities keep
    another edge and its relation keeps another triple. The two directions of a symmetric relation
    are held out together, so neither direction gives the other away.

    Args:
        triples: The triples (any order; duplicates are dropped).
        symmetric: Relations whose (a, r, b) and (b, r, a) move as one.
        seed: Seed of the shuffle; the same input and seed give the same split.
        fractions: Target shares of valid and test (fewer when the graph is too sparse).

    Returns:
        ``{"train", "valid", "test"}`` -> sorted triples.
    """
    unique = sorted(set(triples))
    symmetric = set(symmetric)
    groups: dict[tuple[Any, ...], list[Triple]] = {}
    for head, relation, tail in unique:
        key = (relation, *sorted((head, tail))) if relation in symmetric else (head, relation, tail)
        groups.setdefault(key, []).append((head, relation, tail))
    graph = nx.MultiGraph()
    for triple in unique:
        graph.add_edge(triple[0], triple[2], key=triple)
    relation_count = Counter(r for _, r, _ in unique)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    wanted = [round(len(unique) * f) for f in fractions]
    held: list[list[Triple]] = []
    budget = sum(wanted)
    for key in order:
        if budget <= 0:
            break
        group = groups[key]
        touches = Counter(e for h, _, t in group for e in {h, t})
        if any(graph.degree(e) <= n for e, n in touches.items()) or relation_count[group[0][1]] <= len(group):
            continue
        for triple in group:
            graph.remove_edge(triple[0], triple[2], key=triple)
        relation_count[group[0][1]] -= len(group)
        held.append(group)
        budget -= len(group)
    valid: list[Triple] = []
    test: list[Triple] = []
    for group in held:
        (valid if len(valid) < wanted[0] else test).extend(group)
    out = set(valid) | set(test)
    return {
        "train": tuple(t for t in unique if t not in out),
        "valid": tuple(sorted(valid)),
        "test": tuple(sorted(test)),
    }


def _tsv(rows: Iterable[Sequence[str]]) -> bytes:
    return "".join("\t".join(row) + "\n" for row in rows).encode("utf-8")


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save_kg(dataset: KGDataset, directory: str | Path) -> Path:
    """Writes a dataset as TSV + JSON, atomically: into a temporary sibling directory, then renamed.

    An existing directory is replaced only once the new one is complete; a failure leaves the old
    one (or nothing) in place.

    Args:
        dataset: The dataset.
        directory: Target directory (its parent is created if missing).

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    old = directory.parent / f".{directory.name}.old"
    try:
        files = {
            "entities.tsv": [(e, dataset.kinds[e]) for e in sorted(dataset.entities)],
            "labels.tsv": [
                (e, lang, label)
                for e in sorted(dataset.entities)
                for lang, label in sorted(dataset.entities[e].items())
            ],
            **{f"{split}.tsv": list(dataset.splits[split]) for split in SPLIT_NAMES},
        }
        for name, rows in files.items():
            _write(tmp / name, _tsv([_HEADERS[name], *rows]))
        meta = {
            "schema": SCHEMA,
            "format_version": FORMAT_VERSION,
            "name": dataset.name,
            "relations": list(dataset.relations),
            "sources": dict(sorted(dataset.sources.items())),
            "statistics": dataset.statistics(),
        }
        _write(tmp / "meta.json", (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))
        os.chmod(tmp, 0o755)
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not directory.exists():
            old.rename(directory)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yields (line number, cells) of a TSV after checking its header; wrong column counts raise."""
    header = _HEADERS[path.name]
    if not path.is_file():
        raise KGError(f"{path}: missing; rebuild the dataset (python -m polyglot_adapters.kg build)")
    try:
        lines = path.read_bytes().decode("utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise KGError(f"{path}: not UTF-8 ({err})") from None
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        cells = line.rstrip("\r").split("\t")
        if len(cells) != len(header):
            raise KGError(f"{path}:{number}: expected {len(header)} tab-separated columns, got {len(cells)}")
        if number == 1:
            if tuple(cells) != header:
                raise KGError(f"{path}:1: header must be {'<TAB>'.join(header)}")
            continue
        for cell in cells:
            if problem := _field_problem(cell):
                raise KGError(f"{path}:{number}: a cell {problem}")
        yield number, cells


def load_kg_dir(directory: str | Path) -> KGDataset:
    """Reads a dataset written by :func:`save_kg`, checking every line.

    Raises:
        KGError: Naming the file and line of a missing header, a wrong column count, an empty cell, a
            duplicate entity or label, an unknown entity or relation, or a meta.json of another schema.
    """
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        raise KGError(f"{meta_path}: missing; rebuild the dataset (python -m polyglot_adapters.kg build)")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise KGError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA or meta.get("format_version") != FORMAT_VERSION:
        raise KGError(f"{meta_path}: not a {SCHEMA} file of version {FORMAT_VERSION}; rebuild the dataset")
    relations = meta.get("relations")
    if not isinstance(relations, list) or not all(isinstance(r, str) for r in relations):
        raise KGError(f"{meta_path}: 'relations' must be a list of names")
    kinds: dict[str, str] = {}
    path = directory / "entities.tsv"
    for number, (entity, kind) in _rows(path):
        if entity in kinds:
            raise KGError(f"{path}:{number}: duplicate entity {entity!r}")
        kinds[entity] = kind
    entities: dict[str, dict[str, str]] = {e: {} for e in kinds}
    path = directory / "labels.tsv"
    for number, (entity, lang, label) in _rows(path):
        if entity not in entities:
            raise KGError(f"{path}:{number}: label for unknown entity {entity!r} (not in entities.tsv)")
        if lang in entities[entity]:
            raise KGError(f"{path}:{number}: duplicate label of {entity!r} in language {lang!r}")
        entities[entity][lang] = label
    for entity, labels in entities.items():
        if not labels:
            raise KGError(f"{path}: entity {entity!r} has no label")
    splits: dict[str, tuple[Triple, ...]] = {}
    for split in SPLIT_NAMES:
        path = directory / f"{split}.tsv"
        seen: set[Triple] = set()
        for number, (head, relation, tail) in _rows(path):
            if problem := _triple_problem(head, relation, tail, entities, set(relations)):
                raise KGError(f"{path}:{number}: {problem}")
            if (head, relation, tail) in seen:
                raise KGError(f"{path}:{number}: duplicate triple")
            seen.add((head, relation, tail))
        splits[split] = tuple(sorted(seen))
    sources = meta.get("sources", {})
    return KGDataset(
        name=str(meta.get("name", directory.name)),
        entities=entities,
        kinds=kinds,
        relations=tuple(relations),
        splits=splits,
        sources={str(k): str(v) for k, v in sources.items()} if isinstance(sources, dict) else {},
    )


def load_pykeen(name: str) -> KGDataset:
    """Loads PyKEEN's bundled Nations, Kinships or UMLS (inside the wheel; nothing is downloaded).

    PyKEEN keeps its own files under ``$PYSTOW_HOME``; where that is unset it points at
    ``paths.cache_home("pystow")``. Entity names become the ``en`` labels; PyKEEN's split is kept.

    Args:
        name: ``nations``, ``kinships`` or ``umls``.

    Raises:
        UnknownKGError: For any other name.
    """
    if name not in _PYKEEN:
        raise UnknownKGError(f"{name!r} is not a bundled PyKEEN dataset; choose one of {sorted(_PYKEEN)}")
    os.environ.setdefault("PYSTOW_HOME", str(cache_home("pystow")))
    import pykeen
    import pykeen.datasets

    source = getattr(pykeen.datasets, _PYKEEN[name])()
    id_to_entity = {i: e for e, i in source.entity_to_id.items()}
    id_to_relation = {i: r for r, i in source.relation_to_id.items()}
    factories = {"train": source.training, "valid": source.validation, "test": source.testing}
    splits = {
        split: tuple(
            sorted({(id_to_entity[h], id_to_relation[r], id_to_entity[t]) for h, r, t in f.mapped_triples.tolist()})
        )
        for split, f in factories.items()
    }
    return KGDataset(
        name=name,
        entities={e: {"en": e} for e in sorted(source.entity_to_id)},
        kinds={e: "entity" for e in source.entity_to_id},
        relations=tuple(sorted(source.relation_to_id)),
        splits=splits,
        sources={"pykeen": pykeen.get_version(), "dataset": _PYKEEN[name]},
    )


def _check_name(name: str) -> None:
    if name not in KG_NAMES:
        raise UnknownKGError(f"unknown knowledge graph {name!r}; choose one of {', '.join(KG_NAMES)}")


def build_kg(name: str, *, cache_dir: str | Path | None = None) -> Path:
    """Builds a dataset from its sources and saves it (replacing any earlier build) under the cache.

    Args:
        name: One of :data:`KG_NAMES`.
        cache_dir: Cache directory; default ``paths.cache_home("kg")``. ``cldr`` reads the
            ``cldr-core`` tarball from here (see :func:`polyglot_adapters.kg.cldr.fetch_cldr_core`).

    Returns:
        The dataset's directory.

    Raises:
        KGError: If the name is unknown or a source is missing.
    """
    _check_name(name)
    directory = Path(cache_dir) if cache_dir is not None else cache_home("kg")
    if name == "cldr":
        from .cldr import build_cldr_kg

        dataset = build_cldr_kg(cache_dir=directory)
    else:
        dataset = load_pykeen(name)
    return save_kg(dataset, directory / f"{name}-v{FORMAT_VERSION}")


def load_kg(name: str, *, cache_dir: str | Path | None = None) -> KGDataset:
    """Loads a dataset from the cache, building and saving it first if it is not there.

    Nothing is downloaded: ``cldr`` needs the ``cldr-core`` tarball that
    ``python -m polyglot_adapters.kg fetch`` put in the cache.

    Args:
        name: One of :data:`KG_NAMES`.
        cache_dir: As for :func:`build_kg`.

    Raises:
        KGError: If the name is unknown, a source is missing, or the saved files are invalid.
    """
    _check_name(name)
    directory = (Path(cache_dir) if cache_dir is not None else cache_home("kg")) / f"{name}-v{FORMAT_VERSION}"
    if not directory.exists():
        build_kg(name, cache_dir=directory.parent)
    return load_kg_dir(directory)


def format_statistics(stats: Mapping[str, Any], *, languages: int | None = 20) -> str:
    """Renders :meth:`KGDataset.statistics` as a plain-text table.

    Args:
        stats: The statistics.
        languages: How many languages to list (the most labelled first); ``None`` for all.
    """
    lines = [f"{'entities':<32} {stats['entities']:>10,}"]
    lines += [f"  {kind:<30} {count:>10,}" for kind, count in stats["entities_per_kind"].items()]
    lines.append(f"{'relations':<32} {stats['relations']:>10,}")
    lines.append(f"{'triples':<32} {stats['triples']:>10,}")
    lines += [f"  {split:<30} {count:>10,}" for split, count in stats["triples_per_split"].items()]
    lines.append(f"{'triples per relation':<32}")
    lines += [f"  {rel:<30} {count:>10,}" for rel, count in stats["triples_per_relation"].items()]
    per_language = list(stats["labels_per_language"].items())
    shown = per_language if languages is None else per_language[:languages]
    lines.append(f"{'labels per language':<32} {len(per_language):>10,} languages")
    lines += [f"  {lang:<30} {count:>10,}" for lang, count in shown]
    if len(shown) < len(per_language):
        lines.append(f"  ... {len(per_language) - len(shown)} more (--languages all)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``fetch``, ``build`` or ``stats``; errors print one line and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m polyglot_adapters.kg", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch", "build", "stats"])
    parser.add_argument("--kg", default="cldr", choices=KG_NAMES, help="which knowledge graph (default: cldr)")
    parser.add_argument("--cache-dir", default=None, help="default: $POLYGLOT_ADAPTERS_HOME/kg")
    parser.add_argument("--languages", default="20", help="stats: how many languages to list, or 'all'")
    args = parser.parse_args(argv)
    try:
        shown = None if args.languages == "all" else int(args.languages)
    except ValueError:
        parser.error(f"--languages: {args.languages!r} is not a number or 'all'")
    try:
        if args.command == "fetch":
            from .cldr import fetch_cldr_core

            fetch_cldr_core(cache_dir=args.cache_dir)
            print(f"built {build_kg('cldr', cache_dir=args.cache_dir)}", file=sys.stderr)
        elif args.command == "build":
            print(f"built {build_kg(args.kg, cache_dir=args.cache_dir)}", file=sys.stderr)
        else:
            print(format_statistics(load_kg(args.kg, cache_dir=args.cache_dir).statistics(), languages=shown))
    except PolyglotAdaptersError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
