"""Per-language relation templates for LAMA-style factual probing (the ``probe-v1`` set), shipped as package data.

Each language has one JSON file, ``polyglot_adapters/probing/templates/<lang>.json``::

    {"language": "sw",
     "relations": {"currency": {"natural": "Fedha inayotumika nchini [X] ni [Y].",
                                "train": ["...", "..."], "heldout": ["...", "..."]}, ...}}

Every template has exactly one subject slot ``[X]`` and one object slot ``[Y]``, in either order.
Per relation there is one *natural* prompt, *train* paraphrases (for fitting prompts or P-Adapters)
and *held-out* paraphrases (only for measuring consistency on unseen wordings). The wording differs
from the KG adapters' training templates (:mod:`polyglot_adapters.kg.templates`, ``kg-train-v1``), so
a probe never scores a sentence an adapter was trained on. A directory (or one file) of the same
format can be loaded with ``path=`` to add languages or relations.

Example:
    >>> template = load_templates(["sw"], ["currency"], ["natural"])[0]
    >>> template.fill("Ufaransa", "Yuro")
    ('Fedha inayotumika nchini Ufaransa ni Yuro.', (25, 33), (37, 41))
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "KINDS",
    "TEMPLATE_SET",
    "ProbeTemplate",
    "TemplateError",
    "load_templates",
    "parse_template",
    "template_languages",
]

TEMPLATE_SET = "probe-v1"
KINDS = ("natural", "train", "heldout")
SUBJECT = "[X]"
OBJECT = "[Y]"
_BRACKETED = re.compile(r"\[[^\[\]]*\]")
# language -> relation -> kind -> templates (one for "natural").
_Table = Mapping[str, Mapping[str, Mapping[str, tuple[str, ...]]]]


class TemplateError(ConfigError):
    """A probing template or template file is malformed, or names a language, relation or kind that has none."""


def parse_template(text: str, *, source: str = "") -> str:
    """Checks that a template has exactly one ``[X]``, exactly one ``[Y]`` and no other bracketed slot.

    Args:
        text: The template.
        source: Where it came from (file and entry), for the error message.

    Returns:
        ``text`` unchanged.

    Raises:
        TemplateError: If a slot is missing or repeated, another ``[...]`` token or a stray bracket
            is present, or the text is empty, multi-line or padded with whitespace.
    """
    where = f"{source}: " if source else ""
    if not isinstance(text, str) or not text.strip():
        raise TemplateError(f"{where}template {text!r} must be a non-empty string; write a sentence with [X] and [Y]")
    if text != text.strip() or "\n" in text or "\r" in text:
        raise TemplateError(f"{where}template {text!r} must be one line without leading or trailing whitespace")
    for slot, role in ((SUBJECT, "subject"), (OBJECT, "object")):
        count = text.count(slot)
        if count != 1:
            raise TemplateError(
                f"{where}template {text!r} has {count} {slot} slots; it needs exactly one {slot} for the {role}"
            )
    others = [token for token in _BRACKETED.findall(text) if token not in (SUBJECT, OBJECT)]
    rest = _BRACKETED.sub("", text)
    if others or "[" in rest or "]" in rest:
        found = others[0] if others else "a stray bracket"
        raise TemplateError(
            f"{where}template {text!r} contains {found}; only [X] (subject) and [Y] (object) may appear in brackets"
        )
    return text


@dataclasses.dataclass(frozen=True)
class ProbeTemplate:
    """One probing template of a language and relation.

    Attributes:
        language: Language code (``sw``).
        relation: KG relation (``currency``).
        kind: ``natural``, ``train`` or ``heldout`` (see :data:`KINDS`).
        index: Position among the templates of its language, relation and kind (0 for ``natural``).
        text: The template, with one ``[X]`` and one ``[Y]``.
    """

    language: str
    relation: str
    kind: str
    index: int
    text: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TemplateError(f"template kind {self.kind!r} is not one of {KINDS}")
        parse_template(self.text, source=f"{self.language}/{self.relation}/{self.kind}[{self.index}]")

    def fill(self, subject: str, obj: str) -> tuple[str, tuple[int, int], tuple[int, int]]:
        """The template with its slots filled, and where the fillers are in the result.

        Args:
            subject: Replaces ``[X]``.
            obj: Replaces ``[Y]`` (the answer, or a mask token's text for a cloze query).

        Returns:
            ``(text, (subject_start, subject_end), (object_start, object_end))``: character spans
            with ``text[start:end]`` equal to the filler, whichever slot comes first.
        """
        x, y = self.text.index(SUBJECT), self.text.index(OBJECT)
        first, second = (subject, obj) if x < y else (obj, subject)
        a, b = min(x, y), max(x, y)
        head, middle, tail = self.text[:a], self.text[a + len(SUBJECT) : b], self.text[b + len(OBJECT) :]
        first_span = (len(head), len(head) + len(first))
        second_start = first_span[1] + len(middle)
        second_span = (second_start, second_start + len(second))
        text = head + first + middle + second + tail
        return (text, first_span, second_span) if x < y else (text, second_span, first_span)


def _close(name: str, available: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name.lower(), list(available), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def _parse_file(data: Any, source: str) -> tuple[str, dict[str, dict[str, tuple[str, ...]]]]:
    """Validates one template file's JSON object; returns its language and relation -> kind -> templates."""
    if not isinstance(data, dict) or set(data) != {"language", "relations"}:
        raise TemplateError(f'{source}: expected an object with exactly the keys "language" and "relations"')
    language, relations = data["language"], data["relations"]
    if not isinstance(language, str) or not language or language != language.strip():
        raise TemplateError(f'{source}: "language" must be a language code such as "sw", got {language!r}')
    if not isinstance(relations, dict) or not relations:
        raise TemplateError(f'{source}: "relations" must be a non-empty object of relation -> templates')
    table: dict[str, dict[str, tuple[str, ...]]] = {}
    for relation, entry in relations.items():
        where = f"{source} {language}/{relation}"
        if not isinstance(entry, dict) or set(entry) != set(KINDS):
            raise TemplateError(f"{where}: expected an object with exactly the keys {list(KINDS)}")
        natural, train, heldout = (entry[kind] for kind in KINDS)
        if not isinstance(natural, str):
            raise TemplateError(f'{where}: "natural" must be one template string, got {type(natural).__name__}')
        for kind, texts in (("train", train), ("heldout", heldout)):
            if not isinstance(texts, list) or not texts:
                raise TemplateError(f'{where}: "{kind}" must be a non-empty list of template strings')
        kinds = {"natural": (natural,), "train": tuple(train), "heldout": tuple(heldout)}
        for kind, texts in kinds.items():
            for i, text in enumerate(texts):
                parse_template(text, source=f"{where}/{kind}[{i}]")
        every = [text for texts in kinds.values() for text in texts]
        if len(set(every)) != len(every):
            duplicate = next(text for text in every if every.count(text) > 1)
            raise TemplateError(f"{where}: template {duplicate!r} appears twice; every template must be distinct")
        table[relation] = kinds
    return language, table


def _read_files(files: Iterable[Traversable | Path]) -> _Table:
    table: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {}
    origin: dict[str, str] = {}
    for file in files:
        source = str(file)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TemplateError(
                f"{source}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); fix the file"
            ) from None
        except (OSError, UnicodeDecodeError) as err:
            raise TemplateError(f"{source}: cannot read the template file ({err}); check the path") from None
        language, relations = _parse_file(data, source)
        if language in table:
            raise TemplateError(
                f"{source}: language {language!r} is also defined in {origin[language]}; keep one file"
            )
        table[language], origin[language] = relations, source
    return table


@functools.lru_cache(maxsize=1)
def _package_table() -> _Table:
    folder = resources.files(__package__).joinpath("templates")
    return _read_files(sorted((f for f in folder.iterdir() if f.name.endswith(".json")), key=lambda f: f.name))


def _table(path: str | os.PathLike[str] | None) -> _Table:
    if path is None:
        return _package_table()
    location = Path(path)
    if location.is_dir():
        files = sorted(location.glob("*.json"))
        if not files:
            raise TemplateError(f"{location}: no *.json template files in this directory; add <language>.json files")
        return _read_files(files)
    if not location.is_file():
        raise TemplateError(f"{location}: no such template file or directory; pass an existing path")
    return _read_files([location])


def template_languages(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Languages with probing templates, sorted: the package's, or those under ``path``."""
    return sorted(_table(path))


def load_templates(
    languages: Sequence[str] | None = None,
    relations: Sequence[str] | None = None,
    kinds: Sequence[str] = KINDS,
    *,
    path: str | os.PathLike[str] | None = None,
) -> list[ProbeTemplate]:
    """Probing templates, validated, ordered by language, relation, kind (natural, train, heldout) and index.

    Args:
        languages: Language codes; ``None`` for every language that has templates.
        relations: Relations; ``None`` for every relation of each chosen language.
        kinds: Which of :data:`KINDS` to return.
        path: A directory of ``<language>.json`` files or one such file to read instead of the
            package data (same format).

    Returns:
        The matching templates.

    Raises:
        TemplateError: If a file is unreadable or malformed, or a language, relation or kind is
            unknown or has no templates (the message lists what is available).
    """
    table = _table(path)
    where = "the package's probing templates" if path is None else str(path)
    for kind in kinds:
        if kind not in KINDS:
            raise TemplateError(f"unknown template kind {kind!r}{_close(kind, KINDS)}; choose from {list(KINDS)}")
    chosen_languages = sorted(table) if languages is None else sorted(set(languages))
    for language in chosen_languages:
        if language not in table:
            raise TemplateError(
                f"no probing templates for language {language!r} in {where}{_close(language, table)}; "
                f"available: {', '.join(sorted(table))}; add a <language>.json file and pass its directory as path"
            )
    known = sorted({relation for relations_of in table.values() for relation in relations_of})
    for relation in relations or ():
        if relation not in known:
            raise TemplateError(
                f"unknown relation {relation!r}{_close(relation, known)}; known relations: {', '.join(known)}"
            )
    templates = []
    for language in chosen_languages:
        chosen_relations = sorted(table[language]) if relations is None else sorted(set(relations))
        for relation in chosen_relations:
            if relation not in table[language]:
                raise TemplateError(
                    f"language {language!r} has no templates for relation {relation!r} in {where}; "
                    f"add them to its {language}.json or leave {language!r} out"
                )
            for kind in KINDS:
                if kind in kinds:
                    for index, text in enumerate(table[language][relation][kind]):
                        templates.append(ProbeTemplate(language, relation, kind, index, text))
    return templates
