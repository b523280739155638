"""The speech recipe's steps as functions: corpus, multilingual base, language-dependent adapters, evaluation.

The ``asr/`` scripts and the ``polyglot-adapters asr`` commands call these. Head languages get
plenty of labelled audio; tail languages a little labelled audio plus unlabelled audio (for
pseudo-labelling). Every step writes its resolved settings next to its results.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import load_udhr
from ..errors import ConfigError
from ..io import atomic_write_json
from ..merging import SavedAdapter, load_bundle, merge_per_language, write_bundle
from ..methods.bottleneck import BottleneckConfig
from ..model import AdaptedModel
from ..training import TrainConfig, TrainResult
from .data import build_speech_corpus, read_manifest
from .model import ConformerTransducer, conformer_transducer
from .tokenizer import SpeechTokenizer, train_tokenizer
from .training import (
    SpeechExample,
    error_rates,
    evaluate,
    feature_stats,
    load_examples,
    load_feature_pack,
    load_transducer,
    pseudo_label,
    save_feature_pack,
    save_transducer,
    train_transducer,
)

__all__ = [
    "HEAD_LANGUAGES",
    "PRESETS",
    "TAIL_LANGUAGES",
    "SpeechData",
    "bundle_language_adapters",
    "evaluate_languages",
    "fine_tune_language",
    "language_adapter_config",
    "load_corpus",
    "make_corpus",
    "recipe_config",
    "train_base",
    "train_language_adapter",
    "train_language_adapters",
]

HEAD_LANGUAGES = ("en", "de", "es", "fr", "fi")
TAIL_LANGUAGES = ("sw", "om", "tn", "af")

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, num_layers=2, num_heads=2, ffn_dim=128, kernel_size=7, predictor_dim=64, joiner_dim=64
    ),
    # About 2.6M parameters (10 MB in float32): small enough to ship and to stream on one CPU thread.
    "cpu": dict(hidden_size=128, num_layers=6, num_heads=4, ffn_dim=512, predictor_dim=128, joiner_dim=128),
    "small": {},
}
"""Model size presets for :func:`train_base` (keyword arguments of ``conformer_transducer``)."""


def recipe_config(
    *,
    lr: float,
    batch_size: int,
    best_metric: str,
    steps: int = 300,
    every: int = 50,
    precision: str = "fp32",
    group_by_length: bool = True,
    seed: int = 0,
) -> TrainConfig:
    """The recipe's training loop: 10% warm-up, grouped batches, evaluation and checkpoint every ``every`` steps.

    ``seed`` sets the data order, SpecAugment and dropout (not the initial weights).
    """
    return TrainConfig(
        steps=steps,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        batch_size=batch_size,
        group_by_length=group_by_length,
        precision=precision,
        eval_every=every,
        save_every=every,
        best_metric=best_metric,
        seed=seed,
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data, ensure_ascii=False)


def language_adapter_config(reduction_factor: float = 20.0, *, predictor: bool = False) -> BottleneckConfig:
    """A language-dependent adapter: a series bottleneck after every encoder layer's last feed-forward module.

    Args:
        reduction_factor: Hidden size divided by the bottleneck size.
        predictor: Also adapt the prediction network's output (a bottleneck of the same reduction).
    """
    return BottleneckConfig(
        placement="series",
        positions=("ffn",),
        reduction_factor=reduction_factor,
        outputs=("predictor",) if predictor else (),
    )


def make_corpus(
    out_dir: str | os.PathLike[str],
    *,
    head: Sequence[str] = HEAD_LANGUAGES,
    tail: Sequence[str] = TAIL_LANGUAGES,
    head_renditions: int = 3,
    tail_labelled: int = 40,
    tail_renditions: int = 2,
    test_renditions: int = 2,
    unlabelled: bool = True,
    seed: int = 0,
) -> dict[str, Path]:
    """Synthesises ``train``, ``unlabelled`` (tail only), ``valid`` and ``test`` manifests.

    Args:
        out_dir: Corpus directory.
        head: Languages with all their training phrases, ``head_renditions`` voices each.
        tail: Languages with their first ``tail_labelled`` phrases labelled (``tail_renditions``
            voices each) and the rest unlabelled (one voice).
        head_renditions: Voices per head phrase.
        tail_labelled: Labelled phrases per tail language.
        tail_renditions: Voices per labelled tail phrase.
        test_renditions: Voices per valid/test phrase.
        unlabelled: Also synthesise the tail languages' unlabelled audio.
        seed: Seeds the voices.

    Returns:
        Manifest paths by name.
    """
    out = Path(out_dir)
    everyone = [*head, *tail]
    manifests = {
        "train_head": build_speech_corpus(
            out, dict.fromkeys(head), split="train", name="train_head", renditions=head_renditions, seed=seed
        ),
        "train_tail": build_speech_corpus(
            out,
            dict.fromkeys(tail, tail_labelled),
            split="train",
            name="train_tail",
            renditions=tail_renditions,
            seed=seed,
        ),
        "valid": build_speech_corpus(out, dict.fromkeys(everyone, 12), split="valid", renditions=1, seed=seed),
        "test": build_speech_corpus(
            out, dict.fromkeys(everyone), split="test", renditions=test_renditions, noise=False, seed=seed
        ),
    }
    if unlabelled:
        manifests["unlabelled"] = build_speech_corpus(
            out, dict.fromkeys(tail, (tail_labelled, 10_000)), split="train", name="unlabelled", seed=seed
        )
    settings = dict(
        head=list(head),
        tail=list(tail),
        head_renditions=head_renditions,
        tail_labelled=tail_labelled,
        tail_renditions=tail_renditions,
        test_renditions=test_renditions,
        unlabelled=unlabelled,
        seed=seed,
    )
    counts = {name: len(read_manifest(path)) for name, path in manifests.items()}
    hours = {name: sum(u.duration for u in read_manifest(path)) / 3600 for name, path in manifests.items()}
    _write_json(out / "corpus.json", {"settings": settings, "utterances": counts, "hours": hours})
    return manifests


@dataclasses.dataclass
class SpeechData:
    """A corpus's featurised splits and its tokenizer.

    Attributes:
        tokenizer: The multilingual tokenizer.
        languages: Language codes; an example's ``language`` indexes this list.
        splits: ``train_head``, ``train_tail``, ``valid``, ``test`` (and ``unlabelled``) examples.
    """

    tokenizer: SpeechTokenizer
    languages: list[str]
    splits: dict[str, list[SpeechExample]]

    def select(self, split: str, language: str | None = None) -> list[SpeechExample]:
        """A split's examples, optionally of one language."""
        examples = self.splits.get(split, [])
        if language is None:
            return list(examples)
        index = self.languages.index(language)
        return [e for e in examples if e.language == index]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Writes ``tokenizer.model`` and one feature pack per split (``<split>.safetensors``)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(out / "tokenizer.model")
        for name, examples in self.splits.items():
            save_feature_pack(examples, out / f"{name}.safetensors", languages=self.languages)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SpeechData:
        """Reads :meth:`save` output."""
        source = Path(directory)
        tokenizer = SpeechTokenizer.load(source / "tokenizer.model")
        splits, languages = {}, []
        for path in sorted(source.glob("*.safetensors")):
            splits[path.stem], languages = load_feature_pack(path, tokenizer)
        return cls(tokenizer, languages, splits)


def load_corpus(
    corpus_dir: str | os.PathLike[str],
    *,
    languages: Sequence[str] = (*HEAD_LANGUAGES, *TAIL_LANGUAGES),
    vocab_size: int = 128,
) -> SpeechData:
    """Featurises a :func:`make_corpus` directory; the tokenizer learns every language's UDHR training text."""
    corpus = Path(corpus_dir)
    udhr = load_udhr()
    tokenizer = train_tokenizer(
        [s for lang in languages for s in udhr.texts(lang, "train", unit="sentence")], vocab_size=vocab_size
    )
    splits = {
        path.stem: load_examples(read_manifest(path, languages=languages), tokenizer, languages)
        for path in sorted(corpus.glob("*.jsonl"))
    }
    return SpeechData(tokenizer, list(languages), splits)


def train_base(
    data: SpeechData,
    out_dir: str | os.PathLike[str],
    *,
    preset: str = "cpu",
    config: TrainConfig | None = None,
    ctc_weight: float = 0.3,
    cascade_layers: int = 0,
    cascade_weight: float = 0.5,
    init: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Trains the multilingual base on all labelled audio; writes ``out_dir/model`` and ``out_dir/report.json``.

    The checkpoint best on the valid set (``valid_loss``) becomes the model. ``ctc_weight`` is the
    auxiliary CTC loss's share, ``cascade_layers`` and ``cascade_weight`` size the second pass
    (see ``ConformerTransducerConfig``). ``init`` starts from a trained model directory instead
    of random weights (its sizes, preset and feature statistics; new second-pass layers start
    random), e.g. to add a cascade to a streaming base.

    Raises:
        ConfigError: If ``init`` has another tokenizer than ``data`` or already more cascade layers.
    """
    out = Path(out_dir)
    train_examples = data.select("train_head") + data.select("train_tail")
    torch.manual_seed(0)
    if init is None:
        model = conformer_transducer(
            input_dim=80,
            num_symbols=data.tokenizer.num_symbols,
            ctc_weight=ctc_weight,
            cascade_layers=cascade_layers,
            cascade_weight=cascade_weight,
            **PRESETS[preset],
        )
        model.transcriber.set_feature_stats(*feature_stats(train_examples))
    else:
        model, preset = _initialised(init, data, ctc_weight, cascade_layers, cascade_weight)
    model.to(device)
    config = config or recipe_config(lr=2e-3, batch_size=16, best_metric="valid_loss", steps=2000, every=250)

    def save_best(m: torch.nn.Module, directory: Path) -> None:
        save_transducer(m, data.tokenizer, directory, languages=data.languages, extra={"preset": preset})

    clock = time.perf_counter()
    result = train_transducer(
        model,
        train_examples,
        data.select("valid"),
        data.tokenizer,
        config,
        out_dir=out / "run",
        save_fn=save_best,
        progress=progress,
    )
    seconds = time.perf_counter() - clock
    best = load_transducer(out / "run" / "best")[0] if (out / "run" / "best").exists() else model.cpu()
    save_transducer(best, data.tokenizer, out / "model", languages=data.languages, extra={"preset": preset})
    report = {
        "preset": preset,
        "device": device,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_utterances": len(train_examples),
        "train_hours": sum(e.features.shape[0] for e in train_examples) / 360_000,
        "train_seconds": seconds,
        "config": config.to_dict(),
        "best": result.best,
        "last_loss": result.last_loss,
    }
    _write_json(out / "report.json", report)
    return report


def _initialised(
    init: str | os.PathLike[str],
    data: SpeechData,
    ctc_weight: float,
    cascade_layers: int,
    cascade_weight: float,
) -> tuple[ConformerTransducer, str]:
    """A model with ``init``'s weights and sizes, its loss weights and cascade as asked; and its preset."""
    source, tokenizer, meta = load_transducer(init)
    if tokenizer.proto != data.tokenizer.proto:
        raise ConfigError(f"{init}: its tokenizer is not the corpus's; start from a model trained on this corpus")
    if cascade_layers < source.config.cascade_layers:
        raise ConfigError(
            f"{init}: has {source.config.cascade_layers} second-pass layers, asked for {cascade_layers}; "
            "pass --cascade-layers at least as large"
        )
    config = dataclasses.replace(
        source.config, ctc_weight=ctc_weight, cascade_layers=cascade_layers, cascade_weight=cascade_weight
    )
    model = ConformerTransducer(config)
    if (model.ctc_output is None) != (source.ctc_output is None):
        raise ConfigError(f"{init}: ctc_weight {ctc_weight} would add or drop its CTC output layer; keep it above 0")
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    new = [
        k for k in missing if k.startswith(("transcriber.cascade_norm.", "transcriber.conformer.conformer_layers."))
    ]
    if unexpected or len(new) != len(missing):
        raise ConfigError(f"{init}: its tensors do not fit (missing {sorted(set(missing) - set(new))[:3]})")
    return model, str(meta.get("preset", "custom"))


def _check_teacher(noisy_student: bool, teacher_beam_width: int) -> None:
    if teacher_beam_width < 1:
        raise ConfigError(f"teacher_beam_width must be at least 1, got {teacher_beam_width}")
    if teacher_beam_width > 1 and not noisy_student:
        raise ConfigError("a teacher beam width needs the noisy-student round (noisy_student=True)")


def train_language_adapter(
    model_dir: str | os.PathLike[str],
    data: SpeechData,
    language: str,
    out_dir: str | os.PathLike[str],
    *,
    reduction_factor: float = 20.0,
    predictor: bool = False,
    config: TrainConfig | None = None,
    noisy_student: bool = False,
    teacher_beam_width: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Trains one tail language's adapter on its labelled audio, everything else frozen.

    With ``predictor``, the adapter also has a bottleneck on the prediction network's output
    (:func:`language_adapter_config`). With ``noisy_student``, a second round follows: the base
    with the first round's adapter labels the language's ``unlabelled`` audio (:func:`pseudo_label`,
    with beam search where ``teacher_beam_width`` > 1), and the adapter trains on and from there
    on labelled plus pseudo-labelled audio with SpecAugment (``out_dir/student``).

    Writes ``out_dir/adapter`` (the best on that language's valid set by ``valid_loss``) and
    ``out_dir/report.json`` (test WER/CER without and with the adapter, adapter size).
    """
    _check_teacher(noisy_student, teacher_beam_width)
    out = Path(out_dir)
    model, tokenizer, _ = load_transducer(model_dir)
    model.requires_grad_(False).to(device)
    test = data.select("test", language)
    am = AdaptedModel(model)
    before = evaluate(am, test, tokenizer)
    am.add_adapter(language, language_adapter_config(reduction_factor, predictor=predictor))
    am.set_active(language)
    config = config or recipe_config(lr=2e-3, batch_size=8, best_metric="valid_loss")

    def fit(examples: list[SpeechExample], run_dir: Path) -> TrainResult:
        """Trains the language adapter on ``examples``, then reloads its best checkpoint from ``run_dir``."""
        am.train_adapters(language)
        fitted = train_transducer(
            am,
            examples,
            data.select("valid", language),
            tokenizer,
            config,
            out_dir=run_dir,
            save_fn=lambda m, d: m.save_adapter(language, d),
            progress=progress,
        )
        am.delete_adapter(language)
        am.load_adapter(run_dir / "best", name=language)
        am.set_active(language)
        return fitted

    clock = time.perf_counter()
    result = fit(data.select("train_tail", language), out / "run")
    pseudo = []
    if noisy_student:
        pseudo = pseudo_label(am, data.select("unlabelled", language), tokenizer, beam_width=teacher_beam_width)
        result = fit(data.select("train_tail", language) + pseudo, out / "student")
    seconds = time.perf_counter() - clock
    am.save_adapter(language, out / "adapter")
    after = evaluate(am, test, tokenizer)
    base_parameters = sum(p.numel() for p in model.parameters()) - am.num_parameters(language)
    report = {
        "language": language,
        "device": device,
        "train_utterances": len(data.select("train_tail", language)),
        "pseudo_labelled_utterances": len(pseudo),
        "teacher_beam_width": teacher_beam_width if noisy_student else None,
        "adapter_parameters": am.num_parameters(language),
        "adapter_fraction": am.num_parameters(language) / base_parameters,
        "train_seconds": seconds,
        "best": result.best,
        "test_before": before,
        "test_after": after,
        "config": config.to_dict(),
    }
    _write_json(out / "report.json", report)
    return report


def train_language_adapters(
    model_dir: str | os.PathLike[str],
    data: SpeechData,
    languages: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    reduction_factor: float = 20.0,
    predictor: bool = False,
    config: TrainConfig | None = None,
    noisy_student: bool = False,
    teacher_beam_width: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Trains several tail languages' adapters at once, then keeps each language's best checkpoint.

    Every batch mixes the languages' labelled audio and routes each row to its own language's
    adapter (``Route``), so one run trains them all with the base frozen. Every evaluation saves
    each language's adapter (``out_dir/run/evals/eval-NNN/<language>``) and logs its valid WER
    and loss (``out_dir/run/selection.jsonl``). Languages peak at different points, so the
    final bundle (``out_dir/bundle``) takes each language's adapter from the evaluation where
    that language's valid WER was lowest (its valid loss breaks ties): the paper's per-language
    best-checkpoint merge. With ``predictor``, each adapter also adapts the prediction network's
    output (rows route there too). With ``noisy_student``, a second round trains on labelled plus
    pseudo-labelled ``unlabelled`` audio (teacher: the base with the first round's bundle, decoding
    with beam search where ``teacher_beam_width`` > 1) and its evaluations join the selection.

    Writes ``out_dir/report.json``: per language, test WER/CER of the base, of the bundle, of the
    last checkpoint and of the single evaluation best on the mean valid WER.

    Raises:
        ConfigError: An unknown or repeated language, or one without labelled audio.
    """
    _check_teacher(noisy_student, teacher_beam_width)
    if not languages or len(set(languages)) != len(languages):
        raise ConfigError(f"give each language once, got {list(languages)}")
    for language in languages:
        if language not in data.languages or not data.select("train_tail", language):
            raise ConfigError(f"{language!r} has no labelled tail audio in this corpus ({data.languages})")
    out = Path(out_dir)
    model, tokenizer, _ = load_transducer(model_dir)
    model.requires_grad_(False).to(device)
    am = AdaptedModel(model)
    for language in languages:
        am.add_adapter(language, language_adapter_config(reduction_factor, predictor=predictor))
    routes = {data.languages.index(language): language for language in languages}
    valid = {language: data.select("valid", language) for language in languages}
    labelled = [e for language in languages for e in data.select("train_tail", language)]
    config = config or recipe_config(lr=1e-2, batch_size=16, best_metric="valid_wer")
    selection_log = out / "run" / "selection.jsonl"

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        evals = out / "run" / "evals"
        index = len(list(evals.glob("eval-*"))) if evals.is_dir() else 0
        metrics, lines = {}, []
        for language in languages:
            result = evaluate(m, valid[language], tokenizer, routes=routes)
            checkpoint = Path("evals") / f"eval-{index:03d}" / language
            am.save_adapter(language, out / "run" / checkpoint)
            metrics[f"valid_wer/{language}"] = result["wer"]
            metrics[f"valid_loss/{language}"] = result["loss"]
            # WER first; the loss (scaled below one WER step) breaks ties between equal WERs.
            score = result["wer"] + 1e-6 * result["loss"]
            lines.append({"language": language, "checkpoint": str(checkpoint), "eval": index, "score": score})
        metrics["valid_wer"] = sum(metrics[f"valid_wer/{lang}"] for lang in languages) / len(languages)
        with selection_log.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in lines)
        return metrics

    def run(examples: list[SpeechExample], name: str) -> None:
        am.train_adapters(*languages)
        train_transducer(
            am, examples, [], tokenizer, config, out_dir=out / name, routes=routes, progress=progress, eval_fn=eval_fn
        )

    clock = time.perf_counter()
    (out / "run").mkdir(parents=True, exist_ok=True)
    run(labelled, "run")
    pseudo: list[SpeechExample] = []
    pseudo_quality: dict[str, float] | None = None
    if noisy_student:
        merge_per_language(selection_log, out / "teacher", metric="score")
        teacher = _adapted(model_dir, device, bundle=out / "teacher")
        unlabelled = [e for language in languages for e in data.select("unlabelled", language)]
        pseudo = pseudo_label(teacher, unlabelled, tokenizer, routes=routes, beam_width=teacher_beam_width)
        # The synthetic corpus knows what the unlabelled audio says: score the teacher's labels.
        hypotheses = {id(e.features): e.text for e in pseudo}  # pseudo_label keeps each feature tensor
        pseudo_quality = error_rates(
            [e.text for e in unlabelled], [hypotheses.get(id(e.features), "") for e in unlabelled]
        )
        run(labelled + pseudo, "student")
    seconds = time.perf_counter() - clock
    selections = merge_per_language(selection_log, out / "bundle", metric="score")
    evals: dict[int, list[float]] = {}
    for line in selection_log.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        evals.setdefault(record["eval"], []).append(record["score"])
    best_mean = min(evals, key=lambda i: (sum(evals[i]) / len(evals[i]), i))

    def at(index: int) -> dict[str, Path]:
        return {lang: out / "run" / "evals" / f"eval-{index:03d}" / lang for lang in languages}

    variants: dict[str, tuple[Path | None, dict[str, Path]]] = {  # name -> (bundle, adapter directories)
        "base": (None, {}),
        "bundle": (out / "bundle", {}),
        "best_mean_checkpoint": (None, at(best_mean)),
        "last_checkpoint": (None, at(max(evals))),
    }
    test: dict[str, dict[str, dict[str, float]]] = {lang: {} for lang in languages}
    for variant, (bundle, adapters) in variants.items():
        adapted = _adapted(model_dir, device, bundle=bundle, adapters=adapters)
        for language in languages:
            test[language][variant] = evaluate(
                adapted, data.select("test", language), tokenizer, routes=routes if variant != "base" else None
            )
    report = {
        "languages": list(languages),
        "device": device,
        "train_utterances": len(labelled),
        "pseudo_labelled_utterances": len(pseudo),
        "pseudo_label_error_rates": pseudo_quality,
        "teacher_beam_width": teacher_beam_width if noisy_student else None,
        "adapter_parameters": am.num_parameters(languages[0]),
        "adapter_fraction": am.num_parameters(languages[0]) / am.num_parameters(),
        "train_seconds": seconds,
        "config": config.to_dict(),
        "evaluations": len(evals),
        "best_mean_eval": best_mean,
        "selected": {lang: str(sel.checkpoint.relative_to(out)) for lang, sel in selections.items()},
        "test": test,
    }
    _write_json(out / "report.json", report)
    return report


def _adapted(
    model_dir: str | os.PathLike[str],
    device: str,
    *,
    bundle: str | os.PathLike[str] | None = None,
    adapters: dict[str, str | os.PathLike[str]] | None = None,
) -> AdaptedModel:
    """The frozen base with a bundle's and/or saved adapters attached, each under its language."""
    model, _, _ = load_transducer(model_dir)
    am = AdaptedModel(model.requires_grad_(False).to(device))
    if bundle is not None:
        load_bundle(am, bundle)
    for language, directory in (adapters or {}).items():
        am.load_adapter(directory, name=language)
    return am


def fine_tune_language(
    model_dir: str | os.PathLike[str],
    data: SpeechData,
    language: str,
    out_dir: str | os.PathLike[str],
    *,
    config: TrainConfig | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """The baseline for :func:`train_language_adapter`: fine-tunes the whole model on one language's labelled audio.

    Writes ``out_dir/model`` (best on that language's valid set) and ``out_dir/report.json``.
    """
    out = Path(out_dir)
    model, tokenizer, meta = load_transducer(model_dir)
    model.to(device)
    test = data.select("test", language)
    before = evaluate(model, test, tokenizer)
    config = config or recipe_config(lr=5e-4, batch_size=8, best_metric="valid_loss")

    def save_best(m: torch.nn.Module, directory: Path) -> None:
        save_transducer(m, tokenizer, directory, languages=meta["languages"])

    clock = time.perf_counter()
    result = train_transducer(
        model,
        data.select("train_tail", language),
        data.select("valid", language),
        tokenizer,
        config,
        out_dir=out / "run",
        save_fn=save_best,
        progress=progress,
    )
    seconds = time.perf_counter() - clock
    best = load_transducer(out / "run" / "best")[0].to(device)
    save_transducer(best, tokenizer, out / "model", languages=meta["languages"])
    report = {
        "language": language,
        "device": device,
        "trained_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": seconds,
        "best": result.best,
        "test_before": before,
        "test_after": evaluate(best, test, tokenizer),
        "config": config.to_dict(),
    }
    _write_json(out / "report.json", report)
    return report


def bundle_language_adapters(lda_dirs: dict[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> Path:
    """Writes every language's kept adapter (its best checkpoint) into one bundle file.

    Args:
        lda_dirs: Language to a :func:`train_language_adapter` output directory (its ``adapter``
            is the checkpoint best on that language's valid set; ``run/best.json`` says which).
        out_dir: Bundle directory (``bundle.json`` + ``bundle.safetensors``; ``load_bundle`` reads it).
    """
    adapters, notes = {}, {}
    for language, directory in lda_dirs.items():
        adapters[language] = SavedAdapter.read(Path(directory) / "adapter")
        best = Path(directory) / "run" / "best.json"
        if best.is_file():
            record = json.loads(best.read_text())
            notes[language] = {"metric": record["metric"], "value": record["value"], "step": record["step"]}
    return write_bundle(out_dir, adapters, notes)


def evaluate_languages(
    model_dir: str | os.PathLike[str],
    data: SpeechData,
    *,
    adapters: dict[str, str | os.PathLike[str]] | None = None,
    bundle: str | os.PathLike[str] | None = None,
    split: str = "test",
    device: str = "cpu",
    beam_width: int = 1,
) -> dict[str, dict[str, float]]:
    """Per-language loss/WER/CER of the base, and with the language's adapter where one is given.

    Adapters come from ``adapters`` (language to adapter directory) and/or a ``bundle``;
    ``beam_width`` > 1 decodes with beam search instead of greedily.
    """
    model, tokenizer, _ = load_transducer(model_dir)
    am = AdaptedModel(model.requires_grad_(False).to(device))
    for language, directory in (adapters or {}).items():
        am.load_adapter(directory, name=language)
    if bundle is not None:
        load_bundle(am, bundle)
    adapted = set(am.adapters)
    out = {}
    for language in data.languages:
        examples = data.select(split, language)
        if not examples:
            continue
        am.set_active(None)
        out[language] = {f"base_{k}": v for k, v in evaluate(am, examples, tokenizer, beam_width=beam_width).items()}
        if language in adapted:
            am.set_active(language)
            metrics = evaluate(am, examples, tokenizer, beam_width=beam_width)
            out[language].update({f"lda_{k}": v for k, v in metrics.items()})
    return out
