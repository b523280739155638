"""``polyglot-adapters asr``: speech data, training, evaluation and streaming decoding (thin over ``asr``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

__all__ = ["asr_group"]

_DATA_OPTION = click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Feature directory written by `asr data` (tokenizer.model + <split>.safetensors).",
)
_DEVICE_OPTION = click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cuda.")
_BEAM_OPTION = click.option(
    "--beam-width",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="1: greedy search; more: beam search (torchaudio's RNNTBeamSearch), one utterance at a time.",
)
_PRECISION_OPTION = click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="bf16: forward and loss under bfloat16 autocast (the transducer and CTC losses stay in float32).",
)
_GROUP_OPTION = click.option(
    "--group-by-length/--no-group-by-length",
    default=True,
    show_default=True,
    help="Batch utterances of similar duration (less padding: 2.1x faster training on the recipe's corpus).",
)


def _adapters(pairs: tuple[str, ...], hint: str = "--adapter") -> dict[str, str]:
    out = {}
    for pair in pairs:
        language, sep, directory = pair.partition("=")
        if not sep or not language or not directory:
            raise click.BadParameter(f"{pair!r} is not LANG=DIR", param_hint=hint)
        out[language] = directory
    return out


def _write_json(path: Path, data: dict) -> None:
    from ..io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data, ensure_ascii=False)


@click.group(name="asr")
def asr_group() -> None:
    """Streaming multilingual speech recognition with language-dependent adapters."""


@asr_group.command("synth")
@click.argument("text")
@click.option("--lang", "language", required=True, help="Language (an espeak-ng voice: sw, am, om, tn, af, en, ...).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="WAV file to write (16 kHz mono).")
@click.option("--variant", default="", help="Voice variant, e.g. +f2.")
@click.option("--speed", type=click.IntRange(80, 450), default=160, show_default=True)
@click.option("--pitch", type=click.IntRange(0, 99), default=50, show_default=True)
def synth_command(text: str, language: str, out: Path, variant: str, speed: int, pitch: int) -> None:
    """Speak TEXT with espeak-ng into a 16 kHz WAV (a test input for `asr stream`)."""
    from ..asr import SAMPLE_RATE, synthesize, write_audio

    wave = synthesize(text, language, variant=variant, speed=speed, pitch=pitch)
    write_audio(out, wave)
    click.echo(f"wrote {out} ({wave.numel() / SAMPLE_RATE:.2f} s)")


@asr_group.command("data")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Corpus directory (WAVs + manifests).")
@click.option("--features", type=click.Path(path_type=Path), default=None, help="[default: OUT/features]")
@click.option("--head-renditions", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--tail-labelled", type=click.IntRange(1, 10_000), default=40, show_default=True)
@click.option("--tail-renditions", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--test-renditions", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--unlabelled/--no-unlabelled", default=False, show_default=True)
@click.option("--vocab-size", type=click.IntRange(8, 8192), default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def data_command(
    out: Path,
    features: Path | None,
    head_renditions: int,
    tail_labelled: int,
    tail_renditions: int,
    test_renditions: int,
    unlabelled: bool,
    vocab_size: int,
    seed: int,
) -> None:
    """Synthesise the multilingual corpus (UDHR text, espeak-ng voices) and write its feature packs."""
    from ..asr.recipe import load_corpus, make_corpus

    make_corpus(
        out,
        head_renditions=head_renditions,
        tail_labelled=tail_labelled,
        tail_renditions=tail_renditions,
        test_renditions=test_renditions,
        unlabelled=unlabelled,
        seed=seed,
    )
    data = load_corpus(out, vocab_size=vocab_size)
    target = data.save(features or out / "features")
    sizes = ", ".join(f"{name} {len(examples)}" for name, examples in data.splits.items())
    click.echo(f"wrote {target} ({sizes} utterances; {data.tokenizer.num_symbols} symbols)")


@asr_group.command("train-base")
@_DATA_OPTION
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--preset", type=click.Choice(["tiny", "cpu", "small"]), default="cpu", show_default=True)
@click.option("--steps", type=click.IntRange(1, 1_000_000), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--eval-every", type=click.IntRange(1, 1_000_000), default=250, show_default=True)
@click.option(
    "--ctc-weight",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.3,
    show_default=True,
    help="Share of the auxiliary CTC loss on the encoder (0 = RNN-T alone).",
)
@click.option(
    "--cascade-layers",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Full-context layers of a second-pass encoder over the streaming one (0 = streaming only).",
)
@click.option(
    "--cascade-weight",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of the second pass's RNN-T loss (the first pass has the rest).",
)
@click.option(
    "--init",
    "init_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Start from this trained model directory (its sizes; new second-pass layers start random).",
)
@_PRECISION_OPTION
@_GROUP_OPTION
@_DEVICE_OPTION
def train_base_command(
    data_dir: Path,
    out: Path,
    preset: str,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    ctc_weight: float,
    cascade_layers: int,
    cascade_weight: float,
    init_dir: Path | None,
    precision: str,
    group_by_length: bool,
    device: str,
) -> None:
    """Train the multilingual base transducer on every language's labelled audio (OUT/model, OUT/report.json)."""
    from ..asr.recipe import SpeechData, recipe_config, train_base

    config = recipe_config(
        lr=lr,
        batch_size=batch_size,
        best_metric="valid_loss",
        steps=steps,
        every=eval_every,
        precision=precision,
        group_by_length=group_by_length,
    )
    report = train_base(
        SpeechData.load(data_dir),
        out,
        preset=preset,
        config=config,
        ctc_weight=ctc_weight,
        cascade_layers=cascade_layers,
        cascade_weight=cascade_weight,
        init=init_dir,
        device=device,
    )
    click.echo(json.dumps(report, indent=2, sort_keys=True))


@asr_group.command("train-lda")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True)
@_DATA_OPTION
@click.option(
    "--lang",
    "language",
    required=True,
    help="A language, or several (sw,om,tn,af) trained at once: per-row routing, per-language best checkpoints.",
)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--reduction-factor", type=float, default=20.0, show_default=True)
@click.option(
    "--predictor-adapter",
    is_flag=True,
    help="Also put a bottleneck on the prediction network's output (the language's token statistics).",
)
@click.option("--full", is_flag=True, help="Fine-tune the whole model instead (the baseline for the adapter).")
@click.option("--noisy-student", is_flag=True, help="Then retrain on pseudo-labelled `unlabelled` audio too.")
@click.option(
    "--teacher-beam-width",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="The noisy-student teacher's search: 1 greedy, more beam search.",
)
@click.option("--steps", type=click.IntRange(1, 1_000_000), default=300, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--eval-every", type=click.IntRange(1, 1_000_000), default=50, show_default=True)
@click.option(
    "--seed", type=click.IntRange(0), default=0, show_default=True, help="Data order, SpecAugment and dropout."
)
@_PRECISION_OPTION
@_GROUP_OPTION
@_DEVICE_OPTION
def train_lda_command(
    model_dir: Path,
    data_dir: Path,
    language: str,
    out: Path,
    reduction_factor: float,
    predictor_adapter: bool,
    full: bool,
    noisy_student: bool,
    teacher_beam_width: int,
    steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    seed: int,
    precision: str,
    group_by_length: bool,
    device: str,
) -> None:
    """Train tail languages' adapters with the base frozen (OUT/adapter or OUT/bundle, OUT/report.json).

    One language: OUT/adapter, its best checkpoint by valid loss. Several (--lang sw,om,tn,af):
    one run routes each row to its language's adapter and OUT/bundle keeps each language's
    checkpoint with the lowest valid WER. With --full, fine-tune the whole model on one
    language's data instead (OUT/model): the baseline.
    """
    from ..asr.recipe import (
        SpeechData,
        fine_tune_language,
        recipe_config,
        train_language_adapter,
        train_language_adapters,
    )
    from .train import _languages

    data = SpeechData.load(data_dir)
    languages = _languages(language)
    for code in languages:
        if code not in data.languages:
            raise click.BadParameter(f"{code!r} is not in the data's languages {data.languages}", param_hint="--lang")
    if full and len(languages) > 1:
        raise click.BadParameter("--full fine-tunes one language per run; give one language", param_hint="--lang")
    if full and predictor_adapter:
        raise click.BadParameter("--full trains the whole model, no adapter", param_hint="--predictor-adapter")
    if full and (noisy_student or teacher_beam_width > 1):
        raise click.BadParameter("--full has no noisy-student round (no teacher)", param_hint="--noisy-student")
    config = recipe_config(
        lr=lr,
        batch_size=batch_size,
        best_metric="valid_loss" if len(languages) == 1 else "valid_wer",
        steps=steps,
        every=eval_every,
        precision=precision,
        group_by_length=group_by_length,
        seed=seed,
    )
    if len(languages) > 1:
        report = train_language_adapters(
            model_dir,
            data,
            languages,
            out,
            reduction_factor=reduction_factor,
            predictor=predictor_adapter,
            config=config,
            noisy_student=noisy_student,
            teacher_beam_width=teacher_beam_width,
            device=device,
        )
    elif full:
        report = fine_tune_language(model_dir, data, languages[0], out, config=config, device=device)
    else:
        report = train_language_adapter(
            model_dir,
            data,
            languages[0],
            out,
            reduction_factor=reduction_factor,
            predictor=predictor_adapter,
            config=config,
            noisy_student=noisy_student,
            teacher_beam_width=teacher_beam_width,
            device=device,
        )
    click.echo(json.dumps(report, indent=2, sort_keys=True))


@asr_group.command("bundle")
@click.option("--lda", "ldas", multiple=True, required=True, help="LANG=DIR of `asr train-lda`, repeatable.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def bundle_command(ldas: tuple[str, ...], out: Path) -> None:
    """Merge the languages' adapters (each its best checkpoint) into one bundle file."""
    from ..asr.recipe import bundle_language_adapters

    click.echo(f"wrote {bundle_language_adapters(_adapters(ldas, '--lda'), out)}")


@asr_group.command("evaluate")
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True)
@_DATA_OPTION
@click.option("--adapter", "adapters", multiple=True, help="LANG=DIR, repeatable.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None, help="A bundle of adapters (`asr bundle`).")
@click.option("--split", default="test", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the table as JSON here.")
@_BEAM_OPTION
@_DEVICE_OPTION
def evaluate_command(
    model_dir: Path,
    data_dir: Path,
    adapters: tuple[str, ...],
    bundle: Path | None,
    split: str,
    out: Path | None,
    beam_width: int,
    device: str,
) -> None:
    """Per-language WER/CER of the base and, where an adapter is given, with it."""
    from ..asr.recipe import SpeechData, evaluate_languages

    table = evaluate_languages(
        model_dir,
        SpeechData.load(data_dir),
        adapters=_adapters(adapters),
        bundle=bundle,
        split=split,
        device=device,
        beam_width=beam_width,
    )
    for language, row in table.items():
        cells = "  ".join(f"{k} {v:.3f}" for k, v in sorted(row.items()))
        click.echo(f"{language:<4} {cells}")
    if out is not None:
        _write_json(out, table)


def _parse_streams(items: tuple[str, ...], language: str | None) -> list[tuple[Path, str]]:
    streams = []
    for item in items:
        path, sep, lang = item.rpartition(":") if ":" in item else (item, "", "")
        lang = lang if sep else language
        if not lang:
            raise click.BadParameter(f"{item!r} has no language: write AUDIO:LANG or pass --lang", param_hint="AUDIO")
        streams.append((Path(path), lang))
    return streams


@asr_group.command("stream")
@click.argument("audio", nargs=-1, required=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True)
@click.option("--lang", "language", default=None, help="Language of every AUDIO without its own :LANG.")
@click.option("--adapter", "adapters", multiple=True, help="LANG=DIR, repeatable.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None, help="A bundle of adapters (`asr bundle`).")
@click.option("--chunk-ms", type=click.Choice(["160", "320", "640"]), default="320", show_default=True)
@click.option("--resample", is_flag=True, help="Resample audio that is not 16 kHz instead of refusing it.")
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True)
def stream_command(
    audio: tuple[str, ...],
    model_dir: Path,
    language: str | None,
    adapters: tuple[str, ...],
    bundle: Path | None,
    chunk_ms: str,
    resample: bool,
    threads: int,
) -> None:
    """Decode AUDIO files (AUDIO or AUDIO:LANG) as concurrent streams in one batch, printing partial results.

    Each stream uses its language's adapter; a language without one falls back to the base model.
    Prints the final text, the real-time factor and per-chunk compute latency p50/p95. A cascaded
    model's partial results come from its streaming encoder and the final text from its second pass.
    """
    import torch

    from ..asr import read_audio
    from ..asr.streaming import Recognizer, StreamTiming

    torch.set_num_threads(threads)
    streams = _parse_streams(audio, language)
    waves = [read_audio(path, resample=resample) for path, _ in streams]
    recognizer = Recognizer.load(model_dir, _adapters(adapters), bundle)
    for path, lang in streams:
        if lang not in recognizer.languages:
            click.echo(f"note: no adapter for {lang!r} ({path}); decoding it with the base model")
    shown = [""] * len(streams)

    def partial(i: int, text: str) -> None:
        if text != shown[i]:
            shown[i] = text
            click.echo(f"[{i}] … {text}")

    clock = time.perf_counter()
    results = recognizer.stream(waves, [lang for _, lang in streams], chunk_ms=int(chunk_ms), on_partial=partial)
    timing = StreamTiming.of(results, time.perf_counter() - clock)
    for i, ((path, lang), result) in enumerate(zip(streams, results, strict=True)):
        rescored = f"; second pass {result.final_seconds * 1000:.1f} ms after the end" if result.final_seconds else ""
        click.echo(f"[{i}] {path} ({lang}, adapter {result.adapter}{rescored}): {result.text}")
    click.echo(timing.describe(chunk_ms=int(chunk_ms), threads=threads))


@asr_group.command("demo")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="A model directory (`asr train-base`)  [default: the checkpoint shipped in the package]",
)
@click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=None,
    help="A bundle of adapters (`asr bundle`)  [default: the shipped one, or the --model directory's own]",
)
@click.option("--langs", default="sw,om,de,en", show_default=True, help="One stream per language (comma-separated).")
@click.option("--chunk-ms", type=click.Choice(["160", "320", "640"]), default="320", show_default=True)
@click.option("--threads", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the phrases and voices.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the results as JSON here.")
def demo_command(
    model_dir: Path | None, bundle: Path | None, langs: str, chunk_ms: str, threads: int, seed: int, out: Path | None
) -> None:
    """Stream one held-out UDHR phrase per language (spoken by espeak-ng) as concurrent streams, printing partials.

    Each stream uses its language's adapter from the bundle, or the base model when it has none.
    Prints each stream's final text against its reference (WER/CER), the real-time factor and
    per-chunk compute latency p50/p95.
    """
    from ..asr.demo import run_demo

    languages = [code.strip() for code in langs.split(",")]
    if not all(languages):
        raise click.BadParameter(f"{langs!r} is not a comma-separated list of languages", param_hint="--langs")
    results = run_demo(
        model_dir=model_dir,
        bundle=bundle,
        languages=languages,
        chunk_ms=int(chunk_ms),
        threads=threads,
        seed=seed,
        echo=click.echo,
    )
    if out is not None:
        _write_json(out, results)


@asr_group.command("transcribe")
@click.argument("audio", nargs=-1, required=True)
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True)
@click.option("--lang", "language", default=None, help="Language of every AUDIO without its own :LANG.")
@click.option("--adapter", "adapters", multiple=True, help="LANG=DIR, repeatable.")
@click.option("--bundle", type=click.Path(path_type=Path), default=None, help="A bundle of adapters (`asr bundle`).")
@click.option("--resample", is_flag=True, help="Resample audio that is not 16 kHz instead of refusing it.")
@_BEAM_OPTION
def transcribe_command(
    audio: tuple[str, ...],
    model_dir: Path,
    language: str | None,
    adapters: tuple[str, ...],
    bundle: Path | None,
    resample: bool,
    beam_width: int,
) -> None:
    """Offline (whole-utterance) transcripts of AUDIO files (AUDIO or AUDIO:LANG)."""
    from ..asr import read_audio
    from ..asr.streaming import Recognizer

    streams = _parse_streams(audio, language)
    waves = [read_audio(path, resample=resample) for path, _ in streams]
    recognizer = Recognizer.load(model_dir, _adapters(adapters), bundle)
    texts = recognizer.transcribe(waves, [lang for _, lang in streams], beam_width=beam_width)
    for (path, _), text in zip(streams, texts, strict=True):
        click.echo(f"{path}: {text}")
