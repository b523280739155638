"""The ``demo`` command: a language adapter for a low-resource language, and a seconds-long smoke example.

:func:`run_language_demo` (``make demo``) builds the default base on first use, trains a MAD-X
language adapter on a low-resource language's UDHR text for a few minutes on CPU, and prints
held-out masked-LM loss and accuracy before and after, and where the adapter was saved.

:func:`run_demo` (``demo --smoke``) shows the whole adapter life cycle in seconds without any
download: add a language adapter and a LoRA adapter, stack them, train only them on a toy
masked-token task, save, reload into a fresh copy of the same base, and check the outputs agree
exactly.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from .composition import Stack
from .errors import ConfigError
from .methods.bottleneck import BottleneckConfig
from .methods.lora import LoraConfig
from .model import AdaptedModel

__all__ = ["DEMO_LANGUAGE", "DEMO_STEPS", "run_demo", "run_language_demo", "tiny_bert"]

DEMO_LANGUAGE = "sw"
# A few minutes of training on two CPU cores (measured in kg/RESULTS.md).
DEMO_STEPS = 100


def tiny_bert(*, vocab_size: int = 64, hidden: int = 32, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A small random ``BertForMaskedLM`` (no download).

    The initialiser range is large so that a frozen random head gives peaked logits and the
    adapters alone can fit the toy task; a real base needs no such choice.
    """
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=64,
        initializer_range=0.5,
    )
    return BertForMaskedLM(config).eval()


def _toy_batch(generator: torch.Generator, vocab: int, rows: int = 16, length: int = 12) -> tuple[torch.Tensor, ...]:
    """Sequences ``a, a+1, a+2, ...`` (mod vocab) with 15% of positions masked (token id 0)."""
    start = torch.randint(1, vocab, (rows, 1), generator=generator)
    ids = (start + torch.arange(length)) % (vocab - 1) + 1  # (rows, length), ids 1..vocab-1
    mask = torch.rand(rows, length, generator=generator) < 0.15
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    return ids.masked_fill(mask, 0), labels


def run_demo(*, out: Path | None = None, steps: int = 60, seed: int = 0, echo: Callable[[str], None] = print) -> dict:
    """Runs the smoke example and returns its figures.

    Args:
        out: Directory for the saved adapters (a temporary one if ``None``).
        steps: Training steps.
        seed: Random seed.
        echo: Where progress lines go.
    """
    host = tiny_bert(seed=seed)
    pristine = copy.deepcopy(host)
    am = AdaptedModel(host)
    am.add_adapter("lang", BottleneckConfig.language())
    am.add_adapter("task", LoraConfig(r=4, alpha=8, targets=("q", "v")))
    am.set_active(Stack("lang", "task"))
    trainable = am.train_adapters("lang", "task")
    n_train = sum(am.trainable_parameters()[n].numel() for n in trainable)
    echo(
        f"smoke example: tiny random BERT ({am.num_parameters():,} parameters), "
        f"adapters lang+task ({n_train:,} trainable)"
    )

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(am.trainable_parameters().values(), lr=1e-2)
    vocab = host.config.vocab_size
    am.train()
    losses = []
    for step in range(1, steps + 1):
        ids, labels = _toy_batch(generator, vocab)
        logits = am(input_ids=ids).logits  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, vocab), labels.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step == steps or step % max(1, steps // 5) == 0:
            echo(f"step {step:>4}/{steps}  loss {loss.item():.3f}")
    am.eval()

    tmp = None if out is not None else tempfile.TemporaryDirectory(prefix="polyglot-demo-")
    root = Path(out) if out is not None else Path(tmp.name)
    for name in ("lang", "task"):
        am.save_adapter(name, root / name)
    echo(f"saved adapters to {root}" + (" (temporary; pass --out DIR to keep them)" if tmp is not None else ""))

    fresh = AdaptedModel(pristine)
    for name in ("lang", "task"):
        fresh.load_adapter(root / name)
    fresh.set_active(Stack("lang", "task"))
    fresh.eval()
    ids, _ = _toy_batch(generator, vocab)
    with torch.no_grad():
        diff = (am(input_ids=ids).logits - fresh(input_ids=ids).logits).abs().max().item()
    echo(f"reloaded into a fresh copy of the base: max |difference| of logits = {diff:.3g}")
    if tmp is not None:
        tmp.cleanup()
    return {"first_loss": losses[0], "last_loss": losses[-1], "max_abs_diff": diff}


def run_language_demo(
    *,
    language: str = DEMO_LANGUAGE,
    steps: int = DEMO_STEPS,
    out: Path | None = None,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains a language adapter on the default masked-LM host and prints held-out figures before/after.

    Args:
        language: A UDHR language code or name.
        steps: Training steps (batch 8 windows of 128 tokens).
        out: Run directory; default ``out/demo/<language>``, replaced if a previous demo left it.
            An explicitly given directory with a checkpoint of the same settings resumes.
        seed: Random seed (adapter initialisation, data order, masking).
        echo: Where progress and result lines go.

    Returns:
        The run's report (see :func:`polyglot_adapters.training.language_adapter.train_language_adapter`).

    Raises:
        ConfigError: If the default directory exists and was not written by a previous demo.
    """
    from .data import resolve_language
    from .training.language_adapter import (
        default_masked_lm,
        language_adapter_train_config,
        report_lines,
        train_language_adapter,
    )

    lang = resolve_language(language)  # a bad code fails before the model loads
    if out is None:
        out = Path("out", "demo", lang.bcp47)
        if (out / "run.json").is_file():
            shutil.rmtree(out)  # a previous demo's run: train afresh instead of resuming at its end
        elif out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out}: exists and was not written by the demo; remove it or pass --out DIR")
    echo(f"language-adapter demo: {lang.name} ({lang.bcp47}), {steps} steps on the default base (built on first use)")
    model, tokenizer = default_masked_lm()
    config = language_adapter_train_config(steps=steps, seed=seed)
    result = train_language_adapter(
        model, tokenizer, lang, out_dir=out, train_config=config, model_name="default", log=echo
    )
    for line in report_lines(result.report, result.adapter_dir):
        echo(line)
    return result.report
