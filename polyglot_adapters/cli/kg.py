"""``polyglot-adapters kg``: thin commands over :mod:`polyglot_adapters.kg` (build, stats, eval)."""

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


@kg_group.command("eval")
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="A train kg-adapters run.")
@_KG_OPTION
@click.option("--model", default="default", show_default=True, help="The base the run was trained on.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="[default: RUN/eval]")
@click.option("--alignment-languages", default=None, help="Alignment targets, comma-separated  [default: 12].")
@click.option("--link-languages", default=None, help="Link-prediction label languages  [default: 16].")
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option(
    "--global-inference",
    default="sinkhorn",
    show_default=True,
    help="Alignment inferences reported beside nearest neighbour, comma-separated: csls, sinkhorn, or none.",
)
@click.option("--device", default="cpu", show_default=True)
def eval_command(
    run_dir: Path,
    name: str,
    model: str,
    out: Path | None,
    alignment_languages: str | None,
    link_languages: str | None,
    split: str,
    global_inference: str,
    device: str,
) -> None:
    """Entity alignment and filtered link prediction per language for a KG-adapter run, beside baselines.

    Writes OUT/results.json, OUT/results.md and OUT/hits_at_1.png (alignment Hits@1 per language).
    """
    from ..errors import ConfigError
    from ..io import atomic_write_bytes, atomic_write_json
    from ..kg import load_kg
    from ..kg.adapters import load_kg_run
    from ..kg.alignment import ALIGNMENT_INFERENCE
    from ..kg.plot import alignment_plot
    from ..kg.suite import ALIGNMENT_TARGET_LANGUAGES, LINK_LANGUAGES, evaluate_kg_adapters, results_markdown
    from ..models import load_base

    def codes(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
        return default if value is None else tuple(c.strip() for c in value.split(",") if c.strip())

    inferences = () if global_inference.strip() == "none" else codes(global_inference, ())
    unknown = sorted(set(inferences) - set(ALIGNMENT_INFERENCE[1:]))
    if unknown:
        raise ConfigError(f"--global-inference: unknown inference {unknown}; choose csls, sinkhorn or none")

    kg = load_kg(name)
    host, tokenizer = load_base(model)
    am, report = load_kg_run(host.to(device), run_dir)
    if report["kg"] != kg.name:
        raise click.BadParameter(f"the run was trained on {report['kg']!r}, not {kg.name!r}", param_hint="--kg")
    results = evaluate_kg_adapters(
        am,
        tokenizer,
        kg,
        report,
        run_dir=run_dir,
        alignment_languages=codes(alignment_languages, ALIGNMENT_TARGET_LANGUAGES if name == "cldr" else ()),
        link_languages=codes(link_languages, LINK_LANGUAGES if name == "cldr" else ("en",)),
        split=split,
        global_inference=inferences,
        log=lambda line: click.echo(line, err=True),
    )
    target = out if out is not None else run_dir / "eval"
    target.mkdir(parents=True, exist_ok=True)
    lines = results_markdown(results)
    atomic_write_json(target / "results.json", results)
    atomic_write_bytes(target / "results.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(target / "hits_at_1.png", alignment_plot(results))
    click.echo("\n".join(lines))
    click.echo(f"written to {target}")
