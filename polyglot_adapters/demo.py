"""The ``demo`` command: the quickstart, a language adapter for a low-resource language, and a smoke example.

:func:`run_quickstart` (``make demo``) probes the default masked LM for facts of the CLDR
knowledge graph in English and three other languages (two low-resource), trains a knowledge
adapter for a few minutes on CPU, probes again and prints the before/after table and chart.

:func:`run_language_demo` (``make demo-language``) builds the default base on first use, trains a MAD-X
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

__all__ = [
    "DEMO_LANGUAGE",
    "DEMO_STEPS",
    "QUICKSTART_FACTS",
    "QUICKSTART_LANGUAGES",
    "QUICKSTART_STEPS",
    "run_demo",
    "run_language_demo",
    "run_quickstart",
    "tiny_bert",
]

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


QUICKSTART_LANGUAGES = ("en", "de", "sw", "yo")
"""English, a high-resource language, and two low-resource ones whose labels KG training does not use."""
QUICKSTART_STEPS = 150
QUICKSTART_FACTS = 12
"""Facts per relation and language probed before and after (8 relations, every template)."""


def run_quickstart(
    *,
    languages: tuple[str, ...] = QUICKSTART_LANGUAGES,
    steps: int = QUICKSTART_STEPS,
    per_relation: int = QUICKSTART_FACTS,
    out: Path | None = None,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The quickstart: probe the default model for facts, train a KG adapter for a few minutes, probe again.

    Probes the default masked LM on training facts of the CLDR knowledge graph in ``languages``
    (every template: natural prompt and paraphrases), trains a knowledge adapter with the
    masked-entity objective on the KG's training triples (labels in high-resource languages only),
    probes again with the adapter active, and prints the before/after table; writes the chart
    ``probe.png``, ``probe.json`` and the adapter under ``out``.

    Args:
        languages: Languages to probe.
        steps: Adapter training steps (batch 32).
        per_relation: Facts per relation and language to probe.
        out: Run directory; default ``out/quickstart``, replaced if a previous quickstart left it.
        seed: Seeds the fact sample, adapter initialisation and data order.
        echo: Where progress and result lines go.

    Returns:
        ``{"before": ..., "after": ..., "adapter": ..., "train_seconds": ...}``.

    Raises:
        ConfigError: If the default directory exists and was not written by a previous quickstart.
    """
    import time

    from .io import atomic_write_bytes
    from .kg import load_kg
    from .kg.masked import MaskedKGSettings, train_masked_kg_adapter
    from .models import default_mlm
    from .probing import ProbeSettings, format_table, json_bytes, probe_chart, probe_languages

    if out is None:
        out = Path("out", "quickstart")
        if (out / "quickstart.json").is_file() or (out / "run.json").is_file():
            shutil.rmtree(out)  # a previous quickstart: start afresh instead of resuming at its end
        elif out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out}: exists and was not written by the quickstart; remove it or pass --out DIR")
    kg = load_kg("cldr")
    settings = ProbeSettings(per_relation=per_relation, seed=seed, replicates=500)
    echo(f"quickstart: probing the default model for facts in {', '.join(languages)} (built on first use)")
    mlm, tokenizer = default_mlm()
    before = probe_languages(mlm, tokenizer, kg, languages, settings, progress=True, echo=lambda s: echo(f"  {s}"))
    echo(f"training a knowledge adapter on the KG's training triples for {steps} steps")
    started = time.perf_counter()
    result = train_masked_kg_adapter(
        mlm, tokenizer, kg, MaskedKGSettings(steps=steps, lr=2e-3, seed=seed), out_dir=out, name="kg", progress=True
    )
    train_seconds = time.perf_counter() - started
    model = result.model.eval()
    after = probe_languages(model, tokenizer, kg, languages, settings, progress=True, echo=lambda s: echo(f"  {s}"))
    results = {"base": before, "+kg": after}
    echo(format_table(results, metrics=("p@1", "mrr", "consistency")))
    report = {"before": before, "after": after, "adapter": str(result.adapter_dir), "train_seconds": train_seconds}
    atomic_write_bytes(out / "probe.png", probe_chart(results, title="facts: p@1 and consistency, base vs +kg"))
    atomic_write_bytes(out / "quickstart.json", json_bytes(report))
    echo(f"adapter: {result.adapter_dir}  chart: {out / 'probe.png'}  ({train_seconds:.0f} s of training)")
    return report
