"""A CodeBERT-style base made here: a RoBERTa encoder trained with masked-LM loss on Python source.

No pretrained code encoder can be downloaded, so the toolkit makes one the way CodeBERT was made
(masked-LM training of a RoBERTa-architecture encoder on code). :func:`train_code_tokenizer`
trains a byte-level BPE tokenizer (RoBERTa's scheme, exact character offsets) on the corpus's
``train`` files; :func:`code_encoder` builds a RoBERTa masked-LM from a named size preset;
:func:`pretrain_code_base` trains any transformers masked-LM on the code corpus through the
shared loop (checkpoints, exact resume) and saves the result as a transformers directory that
:func:`load_code_base` (and every ``--model`` option) reads. Continuing a natural-language
encoder (CodeBERT's own recipe; e.g. the default multilingual base) is the same call with that
model and its tokenizer; a real CodeBERT directory works in place of the result through the
``roberta`` interface.

Example:
    >>> corpus = load_code_corpus()
    >>> tokenizer = train_code_tokenizer(f.text for f in corpus.split("train"))
    >>> model = code_encoder(tokenizer, preset="small")
    >>> pretrain_code_base(model, tokenizer, corpus, out_dir="runs/code-base",
    ...                    train_config=TrainConfig(steps=2000, lr=5e-4, warmup_steps=100, batch_size=16))
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write_json, staged_directory
from ..model import AdaptedModel
from ..training.config import TrainConfig
from ..training.language_adapter import (
    MaskedLmBatches,
    MaskedLmCollate,
    check_vocabulary,
    load_masked_lm,
    masked_lm_window_loss,
    pack_texts,
)
from ..training.loop import train
from .budget import fit_to_steps, steps_within
from .corpus import CodeCorpus

__all__ = [
    "ENCODER_PRESETS",
    "SPECIAL_TOKENS",
    "code_encoder",
    "load_code_base",
    "pretrain_code_base",
    "train_code_tokenizer",
]

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
"""RoBERTa's special tokens, with ids 0-4 in this order."""

ENCODER_PRESETS: dict[str, dict[str, int]] = {
    # Sized for CPU budgets: 3.2M non-embedding parameters, about 0.3 s per 16 x 128-token step on 2 cores.
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    # 25M non-embedding parameters: minutes on one accelerator.
    "medium": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=2048),
    # CodeBERT's own size (RoBERTa-base), for a machine with an accelerator.
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # For tests.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
}
REPORT_NAME = "report.json"


def train_code_tokenizer(texts: Iterable[str], *, vocab_size: int = 8192, min_frequency: int = 2) -> Any:
    """Trains a byte-level BPE tokenizer (RoBERTa's scheme) on source texts.

    Byte-level BPE has no unknown token and keeps every character (indentation, newlines), and
    its offsets map each token back to the exact source characters, which token-type labels need.

    Args:
        texts: Training sources (the corpus's ``train`` files only, so held-out modules stay unseen).
        vocab_size: Vocabulary size including the 256 bytes and the 5 special tokens.
        min_frequency: Fewest occurrences of a merged pair.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with RoBERTa's special tokens and framing
        (``<s> ... </s>``).
    """
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=512,
    )


def code_encoder(tokenizer: Any, *, preset: str = "small", max_positions: int = 512, seed: int = 0) -> nn.Module:
    """A freshly initialised RoBERTa masked-LM (``RobertaForMaskedLM``) sized by a preset.

    Args:
        tokenizer: Its tokenizer (vocabulary size, pad id).
        preset: One of :data:`ENCODER_PRESETS`.
        max_positions: Longest input in tokens.
        seed: Initialisation seed.

    Raises:
        ConfigError: An unknown preset.
    """
    from transformers import RobertaConfig, RobertaForMaskedLM

    if preset not in ENCODER_PRESETS:
        raise ConfigError(f"unknown encoder preset {preset!r}; presets: {sorted(ENCODER_PRESETS)}")
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_positions + tokenizer.pad_token_id + 1,  # RoBERTa counts positions after pad
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **ENCODER_PRESETS[preset],
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = RobertaForMaskedLM(config)
    return model.eval()


def load_code_base(path_or_name: str | os.PathLike[str]) -> tuple[nn.Module, Any]:
    """Loads a code base (a directory written by :func:`pretrain_code_base`, a CodeBERT directory, ``default``).

    Raises:
        BaseModelError: One line naming the directory and the fix.
    """
    return load_masked_lm(path_or_name)


def pretrain_code_base(
    model: nn.Module,
    tokenizer: Any,
    corpus: CodeCorpus,
    *,
    out_dir: str | os.PathLike[str],
    train_config: TrainConfig,
    max_length: int = 128,
    mask_probability: float = 0.15,
    eval_windows: int = 256,
    eval_rounds: int = 2,
    budget_seconds: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Trains every parameter of a masked-LM on the corpus's ``train`` files; keeps the model best on ``valid``.

    Source files are packed into ``max_length``-token windows. Writes into ``out_dir`` the loop's
    ``checkpoint/`` (a rerun resumes), ``best/`` and ``metrics.jsonl``, then ``model/`` (the
    transformers model and tokenizer, swapped in atomically) and ``report.json`` (held-out
    masked-LM loss and top-1 accuracy on ``valid`` and ``test`` windows before and after).

    Args:
        model: A transformers ``*ForMaskedLM`` (fresh from :func:`code_encoder`, or a natural-language
            encoder to continue, as CodeBERT continued RoBERTa).
        tokenizer: Its tokenizer.
        corpus: The code corpus.
        out_dir: Run directory.
        train_config: Loop settings; ``best_metric`` is set to ``valid_loss``.
        max_length: Tokens per window.
        mask_probability: BERT masking rate.
        eval_windows: Held-out windows per split (evenly spaced over the split), for speed.
        eval_rounds: Maskings of each held-out window.
        budget_seconds: Replace ``train_config.steps`` by the steps that fit in this many
            seconds of training on this machine (timed trial, :func:`.budget.steps_within`).
        log: Receives progress lines.

    Returns:
        The report.

    Raises:
        BaseModelError: The tokenizer does not fit the model.
        ConfigError: Invalid settings or an empty split.
    """
    say = log or (lambda _: None)
    check_vocabulary(model, tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    am = AdaptedModel(model)
    for p in am.model.parameters():
        p.requires_grad_(True)
    collate = MaskedLmCollate(tokenizer, mask_probability)
    windows = pack_texts(tokenizer, [f.text for f in corpus.split("train")], max_length)
    held_out = {}
    for split in ("valid", "test"):
        found = pack_texts(tokenizer, [f.text for f in corpus.split(split)], max_length)
        step = max(1, len(found) // eval_windows)
        held_out[split] = MaskedLmBatches(found[::step][:eval_windows], collate, prefix=split, rounds=eval_rounds)
    config = dataclasses.replace(train_config, best_metric="valid_loss", best_mode="min", out_dir=str(out))
    say(
        f"pretraining {sum(p.numel() for p in am.model.parameters()):,} parameters on "
        f"{sum(len(w) for w in windows):,} tokens ({len(windows)} windows of {max_length})"
    )
    before = {k: v for batches in held_out.values() for k, v in batches(am).items()}
    say(f"held-out before: {_metrics_line(before)}")
    if budget_seconds is not None:
        config = fit_to_steps(
            config, steps_within(budget_seconds, am, windows, collate, masked_lm_window_loss, config)
        )
        say(f"{config.steps} steps fit in {budget_seconds:g} s")
    started = time.perf_counter()
    result = train(
        am,
        windows,
        collate,
        masked_lm_window_loss,
        config,
        eval_fn=held_out["valid"],
        save_fn=lambda m, d: _save_pretrained(m.model, tokenizer, d),
    )
    seconds = time.perf_counter() - started
    best = out / "best"
    if result.best is not None and (best / "config.json").is_file():
        state = _read_state(best)
        am.model.load_state_dict(state, strict=False)
    after = {k: v for batches in held_out.values() for k, v in batches(am).items()}
    say(f"held-out after: {_metrics_line(after)}")
    _save_pretrained(am.model, tokenizer, out / "model")
    report = {
        "schema": "polyglot-adapters/code-base-report",
        "version": 1,
        "model_type": am.model.config.model_type,
        "parameters": sum(p.numel() for p in am.model.parameters()),
        "vocab_size": len(tokenizer),
        "train_config": config.to_dict(),
        "corpus": corpus.statistics(),
        "max_length": max_length,
        "train_windows": len(windows),
        "train_tokens": sum(len(w) for w in windows),
        "steps": result.steps,
        "best": result.best,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "before": before,
        "after": after,
    }
    atomic_write_json(out / REPORT_NAME, report)
    return report


def _metrics_line(metrics: dict[str, float]) -> str:
    return ", ".join(
        f"{s} loss {metrics[f'{s}_loss']:.3f} top-1 {100 * metrics[f'{s}_accuracy']:.1f}%" for s in ("valid", "test")
    )


def _read_state(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{directory}: holds no safetensors weights; delete the run directory to start over")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return state


def _save_pretrained(model: nn.Module, tokenizer: Any, directory: str | os.PathLike[str]) -> None:
    """``save_pretrained`` of model and tokenizer into a temporary sibling, then swapped in (never half-written)."""
    with staged_directory(directory) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
