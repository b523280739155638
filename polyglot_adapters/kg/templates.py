"""Per-language training templates that verbalise CLDR entities (ES) and triples (TS) as sentences.

These are the KG adapters' *training* templates. Probing must evaluate with its own, differently
worded test templates, so that a probe never scores the sentences an adapter was trained on;
:data:`TEMPLATE_SET` names this set in run records. Each language's phrasing avoids article and case
agreement where it can (``Monnaie de {s} : {o}.``), because CLDR labels come without articles and
low-resource labels often carry noun-class prefixes (zu ``i-France``, sw ``Kifaransa``).

Example:
    >>> verbalise_triple("sw", "currency", "Ufaransa", "Yuro")
    'Sarafu ya Ufaransa ni Yuro.'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .datasets import KGError

__all__ = [
    "ENTITY_TEMPLATES",
    "TEMPLATE_SET",
    "TRIPLE_TEMPLATES",
    "TemplateError",
    "check_templates",
    "template_languages",
    "verbalise_entity",
    "verbalise_triple",
]

TEMPLATE_SET = "kg-train-v1"


class TemplateError(KGError):
    """No template for a relation or entity kind in a language, or a template without its slots."""


ENTITY_TEMPLATES: Mapping[str, Mapping[str, str]] = {
    "en": {
        "territory": "{x} is a country or territory.",
        "language": "{x} is a language.",
        "currency": "{x} is a currency.",
        "script": "{x} is a writing system.",
        "region": "{x} is a region of the world.",
    },
    "de": {
        "territory": "{x} ist ein Land oder Gebiet.",
        "language": "{x} ist eine Sprache.",
        "currency": "{x} ist eine Währung.",
        "script": "{x} ist eine Schrift.",
        "region": "{x} ist eine Region der Welt.",
    },
    "fr": {
        "territory": "{x} est un pays ou un territoire.",
        "language": "{x} est une langue.",
        "currency": "{x} est une monnaie.",
        "script": "{x} est une écriture.",
        "region": "{x} est une région du monde.",
    },
    "es": {
        "territory": "{x} es un país o territorio.",
        "language": "{x} es un idioma.",
        "currency": "{x} es una moneda.",
        "script": "{x} es un sistema de escritura.",
        "region": "{x} es una región del mundo.",
    },
    "sw": {
        "territory": "{x} ni nchi au eneo.",
        "language": "{x} ni lugha.",
        "currency": "{x} ni sarafu.",
        "script": "{x} ni mfumo wa maandishi.",
        "region": "{x} ni eneo la dunia.",
    },
}
"""Language -> entity kind -> template with the slot ``{x}``."""

TRIPLE_TEMPLATES: Mapping[str, Mapping[str, str]] = {
    "en": {
        "official_language": "An official language of {s} is {o}.",
        "language_spoken": "In {s}, people speak {o}.",
        "currency": "The currency of {s} is {o}.",
        "continent": "{s} is on the continent of {o}.",
        "subregion": "{s} is part of {o}.",
        "shares_border_with": "{s} shares a border with {o}.",
        "written_in_script": "{s} is written in the {o} script.",
        "primary_country": "{s} is mainly spoken in {o}.",
    },
    "de": {
        "official_language": "Eine Amtssprache von {s} ist {o}.",
        "language_spoken": "In {s} spricht man {o}.",
        "currency": "Die Währung von {s} ist {o}.",
        "continent": "{s} liegt auf dem Kontinent {o}.",
        "subregion": "{s} gehört zu {o}.",
        "shares_border_with": "{s} grenzt an {o}.",
        "written_in_script": "{s} wird in der Schrift {o} geschrieben.",
        "primary_country": "{s} wird vor allem in {o} gesprochen.",
    },
    "fr": {
        "official_language": "Langue officielle de {s} : {o}.",
        "language_spoken": "Langue parlée sur le territoire {s} : {o}.",
        "currency": "Monnaie de {s} : {o}.",
        "continent": "Continent de {s} : {o}.",
        "subregion": "Sous-région de {s} : {o}.",
        "shares_border_with": "Pays voisin de {s} : {o}.",
        "written_in_script": "Écriture de la langue {s} : {o}.",
        "primary_country": "Pays principal de la langue {s} : {o}.",
    },
    "es": {
        "official_language": "Idioma oficial de {s}: {o}.",
        "language_spoken": "Idioma hablado en {s}: {o}.",
        "currency": "Moneda de {s}: {o}.",
        "continent": "Continente de {s}: {o}.",
        "subregion": "Subregión de {s}: {o}.",
        "shares_border_with": "País vecino de {s}: {o}.",
        "written_in_script": "Escritura del idioma {s}: {o}.",
        "primary_country": "País principal del idioma {s}: {o}.",
    },
    "sw": {
        "official_language": "Lugha rasmi ya {s} ni {o}.",
        "language_spoken": "Lugha inayozungumzwa nchini {s} ni {o}.",
        "currency": "Sarafu ya {s} ni {o}.",
        "continent": "{s} iko katika bara la {o}.",
        "subregion": "{s} iko katika eneo la {o}.",
        "shares_border_with": "{s} inapakana na {o}.",
        "written_in_script": "{s} huandikwa kwa hati ya {o}.",
        "primary_country": "{s} huzungumzwa hasa nchini {o}.",
    },
}
"""Language -> relation -> template with the slots ``{s}`` (subject) and ``{o}`` (object)."""


def template_languages() -> list[str]:
    """Languages with both entity and triple templates, sorted."""
    return sorted(set(ENTITY_TEMPLATES) & set(TRIPLE_TEMPLATES))


def _lookup(table: Mapping[str, Mapping[str, str]], language: str, key: str, what: str) -> str:
    template = table.get(language, {}).get(key)
    if template is None:
        having = sorted(lang for lang, entries in table.items() if key in entries)
        raise TemplateError(
            f"no training template for {what} {key!r} in language {language!r} (templates exist in {having}); "
            f"add one to polyglot_adapters/kg/templates.py or leave {language!r} out of the sentence-level languages"
        )
    return template


def verbalise_entity(language: str, kind: str, label: str) -> str:
    """An entity's label in its kind's sentence (``"Ufaransa ni nchi au eneo."``).

    Raises:
        TemplateError: If the language has no template for the kind.
    """
    return _lookup(ENTITY_TEMPLATES, language, kind, "entity kind").format(x=label)


def verbalise_triple(language: str, relation: str, subject: str, obj: str) -> str:
    """A triple as a sentence; pass the mask token's text as ``obj`` for a cloze query.

    Raises:
        TemplateError: If the language has no template for the relation.
    """
    return _lookup(TRIPLE_TEMPLATES, language, relation, "relation").format(s=subject, o=obj)


def check_templates(languages: Iterable[str], relations: Iterable[str] = (), kinds: Iterable[str] = ()) -> None:
    """Checks, before any training, that every language has every needed template with its slots.

    Raises:
        TemplateError: Naming the first missing or malformed template.
    """
    for language in languages:
        for relation in relations:
            template = _lookup(TRIPLE_TEMPLATES, language, relation, "relation")
            if template.count("{s}") != 1 or template.count("{o}") != 1:
                raise TemplateError(f"template {language}/{relation} {template!r} needs one {{s}} and one {{o}}")
        for kind in kinds:
            template = _lookup(ENTITY_TEMPLATES, language, kind, "entity kind")
            if template.count("{x}") != 1:
                raise TemplateError(f"template {language}/{kind} {template!r} needs one {{x}}")
