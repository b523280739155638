"""``polyglot-adapters kg``: thin commands over :mod:`polyglot_adapters.kg` (build, stats)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["kg_group"]

_KG_OPTION = click.option(
    "--kg", "name", type=click.Choice(["cldr", "nations", "kinships", "umls"]), default="cldr", show_default=True
)
_CACHE_OPTION = click.option(
    "--cache-dir", type=click.Path(path_type=Path), default=None, help="Default: $POLYGLOT_ADAPTERS_HOME/kg."
)


@click.group(name="kg")
def kg_group() -> None:
    """Multilingual knowledge graphs: the CLDR MLKG and PyKEEN's Nations, Kinships, UMLS."""


@kg_group.command("build")
@_KG_OPTION
@_CACHE_OPTION
def build_command(name: str, cache_dir: Path | None) -> None:
    """Build a knowledge graph from its sources into the cache (replacing an earlier build)."""
    from ..kg import build_kg

    click.echo(f"built {build_kg(name, cache_dir=cache_dir)}")


@kg_group.command("stats")
@_KG_OPTION
@_CACHE_OPTION
@click.option("--languages", default="20", show_default=True, help="How many languages to list, or 'all'.")
def stats_command(name: str, cache_dir: Path | None, languages: str) -> None:
    """Print entities, triples per split and relation, and labels per language as a table."""
    from ..kg import format_statistics, load_kg

    if languages != "all" and not languages.isdigit():
        raise click.BadParameter(f"{languages!r} is not a number or 'all'", param_hint="--languages")
    shown = None if languages == "all" else int(languages)
    click.echo(format_statistics(load_kg(name, cache_dir=cache_dir).statistics(), languages=shown))
