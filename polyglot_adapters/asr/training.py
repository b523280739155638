"""Transducer training through the shared loop: datasets, collation, RNN-T loss, WER, model files.

A saved model is a directory with ``model.json`` (schema, config, languages), ``model.safetensors``
(weights and feature statistics) and ``tokenizer.model`` (SentencePiece), written atomically,
tensors first.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import safetensors
import torch
import torchaudio
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from ..composition import Route
from ..errors import CorruptArtifactError, MissingArtifactError, SchemaVersionError
from ..io import atomic_write_bytes, atomic_write_json
from ..model import AdaptedModel
from ..training import TrainConfig, TrainResult, eval_mode, train
from .audio import read_audio
from .data import Utterance
from .decoding import beam_search_encodings, greedy_search
from .features import LogMel, spec_augment
from .model import ConformerTransducer, ConformerTransducerConfig
from .tokenizer import SpeechTokenizer, normalize_transcript

__all__ = [
    "SpeechExample",
    "collate_speech",
    "decode_encodings",
    "edit_distance",
    "error_rates",
    "evaluate",
    "feature_stats",
    "load_examples",
    "load_feature_pack",
    "load_transducer",
    "pseudo_label",
    "save_feature_pack",
    "save_transducer",
    "train_transducer",
    "transcribe_features",
    "transducer_loss",
]

SCHEMA = "polyglot-adapters/transducer"
SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SpeechExample:
    """A training example.

    Attributes:
        features: Log-mel frames ``(T, F)``.
        targets: Piece ids of the transcript.
        language: Index of the language (for per-row adapter routing).
        text: The transcript.
    """

    features: torch.Tensor
    targets: tuple[int, ...]
    language: int
    text: str


def load_examples(
    utterances: Sequence[Utterance], tokenizer: SpeechTokenizer, languages: Sequence[str]
) -> list[SpeechExample]:
    """Reads, checks and featurises a manifest's utterances (``languages`` gives the language indices)."""
    logmel = LogMel()
    index = {lang: i for i, lang in enumerate(languages)}
    out = []
    with torch.no_grad():
        for u in utterances:
            features = logmel(read_audio(u.audio))
            out.append(SpeechExample(features, tuple(tokenizer.encode(u.text)), index[u.language], u.text))
    return out


_PACK_SCHEMA = "polyglot-adapters/speech-features"
_PACK_OFFSET, _PACK_STEP = -16.0, 0.125  # uint8 log-mel: [-16, 15.875] in steps of 0.125


def save_feature_pack(
    examples: Sequence[SpeechExample], path: str | os.PathLike[str], *, languages: Sequence[str]
) -> Path:
    """Writes featurised examples as one safetensors file (log-mel quantised to uint8, step 0.125).

    Feature packs move a corpus to a machine without the synthesiser or the audio files; the
    quantisation error (at most 0.0625 in log power) is far below SpecAugment's perturbations.
    """
    target = Path(path)
    frames = torch.cat([e.features for e in examples])  # (sum T, F)
    quantised = ((frames - _PACK_OFFSET) / _PACK_STEP).round().clamp(0, 255).to(torch.uint8)
    tensors = {
        "features": quantised,
        "lengths": torch.tensor([e.features.shape[0] for e in examples]),
        "language": torch.tensor([e.language for e in examples]),
    }
    meta = {
        "schema": _PACK_SCHEMA,
        "languages": json.dumps(list(languages)),
        "texts": json.dumps([e.text for e in examples], ensure_ascii=False),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, st_save(tensors, metadata=meta))
    return target


def load_feature_pack(
    path: str | os.PathLike[str], tokenizer: SpeechTokenizer
) -> tuple[list[SpeechExample], list[str]]:
    """Reads :func:`save_feature_pack` output; returns the examples (targets from ``tokenizer``) and languages.

    Raises:
        MissingArtifactError: If the file is missing.
        CorruptArtifactError: If it is not a feature pack.
    """
    source = Path(path)
    if not source.is_file():
        raise MissingArtifactError(f"{source}: no feature pack; write one with save_feature_pack(...)")
    try:
        with safe_open(str(source), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        languages, texts = json.loads(meta["languages"]), json.loads(meta["texts"])
    except (KeyError, ValueError, OSError, safetensors.SafetensorError) as err:
        raise CorruptArtifactError(f"{source}: not a speech feature pack ({err}); rebuild it") from None
    if meta.get("schema") != _PACK_SCHEMA or len(texts) != tensors["lengths"].numel():
        raise CorruptArtifactError(f"{source}: not a speech feature pack; rebuild it")
    frames = tensors["features"].float() * _PACK_STEP + _PACK_OFFSET
    parts = torch.split(frames, tensors["lengths"].tolist())
    examples = [
        SpeechExample(f.clone(), tuple(tokenizer.encode(t)), int(lang), t)
        for f, t, lang in zip(parts, texts, tensors["language"].tolist(), strict=True)
    ]
    return examples, languages


def feature_stats(examples: Sequence[SpeechExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of the examples' features (float64 sums)."""
    frames = torch.cat([e.features for e in examples]).double()  # (sum T, F)
    return frames.mean(0).float(), frames.std(0).float()


def collate_speech(examples: list[SpeechExample], seeds: list[int]) -> dict[str, torch.Tensor]:
    """Pads a batch: ``features (B, T, F)``, ``lengths``, ``targets (B, U)``, ``target_lengths``, ``language``.

    ``seeds`` is unused: SpecAugment draws in the loss from the step-seeded global RNG.
    """
    del seeds
    features = nn.utils.rnn.pad_sequence([e.features for e in examples], batch_first=True)
    targets = nn.utils.rnn.pad_sequence(
        [torch.tensor(e.targets or (0,), dtype=torch.int32) for e in examples], batch_first=True
    )
    return {
        "features": features,
        "lengths": torch.tensor([e.features.shape[0] for e in examples]),
        "targets": targets,
        "target_lengths": torch.tensor([len(e.targets) for e in examples], dtype=torch.int32),
        "language": torch.tensor([e.language for e in examples]),
    }


def _host(model: nn.Module) -> ConformerTransducer:
    host = model.model if isinstance(model, AdaptedModel) else model
    if not isinstance(host, ConformerTransducer):
        raise TypeError(f"expected a ConformerTransducer (or an AdaptedModel of one), got {type(host).__name__}")
    return host


def transducer_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    augment: bool = True,
    routes: dict[int, str] | None = None,
    ctc: bool = True,
) -> torch.Tensor:
    """Mean RNN-T loss (torchaudio ``rnnt_loss``) per utterance, with SpecAugment in training mode.

    A model with ``config.ctc_weight = w > 0`` is trained on ``(1 - w) * rnnt + w * ctc`` (CTC on
    its encoder frames, also a mean per utterance); ``ctc=False`` gives the RNN-T term alone (for
    evaluation, so that losses compare across models). In a cascaded model the RNN-T term is
    ``(1 - c) * first + c * second`` with ``c = config.cascade_weight``: both passes share the
    predictor and joiner, and the second pass's gradient reaches the first-pass encoder too.

    Args:
        model: A :class:`ConformerTransducer` or an ``AdaptedModel`` of one.
        batch: :func:`collate_speech` output.
        augment: Apply SpecAugment when the model is in training mode.
        routes: Language index to adapter name: each row goes through its language's adapter
            (``Route``); ``None`` keeps the active composition.
        ctc: Add the auxiliary CTC term where the model has one.
    """
    host = _host(model)
    features = batch["features"]
    if augment and model.training:
        features = spec_augment(features)
    if routes is not None and isinstance(model, AdaptedModel):
        model.set_active(Route(batch["language"], routes))
    targets, target_lengths = batch["targets"], batch["target_lengths"]
    start = torch.full((targets.shape[0], 1), host.blank, dtype=torch.long, device=targets.device)
    predictor_input = torch.cat([start, targets.long()], dim=1)  # (B, U + 1): blank starts every row
    # The host's parts are called one by one (adapters live inside them) to keep the encodings for CTC.
    encodings, enc_lengths = host.transcribe(features, batch["lengths"])  # (B, T', D)
    predictions, pred_lengths, _ = host.predict(predictor_input, target_lengths + 1, None)  # (B, U + 1, P)

    def rnnt(source: torch.Tensor) -> torch.Tensor:
        logits, logit_lengths, _ = host.join(source, enc_lengths, predictions, pred_lengths)  # (B, T', U + 1, V)
        return torchaudio.functional.rnnt_loss(
            logits.float(),
            targets.int(),
            logit_lengths.int(),
            target_lengths.int(),
            blank=host.blank,
            reduction="mean",
        )

    loss = rnnt(encodings)
    if host.cascaded:
        second = host.second_pass(encodings, enc_lengths)[0]  # (B, T', D)
        loss = (1 - host.config.cascade_weight) * loss + host.config.cascade_weight * rnnt(second)
    weight = host.config.ctc_weight
    if not ctc or host.ctc_output is None or weight == 0:
        return loss
    log_probs = torch.log_softmax(host.ctc_output(encodings).float(), dim=-1).transpose(0, 1)  # (T', B, V)
    ctc_loss = (
        nn.functional.ctc_loss(
            log_probs,
            targets.long(),
            enc_lengths,
            target_lengths.long(),
            blank=host.blank,
            reduction="sum",
            zero_infinity=True,
        )
        / targets.shape[0]
    )
    return (1 - weight) * loss + weight * ctc_loss


@torch.no_grad()
def transcribe_features(
    model: nn.Module, features: torch.Tensor, lengths: torch.Tensor, *, first_pass: bool = False
) -> list[list[int]]:
    """Greedy hypotheses (piece ids) of a padded batch of features, whole-utterance encoding.

    A cascaded model decodes its second pass unless ``first_pass`` is set.
    """
    host = _host(model)
    encodings, enc_lengths = host.encode(features, lengths, first_pass=first_pass)
    return greedy_search(host, encodings, enc_lengths).tokens


def edit_distance(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Levenshtein distance between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus word and character error rates (errors over reference words/characters), on normalised text."""
    words = chars = word_errors = char_errors = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref, hyp = normalize_transcript(ref), normalize_transcript(hyp)
        word_errors += edit_distance(ref.split(), hyp.split())
        char_errors += edit_distance(list(ref), list(hyp))
        words += len(ref.split())
        chars += len(ref)
    return {"wer": word_errors / max(words, 1), "cer": char_errors / max(chars, 1)}


def evaluate(
    model: nn.Module,
    examples: Sequence[SpeechExample],
    tokenizer: SpeechTokenizer,
    *,
    batch_size: int = 16,
    routes: dict[int, str] | None = None,
    beam_width: int = 1,
) -> dict[str, float]:
    """Loss, WER and CER (whole-utterance decoding) on examples, in eval mode without gradients.

    A cascaded model's ``wer`` and ``cer`` are its second pass's; ``first_pass_wer`` and
    ``first_pass_cer`` are the streaming encoder's, on the same utterances.

    Args:
        model: A :class:`ConformerTransducer` or an ``AdaptedModel`` of one (its active
            composition is used unless ``routes`` is given).
        examples: The utterances.
        tokenizer: The tokenizer.
        batch_size: Utterances per batch.
        routes: Language index to adapter name: each row goes through its language's adapter.
        beam_width: 1 decodes greedily (batched); more runs torchaudio's beam search per utterance.
    """
    host = _host(model)
    hypotheses: dict[bool, list[str]] = {False: [], True: []}
    losses = []
    device = next(host.parameters()).device
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = list(examples[start : start + batch_size])
            batch = {k: v.to(device) for k, v in collate_speech(part, []).items()}
            losses.append(float(transducer_loss(model, batch, augment=False, routes=routes, ctc=False)) * len(part))
            # Encode once; a cascade's second pass starts from the same first-pass encodings.
            first, enc_lengths = host.transcriber(batch["features"], batch["lengths"])  # (B, T', D)
            passes = {False: host.second_pass(first, enc_lengths)[0], True: first} if host.cascaded else {False: first}
            for first_pass, encodings in passes.items():
                names = _adapter_names(batch, routes)
                tokens = decode_encodings(model, encodings, enc_lengths, beam_width=beam_width, adapters=names)
                hypotheses[first_pass] += [tokenizer.decode(h) for h in tokens]
    references = [e.text for e in examples]
    out = {"loss": sum(losses) / len(examples), **error_rates(references, hypotheses[False])}
    if host.cascaded:
        out.update({f"first_pass_{k}": v for k, v in error_rates(references, hypotheses[True]).items()})
    return out


def _adapter_names(batch: dict[str, torch.Tensor], routes: dict[int, str] | None) -> list[str] | None:
    return None if routes is None else [routes[language] for language in batch["language"].tolist()]


def decode_encodings(
    model: nn.Module,
    encodings: torch.Tensor,
    lengths: torch.Tensor,
    *,
    beam_width: int = 1,
    adapters: Sequence[str | None] | None = None,
) -> list[list[int]]:
    """Hypotheses (piece ids) of a batch of encoder output: batched greedy search, or beam search.

    Greedy search decodes the whole batch under the active composition (a ``Route`` covers its
    rows). Beam search batches one row's hypotheses, not the rows, so it searches row by row;
    with ``adapters`` it first activates row ``i``'s adapter ``adapters[i]`` (``None``: the base).

    Args:
        model: A :class:`ConformerTransducer` or an ``AdaptedModel`` of one.
        encodings: Encoder output ``(B, T, D)``, computed through each row's adapter.
        lengths: Valid frames per row ``(B,)``.
        beam_width: 1 for greedy search; more for torchaudio's beam search.
        adapters: Each row's adapter name for beam search; ``None`` keeps the active composition.

    Raises:
        ValueError: If ``beam_width`` is below 1.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be at least 1, got {beam_width}")
    host = _host(model)
    if beam_width == 1:
        return greedy_search(host, encodings, lengths).tokens
    if adapters is None or not isinstance(model, AdaptedModel):
        return beam_search_encodings(host, encodings, lengths, beam_width=beam_width)
    out = []
    for i, name in enumerate(adapters):
        model.set_active(name)
        out += beam_search_encodings(host, encodings[i : i + 1], lengths[i : i + 1], beam_width=beam_width)
    return out


def pseudo_label(
    teacher: nn.Module,
    examples: Sequence[SpeechExample],
    tokenizer: SpeechTokenizer,
    *,
    batch_size: int = 16,
    routes: dict[int, str] | None = None,
    beam_width: int = 1,
) -> list[SpeechExample]:
    """Noisy-student labels: the teacher's hypotheses (whole-utterance) become the targets.

    The teacher runs in eval mode without SpecAugment; the student then trains on these examples
    with SpecAugment (:func:`transducer_loss` in training mode). Utterances the teacher leaves
    empty are dropped.

    Args:
        teacher: A transducer or an ``AdaptedModel`` of one (e.g. the base with the language's adapter).
        examples: Unlabelled examples (their ``text`` and ``targets`` are ignored).
        tokenizer: The tokenizer.
        batch_size: Utterances per decoding batch.
        routes: Language index to adapter name, as in :func:`transducer_loss`.
        beam_width: 1 labels with greedy search; more with beam search, one utterance at a time.
    """
    host = _host(teacher)
    device = next(host.parameters()).device
    out = []
    with eval_mode(teacher), torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = list(examples[start : start + batch_size])
            batch = {k: v.to(device) for k, v in collate_speech(part, []).items()}
            if routes is not None and isinstance(teacher, AdaptedModel):
                teacher.set_active(Route(batch["language"], routes))
            encodings, lengths = host.encode(batch["features"], batch["lengths"])  # (B, T', D)
            names = _adapter_names(batch, routes)
            hypotheses = decode_encodings(teacher, encodings, lengths, beam_width=beam_width, adapters=names)
            for example, tokens in zip(part, hypotheses, strict=True):
                if tokens:
                    out.append(dataclasses.replace(example, targets=tuple(tokens), text=tokenizer.decode(tokens)))
    return out


def train_transducer(
    model: nn.Module,
    train_examples: Sequence[SpeechExample],
    valid_examples: Sequence[SpeechExample],
    tokenizer: SpeechTokenizer,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    routes: dict[int, str] | None = None,
    save_fn: Any = None,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Trains a transducer (or its adapters) with the shared loop; evaluates ``valid_loss``/``valid_wer``.

    Batch normalisation layers whose parameters are frozen stay in eval mode, so training
    adapters never changes the base model's running statistics.

    Args:
        model: A :class:`ConformerTransducer` (trains what has ``requires_grad``) or an
            ``AdaptedModel`` of one after ``train_adapters(...)``.
        train_examples: Training examples.
        valid_examples: Examples for the periodic evaluation.
        tokenizer: The tokenizer (for WER).
        config: The loop's settings; ``best_metric`` may be ``valid_loss`` or ``valid_wer``.
        out_dir: Run directory (checkpoints, metrics, best model).
        routes: Language index to adapter name, for per-row adapters.
        save_fn: ``(model, directory) -> None`` for the best model.
        eval_fn: ``model -> metrics`` in place of the evaluation on ``valid_examples``.
        progress: Show a progress bar.
    """
    frozen_norms = [
        module
        for module in _host(model).modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not any(p.requires_grad for p in module.parameters())
    ]

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        for module in frozen_norms:  # a frozen base keeps its normalisation statistics (the loop calls train())
            module.eval()
        return transducer_loss(m, batch, routes=routes)

    def valid_fn(m: nn.Module) -> dict[str, float]:
        return {f"valid_{k}": v for k, v in evaluate(m, valid_examples, tokenizer, routes=routes).items()}

    return train(
        model,
        list(train_examples),
        collate_speech,
        loss_fn,
        config,
        out_dir=out_dir,
        eval_fn=eval_fn or (valid_fn if valid_examples else None),
        save_fn=save_fn,
        progress=progress,
        lengths=[example.features.shape[0] for example in train_examples],
    )


def save_transducer(
    model: ConformerTransducer,
    tokenizer: SpeechTokenizer,
    directory: str | os.PathLike[str],
    *,
    languages: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Writes ``model.safetensors``, ``tokenizer.model`` and then ``model.json`` (atomically each)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(out / "model.safetensors", st_save(tensors))
    tokenizer.save(out / "tokenizer.model")
    meta = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "config": model.config.to_dict(),
        "languages": list(languages),
        **(extra or {}),
    }
    atomic_write_json(out / "model.json", meta)
    return out


def load_transducer(directory: str | os.PathLike[str]) -> tuple[ConformerTransducer, SpeechTokenizer, dict[str, Any]]:
    """Reads a :func:`save_transducer` directory; returns the model (eval mode), tokenizer and metadata.

    Raises:
        MissingArtifactError: A missing file.
        SchemaVersionError: Another schema or version.
        CorruptArtifactError: Unreadable or mismatched tensors.
    """
    source = Path(directory)
    meta_path, weights = source / "model.json", source / "model.safetensors"
    for path in (meta_path, weights):
        if not path.is_file():
            raise MissingArtifactError(f"{path}: missing; pass a directory written by save_transducer")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as err:
        raise CorruptArtifactError(f"{meta_path}: not JSON ({err}); rewrite the model directory") from None
    if meta.get("schema") != SCHEMA or meta.get("version") != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{meta_path}: schema {meta.get('schema')!r} v{meta.get('version')!r}, expected {SCHEMA!r} "
            f"v{SCHEMA_VERSION}; use a matching library version"
        )
    config = ConformerTransducerConfig.from_dict(meta["config"])
    tokenizer = SpeechTokenizer.load(source / "tokenizer.model")
    if tokenizer.num_symbols != config.num_symbols:
        raise CorruptArtifactError(
            f"{source}: tokenizer has {tokenizer.num_symbols} symbols, model {config.num_symbols}; "
            "the files come from different models"
        )
    try:
        tensors = st_load(weights.read_bytes())
    except Exception as err:  # safetensors raises its own error types for truncated headers
        raise CorruptArtifactError(f"{weights}: unreadable ({err}); rewrite the model directory") from None
    model = ConformerTransducer(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CorruptArtifactError(f"{weights}: tensors do not fit the config ({first})") from None
    return model.eval(), tokenizer, meta
