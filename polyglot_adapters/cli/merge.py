"""``polyglot-adapters merge`` and ``convert``: thin commands over ``merging`` and ``convert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["convert_command", "merge_group"]

_HOWS = {"linear": "linear", "ties": "ties", "dare": "dare", "dare-ties": "dare_ties"}


class _DefaultGroup(click.Group):
    """A group whose arguments go to its ``adapters`` command unless they name another command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["adapters", *args]
        return super().parse_args(ctx, args)


def _rank(value: str | None) -> int | str | None:
    if value is None or value in ("max", "sum", "full"):
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer, 'max', 'sum' or 'full'", param_hint="--rank") from None


def _weights(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(w) for w in value.split(",")]
    except ValueError:
        message = f"{value!r} is not a comma-separated list of numbers"
        raise click.BadParameter(message, param_hint="--weights") from None


def _echo_written(path: Path, summary: dict[str, Any]) -> None:
    click.echo(f"wrote {path}")
    for key, value in summary.items():
        click.echo(f"  {key}: {value}")


@click.group(cls=_DefaultGroup, name="merge", invoke_without_command=False)
def merge_group() -> None:
    """Merge adapters: `merge [adapters] --method ... SRC... --out DST`, or `merge per-language`."""


@merge_group.command("adapters")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--method",
    "how",
    type=click.Choice([*_HOWS, "checkpoint-average"]),
    default="linear",
    show_default=True,
    help="linear (weighted sum), ties, dare, dare-ties, or checkpoint-average (one adapter over checkpoints).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output adapter directory.")
@click.option("--weights", default=None, help="Comma-separated weights, one per source (average: must sum to 1).")
@click.option("--ema", type=float, default=None, help="checkpoint-average: EMA decay over the sources, oldest first.")
@click.option("--density", type=float, default=1.0, show_default=True, help="Fraction kept by TIES/DARE.")
@click.option("--sign", type=click.Choice(["total", "frequency"]), default="total", show_default=True)
@click.option("--rank", default=None, help="LoRA result rank: an integer, max, sum (exact linear) or full.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of DARE's random masks.")
@click.option("--name", default=None, help="Name of the merged adapter (default: merged / the checkpoint's).")
def merge_adapters_command(
    sources: tuple[Path, ...],
    how: str,
    out: Path,
    weights: str | None,
    ema: float | None,
    density: float,
    sign: str,
    rank: str | None,
    seed: int,
    name: str | None,
) -> None:
    """Merge saved adapters (or sparse diffs) SOURCES into one directory --out (nothing is written on error)."""
    from ..merging import MergeError, average_checkpoints, merge_adapters
    from ..methods.sparse_ft import average_diffs, is_sparse_diff, merge_diffs

    if how == "checkpoint-average" and density != 1.0:
        raise MergeError("--density does not apply to checkpoint-average")
    if how != "checkpoint-average" and ema is not None:
        raise MergeError("--ema applies to checkpoint-average only")
    kinds = [is_sparse_diff(src) for src in sources]
    if any(kinds):
        if not all(kinds):
            _refuse_mix(sources, kinds)
        if rank is not None:
            raise MergeError("--rank applies to LoRA merges; sparse diffs merge over the union of their positions")
        if how == "checkpoint-average":
            diff = average_diffs(list(sources), weights=_weights(weights), ema=ema)
        else:
            diff = merge_diffs(
                list(sources), how=_HOWS[how], weights=_weights(weights), density=density, sign_method=sign, seed=seed
            )
        path = diff.save(out, name or (_first_name(sources) if how == "checkpoint-average" else "merged"))
        _echo_written(path, {"method": "sparse_ft", "merge": how, "sources": len(sources), "entries": diff.nnz})
        return
    if how == "checkpoint-average":
        if rank is not None:
            raise MergeError("--rank does not apply to checkpoint-average")
        merged = average_checkpoints(list(sources), weights=_weights(weights), ema=ema, name=name)
    else:
        merged = merge_adapters(
            list(sources),
            how=_HOWS[how],
            weights=_weights(weights),
            density=density,
            sign_method=sign,
            rank=_rank(rank),
            seed=seed,
            name=name or "merged",
        )
    path = merged.save(out)
    _echo_written(path, {"method": merged.config.method, "merge": how, "sources": len(sources)})


def _first_name(sources: tuple[Path, ...]) -> str:
    from ..io import read_meta

    return read_meta(sources[0])["name"]


def _refuse_mix(sources: tuple[Path, ...], kinds: list[bool]) -> None:
    """Raises a one-line error for sparse diffs mixed with adapters (a missing or broken source reports itself)."""
    from ..io import read_meta
    from ..merging import MergeError

    other = next(src for src, diff in zip(sources, kinds, strict=True) if not diff)
    method = read_meta(other)["method"]
    diff = next(src for src, diff in zip(sources, kinds, strict=True) if diff)
    raise MergeError(
        f"{diff} is a sparse diff but {other} is a {method} adapter; sparse diffs merge only with sparse diffs"
    )


@merge_group.command("per-language")
@click.option("--metrics", "log", type=click.Path(path_type=Path), required=True, help="JSON-lines metrics log.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output bundle directory.")
@click.option("--metric", required=True, help="Dev metric to rank checkpoints by (e.g. valid_wer).")
@click.option("--mode", type=click.Choice(["min", "max"]), default="min", show_default=True)
@click.option(
    "--checkpoints",
    default=None,
    help="Template naming a step's adapter of a language, relative to the log, e.g. 'step-{step}/{language}' "
    "(for logs with '<metric>/<language>' keys).",
)
def merge_per_language_command(log: Path, out: Path, metric: str, mode: str, checkpoints: str | None) -> None:
    """Pick each language's best checkpoint from a metrics log and write them as one bundle."""
    from ..merging import merge_per_language

    selections = merge_per_language(log, out, metric=metric, mode=mode, checkpoints=checkpoints)
    click.echo(f"wrote {out}")
    for sel in selections.values():
        step = "" if sel.step is None else f" (step {sel.step})"
        click.echo(f"  {sel.language}: {sel.metric}={sel.value:g}{step} from {sel.checkpoint}")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option(
    "--from",
    "source_format",
    type=click.Choice(["peft", "adapters", "composable-sft", "polyglot"]),
    default=None,
    help="Source format; checked against the contents (default: detected from them).",
)
@click.option("--to", "target", type=click.Choice(["polyglot", "peft"]), default="polyglot", show_default=True)
@click.option(
    "--base",
    required=True,
    help="The base model: a local transformers directory (config.json; weights are not read) or 'default'.",
)
@click.option("--name", default=None, help="Adapter name (default: the source directory's name).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def convert_command(
    src: Path, dst: Path, source_format: str | None, target: str, base: str, name: str | None, as_json: bool
) -> None:
    """Convert SRC (PEFT LoRA, AdapterHub bottleneck, composable-sft diff, or ours) into DST."""
    from ..convert import convert, detect_format, host_from_config

    if base == "default":
        from ..models import default_base

        host, _ = default_base()  # built into the cache on first use
    else:
        host = host_from_config(base)
    detected = detect_format(src).format
    path = convert(src, dst, host=host, to=target, source_format=source_format, name=name)
    summary = {"from": detected, "to": target, "out": str(path)}
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(f"converted {src} ({detected}) -> {path} ({target})")
