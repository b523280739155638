"""``polyglot-adapters code ...`` and ``train ner-adapter``: thin commands over :mod:`polyglot_adapters.code`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["code_group", "ner_adapter_command"]


def _corpus_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--root", "roots", multiple=True, type=click.Path(path_type=Path), help="Another directory of Python files."
    )(function)
    function = click.option(
        "--package", "packages", multiple=True, help="An installed top-level package to add (repeatable)."
    )(function)
    return click.option("--stdlib/--no-stdlib", default=True, show_default=True, help="Include the standard library.")(
        function
    )


def _corpus(stdlib: bool, packages: tuple[str, ...], roots: tuple[Path, ...]) -> Any:
    from ..code.corpus import load_code_corpus

    return load_code_corpus(stdlib=stdlib, packages=packages, roots=roots)


def _train_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--steps", type=click.IntRange(1), default=300, show_default=True),
            click.option(
                "--budget-seconds",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Instead of --steps: as many steps as fit in this many seconds here (timed trial).",
            ),
            click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True),
            click.option(
                "--eval-every",
                type=click.IntRange(0),
                default=None,
                help="[default: a quarter of the run; 0: at the end]",
            ),
            click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
            click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True),
            click.option("--seed", type=click.IntRange(0), default=0, show_default=True),
            click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto."),
        ]
    ):
        function = option(function)
    return function


def _train_config(
    steps: int, batch_size: int, lr: float, precision: str, seed: int, eval_every: int | None = None
) -> Any:
    from ..training import TrainConfig

    quarter = max(1, steps // 4)
    return TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=steps // 10,
        eval_every=quarter if eval_every is None else eval_every,
        save_every=quarter,
        precision=precision,
        seed=seed,
    )


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise click.BadParameter(f"{name!r} is not a device; use cpu, cuda or auto", param_hint="--device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available here; use --device cpu", param_hint="--device")
    return device


def _say(line: str) -> None:
    click.echo(line, err=True)


@click.group(name="code")
def code_group() -> None:
    """Code: token types of Python source, the code corpus, a CodeBERT-style base, code search."""


@code_group.command("label")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per token instead of columns.")
def label_command(file: Path, as_json: bool) -> None:
    """Print each token of a Python FILE with its type (keyword, call, parameter, docstring, ...)."""
    from ..code import label_source, typed_tokens

    labelled = label_source(file.read_bytes(), name=str(file))
    for line, column, kind, text in typed_tokens(labelled):
        if as_json:
            click.echo(json.dumps({"line": line, "column": column, "type": kind, "text": text}, ensure_ascii=False))
        else:
            click.echo(f"{line}:{column}\t{kind}\t{text}")


@code_group.command("corpus")
@_corpus_options
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def corpus_command(stdlib: bool, packages: tuple[str, ...], roots: tuple[Path, ...], as_json: bool) -> None:
    """Statistics of the code corpus: files, characters, modules and documented functions per split; skipped files."""
    stats = _corpus(stdlib, packages, roots).statistics()
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
        return
    click.echo(f"Python {stats['python']}: {stats['files']} files, {stats['characters']:,} characters")
    for split, row in stats["splits"].items():
        click.echo(
            f"  {split:<6}{row['files']:>6} files {row['characters']:>12,} chars {row['top_level_modules']:>5} "
            f"top-level modules {row['functions']:>6} documented functions"
        )
    skipped = ", ".join(f"{k} {v}" for k, v in stats["skipped"].items()) or "none"
    click.echo(f"  skipped: {skipped}")


@code_group.command("throughput")
@_corpus_options
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True)
def throughput_command(stdlib: bool, packages: tuple[str, ...], roots: tuple[Path, ...], seconds: float) -> None:
    """Labelling throughput: source MB labelled per second of one core's CPU time."""
    from ..code.report import labelling_throughput

    result = labelling_throughput(_corpus(stdlib, packages, roots), min_seconds=seconds)
    click.echo(
        f"{result['mb_per_s']:.2f} MB/s ({result['bytes'] / 1e6:.1f} MB in {result['files']} files, "
        f"{result['cpu_seconds']:.1f} s CPU)"
    )


@code_group.command("pretrain")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory; model in OUT/model.")
@click.option(
    "--init",
    default="scratch",
    show_default=True,
    help="'scratch' (a new RoBERTa with a BPE tokenizer trained on the corpus), 'default' (continue the default "
    "multilingual base) or a local *ForMaskedLM directory to continue.",
)
@click.option("--preset", type=click.Choice(["tiny", "small", "medium", "base"]), default="small", show_default=True)
@click.option("--vocab-size", type=click.IntRange(261), default=8192, show_default=True)
@click.option("--max-length", type=click.IntRange(3), default=128, show_default=True)
@click.option("--eval-windows", type=click.IntRange(1), default=256, show_default=True, help="Held-out windows/split.")
@_train_options
@_corpus_options
def pretrain_command(
    out: Path,
    init: str,
    preset: str,
    vocab_size: int,
    max_length: int,
    eval_windows: int,
    steps: int,
    budget_seconds: float | None,
    batch_size: int,
    eval_every: int | None,
    lr: float,
    precision: str,
    seed: int,
    device: str,
    stdlib: bool,
    packages: tuple[str, ...],
    roots: tuple[Path, ...],
) -> None:
    """Make a CodeBERT-style base: masked-LM training on the code corpus (every parameter)."""
    from ..code.encoder import code_encoder, load_code_base, pretrain_code_base, train_code_tokenizer

    where = _device(device)
    corpus = _corpus(stdlib, packages, roots)
    if init == "scratch":
        tokenizer = train_code_tokenizer((f.text for f in corpus.split("train")), vocab_size=vocab_size)
        model = code_encoder(tokenizer, preset=preset, max_positions=max(512, max_length), seed=seed)
    else:
        model, tokenizer = load_code_base(init)
    report = pretrain_code_base(
        model.to(where),
        tokenizer,
        corpus,
        out_dir=out,
        train_config=_train_config(steps, batch_size, lr, precision, seed, eval_every),
        max_length=max_length,
        eval_windows=eval_windows,
        budget_seconds=budget_seconds,
        log=_say,
    )
    click.echo(
        f"valid masked-LM loss {report['before']['valid_loss']:.3f} -> {report['after']['valid_loss']:.3f}, "
        f"top-1 {100 * report['after']['valid_accuracy']:.1f}%; model saved to {out / 'model'}"
    )


@click.command("ner-adapter")
@click.option("--model", required=True, help="A code base directory (from 'code pretrain' or a CodeBERT checkpoint).")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Run directory; adapter + head: OUT/adapter."
)
@click.option("--head-only", is_flag=True, help="Train the head alone on the frozen encoder (the baseline).")
@click.option("--reduction-factor", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True)
@click.option("--max-length", type=click.IntRange(3), default=256, show_default=True)
@click.option("--overlap", type=click.IntRange(0), default=32, show_default=True, help="Tokens shared by windows.")
@click.option("--eval-files", type=click.IntRange(1), default=60, show_default=True, help="Held-out files per split.")
@_train_options
@_corpus_options
def ner_adapter_command(
    model: str,
    out: Path,
    head_only: bool,
    reduction_factor: float,
    max_length: int,
    overlap: int,
    eval_files: int,
    steps: int,
    budget_seconds: float | None,
    batch_size: int,
    eval_every: int | None,
    lr: float,
    precision: str,
    seed: int,
    device: str,
    stdlib: bool,
    packages: tuple[str, ...],
    roots: tuple[Path, ...],
) -> None:
    """Train a NER adapter (+ token-type head) with Token Type Classification on a frozen code encoder."""
    from ..code.encoder import load_code_base
    from ..code.ttc import ner_adapter_config, train_ner_adapter

    where = _device(device)
    host, tokenizer = load_code_base(model)
    result = train_ner_adapter(
        host.to(where),
        tokenizer,
        _corpus(stdlib, packages, roots),
        out_dir=out,
        config=ner_adapter_config(reduction_factor=reduction_factor),
        train_config=_train_config(steps, batch_size, lr, precision, seed, eval_every),
        name=None if head_only else "ner",
        max_length=max_length,
        overlap=overlap,
        eval_files=eval_files,
        budget_seconds=budget_seconds,
        log=_say,
    )
    test = result.report["test"]
    click.echo(
        f"held-out test: accuracy {100 * test['accuracy']:.2f}%, macro-F1 {100 * test['macro_f1']:.2f} "
        f"over {test['tokens']:,} tokens; saved to {result.directory}"
    )


@code_group.command("search")
@click.option("--model", required=True, help="A code base directory.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--setup", type=click.Choice(["zero-shot", "full", "task", "ner+task", "gate"]), required=True)
@click.option("--ner-adapter", type=click.Path(path_type=Path), default=None, help="OUT/adapter of train ner-adapter.")
@click.option(
    "--ner-sides",
    type=click.Choice(["both", "code"]),
    default="both",
    show_default=True,
    help="Which side the NER adapter encodes (code: queries use the task adapter alone).",
)
@click.option("--ner-layers", default=None, help="Blocks of the NER adapter to use, e.g. '0-5' [default: all].")
@click.option(
    "--tune-ner/--frozen-ner",
    default=False,
    show_default=True,
    help="Train the NER adapter too (from its token-type weights) in ner+task and gate.",
)
@click.option(
    "--ner-prior",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="gate: the gate's starting weight on the NER branch (the task branch gets the rest) [default: 0.5].",
)
@click.option("--reduction-factor", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True)
@click.option("--code-length", type=click.IntRange(3), default=256, show_default=True)
@click.option("--query-length", type=click.IntRange(3), default=64, show_default=True)
@_train_options
@_corpus_options
def search_command(
    model: str,
    out: Path,
    setup: str,
    ner_adapter: Path | None,
    ner_sides: str,
    ner_layers: str | None,
    tune_ner: bool,
    ner_prior: float | None,
    reduction_factor: float,
    code_length: int,
    query_length: int,
    steps: int,
    budget_seconds: float | None,
    batch_size: int,
    eval_every: int | None,
    lr: float,
    precision: str,
    seed: int,
    device: str,
    stdlib: bool,
    packages: tuple[str, ...],
    roots: tuple[Path, ...],
) -> None:
    """Code search (docstring -> function): train one setup and report MRR over all test functions."""
    from ..code.encoder import load_code_base
    from ..code.search import task_adapter_config, train_code_search
    from ..training.language_adapter import parse_layers

    layers = parse_layers(ner_layers) if ner_layers is not None else None  # a bad spec fails before loading
    where = _device(device)
    host, tokenizer = load_code_base(model)
    report = train_code_search(
        host.to(where),
        tokenizer,
        _corpus(stdlib, packages, roots),
        setup=setup,
        out_dir=out,
        ner_adapter=ner_adapter,
        ner_sides=ner_sides,
        ner_layers=layers,
        tune_ner=tune_ner,
        ner_prior=ner_prior,
        config=task_adapter_config(reduction_factor=reduction_factor),
        train_config=_train_config(steps, batch_size, lr, precision, seed, eval_every),
        query_length=query_length,
        code_length=code_length,
        budget_seconds=budget_seconds,
        log=_say,
    )
    click.echo(
        f"{setup}: test MRR {report['test']['mrr']:.4f} over {report['test']['candidates']} functions, "
        f"{report['trainable_parameters']:,} trainable ({report['percent_of_full']:.2f}% of full fine-tuning)"
    )


@code_group.command("report")
@click.argument("runs", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report_command(runs: Path) -> None:
    """Markdown tables from a run tree (RUNS/base, RUNS/ner, RUNS/ner-head-only, RUNS/search/SETUP)."""
    from ..code.report import result_tables

    click.echo(result_tables(runs) or f"no reports under {runs}")


@code_group.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["valid", "test"]), default="test", show_default=True)
@click.option("--replicates", type=click.IntRange(1), default=10_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def compare_command(runs: tuple[Path, ...], split: str, replicates: int, seed: int) -> None:
    """Paired bootstrap of the MRR difference between code-search runs: FIRST SECOND [FIRST2 SECOND2 ...].

    One pair: SECOND minus FIRST over the same queries. Several pairs (one per training seed): the
    mean difference, with the query-bootstrap interval and a t interval over the seeds.
    """
    from ..code.report import compare_seeds

    if len(runs) % 2:
        raise click.BadParameter(
            f"give the runs in pairs (FIRST SECOND, one pair per seed); got {len(runs)}", param_hint="RUNS"
        )
    pairs = list(zip(runs[::2], runs[1::2], strict=True))
    r = compare_seeds(pairs, split=split, replicates=replicates, seed=seed)
    for row in r["pairs"] if len(pairs) > 1 else []:
        click.echo(
            f"{row['first']} {row['first_mrr']:.4f}, {row['second']} {row['second_mrr']:.4f}: "
            f"difference {row['difference']:+.4f}"
        )
    first, second = ("the first runs", "the second runs") if len(pairs) > 1 else runs
    mean = " (mean over the pairs)" if len(pairs) > 1 else ""
    click.echo(
        f"{split} MRR over {r['queries']} queries{mean}: {first} {r['first_mrr']:.4f}, "
        f"{second} {r['second_mrr']:.4f}; "
        f"difference {r['difference']:+.4f} (95% interval {r['low']:+.4f} to {r['high']:+.4f}), "
        f"second better in {100 * r['second_better']:.1f}% of {replicates:,} paired resamples"
    )
    if r["seed_sd"] is not None:
        click.echo(
            f"over the {len(pairs)} seeds: standard deviation {r['seed_sd']:.4f}, "
            f"95% t interval {r['seed_low']:+.4f} to {r['seed_high']:+.4f}"
        )
