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
@click.option(
    "--layers",
    default=None,
    help="Blocks that get an adapter, e.g. '6-11' or '0,2,4'  [default: all]. Leaving out the lowest blocks "
    "(with --no-invertible) trains faster.",
)
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
    layers: str | None,
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
        parse_layers,
        report_lines,
        train_language_adapter,
    )

    lang = resolve_language(language)  # a bad code fails before the model loads
    blocks = parse_layers(layers) if layers is not None else None
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
        layers=blocks,
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


def _languages(value: str) -> tuple[str, ...]:
    return tuple(code.strip() for code in value.split(",") if code.strip())


@train.command("kg-adapters")
@click.option(
    "--kg", "kg_name", type=click.Choice(["cldr", "nations", "kinships", "umls"]), default="cldr", show_default=True
)
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="'default', 'default-mlm' (the base of language adapters trained with --model default) or a local "
    "transformers directory.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("out", "kg-adapters"),
    show_default=True,
    help="Run directory.",
)
@click.option(
    "--objectives", default=None, help="Adapters to train, from ep, tp, es, ts  [default: all four; tp off CLDR]."
)
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="Steps per adapter.")
@click.option("--batch-size", type=click.IntRange(2), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--hard-negatives", type=click.IntRange(0), default=2, show_default=True, help="Per example and step.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--reduction-factor", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True)
@click.option("--layers", default=None, help="Blocks that get adapters, e.g. '6-11' (faster)  [default: all].")
@click.option(
    "--fuse-steps", type=click.IntRange(0), default=0, show_default=True, help="Gate fusion steps (0: none)."
)
@click.option(
    "--typed-entities",
    is_flag=True,
    help="EP/TP tag entities with their kind ('language: Arabic'); evaluation then does the same for every system.",
)
@click.option("--pivot", default="en", show_default=True, help="Language every alignment pair starts from.")
@click.option("--alignment-languages", default=None, help="EP targets, comma-separated  [default: 12 languages].")
@click.option("--sentence-alignment-languages", default=None, help="ES targets  [default: de,fr,es,sw].")
@click.option("--triple-languages", default=None, help="TP label languages  [default: en,de,fr,es,ru,zh,ja,ar,hi].")
@click.option("--sentence-triple-languages", default=None, help="TS label languages  [default: en,de,fr,es].")
@click.option("--language-adapter", type=click.Path(path_type=Path), default=None, help="Stack KG adapters on it.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def kg_adapters(
    kg_name: str,
    model: str,
    out: Path,
    objectives: str | None,
    steps: int,
    batch_size: int,
    lr: float,
    hard_negatives: int,
    temperature: float,
    reduction_factor: float,
    layers: str | None,
    fuse_steps: int,
    typed_entities: bool,
    pivot: str,
    alignment_languages: str | None,
    sentence_alignment_languages: str | None,
    triple_languages: str | None,
    sentence_triple_languages: str | None,
    language_adapter: Path | None,
    device: str,
    precision: str,
    seed: int,
) -> None:
    """Train the MLKG adapters (EP, TP, ES, TS; optionally a fusion gate) on a knowledge graph.

    Writes OUT/run.json, OUT/<objective>/adapter/ per adapter and OUT/report.json.
    """
    import dataclasses

    from ..kg import load_kg
    from ..kg.adapters import KGAdapterSettings, train_kg_adapters
    from ..models import load_base
    from ..training.language_adapter import parse_layers

    lists = {
        "alignment_languages": alignment_languages,
        "sentence_alignment_languages": sentence_alignment_languages,
        "triple_languages": triple_languages,
        "sentence_triple_languages": sentence_triple_languages,
    }
    if kg_name != "cldr":  # PyKEEN's datasets: English entity names only
        objectives = objectives or "tp"
        triple_languages = triple_languages or "en"
    settings = KGAdapterSettings(
        objectives=_languages(objectives or "ep,tp,es,ts"),
        pivot=pivot,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        hard_negatives=hard_negatives,
        temperature=temperature,
        reduction_factor=reduction_factor,
        layers=parse_layers(layers) if layers is not None else None,
        fuse_steps=fuse_steps,
        typed_entities=typed_entities,
        seed=seed,
    )
    settings = dataclasses.replace(settings, **{k: _languages(v) for k, v in lists.items() if v is not None})
    kg = load_kg(kg_name)
    host, tokenizer = load_base(model)
    result = train_kg_adapters(
        host.to(device),
        tokenizer,
        kg,
        settings,
        out_dir=out,
        language_adapter=language_adapter,
        precision=precision,
        log=lambda line: click.echo(line, err=True),
    )
    for name, run in result.report["runs"].items():
        click.echo(
            f"{name}: loss {run['first_loss']:.3f} -> {run['last_loss']:.3f}, {run['seconds']:.0f} s, "
            f"adapter in {result.adapter_dirs[name]}"
        )
    click.echo(f"all adapters: {result.report['train_seconds']:.0f} s of training")
