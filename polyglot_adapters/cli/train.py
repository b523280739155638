"""``polyglot-adapters train ...``: training commands (thin layers over :mod:`polyglot_adapters.training`)."""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["train"]


@click.group()
def train() -> None:
    """Train adapters."""


@train.command("language-adapter")
@click.option("--lang", "language", required=True, help="UDHR language: BCP-47, ISO 639-3 code or name (sw, amh).")
@click.option("--model", default="default", show_default=True, help="'default' or a local *ForMaskedLM directory.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (resumes if it holds a checkpoint)  [default: out/language-adapters/LANG]",
)
@click.option("--steps", type=click.IntRange(1), default=100, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Windows per step.")
@click.option("--grad-accumulation", type=click.IntRange(1), default=1, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(0), default=None, help="[default: steps / 10]")
@click.option("--eval-every", type=click.IntRange(0), default=None, help="[default: steps / 4]")
@click.option("--save-every", type=click.IntRange(0), default=None, help="[default: --eval-every]")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--reduction-factor", type=click.FloatRange(min=0, min_open=True), default=None, help="[default: 16]")
@click.option("--invertible/--no-invertible", default=True, show_default=True, help="Invertible embedding adapter.")
@click.option("--max-length", type=click.IntRange(3), default=128, show_default=True, help="Tokens per window.")
@click.option(
    "--eval-rounds", type=click.IntRange(1), default=20, show_default=True, help="Maskings per held-out text."
)
def language_adapter(
    language: str,
    model: str,
    out: Path | None,
    steps: int,
    batch_size: int,
    grad_accumulation: int,
    lr: float,
    warmup_steps: int | None,
    eval_every: int | None,
    save_every: int | None,
    precision: str,
    seed: int,
    reduction_factor: float | None,
    invertible: bool,
    max_length: int,
    eval_rounds: int,
) -> None:
    """Train a MAD-X language adapter with masked-LM loss on a language's UDHR text.

    Prints held-out (valid/test articles) masked-LM loss and top-1 accuracy before and after;
    writes OUT/adapter/ and OUT/report.json.
    """
    from ..data import resolve_language
    from ..training.language_adapter import (
        DEFAULT_REDUCTION_FACTOR,
        language_adapter_config,
        language_adapter_train_config,
        load_masked_lm,
        report_lines,
        train_language_adapter,
    )

    lang = resolve_language(language)  # a bad code fails before the model loads
    config = language_adapter_train_config(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        grad_accumulation=grad_accumulation,
        warmup_steps=warmup_steps,
        eval_every=eval_every,
        save_every=save_every,
        precision=precision,
        seed=seed,
    )
    adapter = language_adapter_config(
        reduction_factor=reduction_factor if reduction_factor is not None else DEFAULT_REDUCTION_FACTOR,
        invertible=invertible,
    )
    host, tokenizer = load_masked_lm(model)
    result = train_language_adapter(
        host,
        tokenizer,
        lang,
        out_dir=out if out is not None else Path("out", "language-adapters", lang.bcp47),
        config=adapter,
        train_config=config,
        max_length=max_length,
        eval_rounds=eval_rounds,
        model_name=model,
        log=lambda line: click.echo(line, err=True),
    )
    if result.report is not None:  # rank 0 (or the only process)
        for line in report_lines(result.report, result.adapter_dir):
            click.echo(line)
