"""``polyglot-adapters``: thin commands over the library; errors become one line and exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import PolyglotAdaptersError
from .asr import asr_group
from .code import code_group, ner_adapter_command
from .kg import kg_group
from .merge import convert_command, merge_group
from .probe import probe_command
from .train import train

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="polyglot-adapters")
def cli() -> None:
    """Composable adapters for frozen multilingual, speech and code models."""


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def info(directory: Path, as_json: bool) -> None:
    """Describe a saved adapter: method, config, sizes, parameter count, base fingerprint."""
    from ..summary import describe_adapter

    summary = describe_adapter(directory)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(
                f"{k}=({len(v)} entries)" if isinstance(v, dict) else f"{k}={v}" for k, v in value.items()
            )
        click.echo(f"{key:<{width}}  {value}")


@cli.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="[default: out/quickstart; with --lang: out/demo/LANG; smoke: a temporary one]",
)
@click.option(
    "--steps",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Training steps [default: 150; --lang: 100; smoke: 60]",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--lang", "language", default=None, help="Train a language adapter for this language instead.")
@click.option("--languages", default="en,de,sw,yo", show_default=True, help="Languages the quickstart probes.")
@click.option("--smoke", is_flag=True, help="The seconds-long smoke example on a tiny random BERT instead.")
def demo(out: Path | None, steps: int | None, seed: int, language: str | None, languages: str, smoke: bool) -> None:
    """The quickstart: probe the default model for facts, train a KG adapter for a few minutes, probe again.

    With --lang L: train a language adapter for L and show held-out masked-LM loss before/after.
    With --smoke: add adapters to a tiny BERT, train, save, reload, compare outputs.
    """
    from ..demo import DEMO_STEPS, QUICKSTART_STEPS, run_demo, run_language_demo, run_quickstart

    if smoke:
        run_demo(out=out, steps=steps or 60, seed=seed, echo=click.echo)
    elif language is not None:
        run_language_demo(language=language, steps=steps or DEMO_STEPS, out=out, seed=seed, echo=click.echo)
    else:
        codes = tuple(c.strip() for c in languages.split(",") if c.strip())
        if not codes:
            raise click.BadParameter("give at least one language code", param_hint="--languages")
        run_quickstart(languages=codes, steps=steps or QUICKSTART_STEPS, out=out, seed=seed, echo=click.echo)


cli.add_command(train)
cli.add_command(kg_group)
cli.add_command(asr_group)
cli.add_command(merge_group)
cli.add_command(convert_command)
cli.add_command(code_group)
cli.add_command(probe_command)
train.add_command(ner_adapter_command)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns library errors into a one-line message and exit code 1."""
    try:
        cli.main(args=argv, prog_name="polyglot-adapters", standalone_mode=False)
    except PolyglotAdaptersError as err:
        click.echo(f"error: {err}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as err:
        err.show()
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
