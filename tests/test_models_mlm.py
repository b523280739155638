"""The masked-LM model built around a base: shared lower layers, copied top layers, targets-only loss."""

from __future__ import annotations

import pytest
import torch
from conftest import make_host, randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.models.mlm import (
    decode_tokens,
    mask_tokens,
    masked_lm_loss,
    mlm_from_base,
    mlm_trainable_names,
)
from polyglot_adapters.sites import unwrap


@pytest.fixture
def base() -> torch.nn.Module:
    return make_host("bert")


def test_lower_layers_are_shared_and_top_layers_copied(base: torch.nn.Module) -> None:
    mlm = mlm_from_base(base, retrain_top=1)
    assert mlm.bert.embeddings is base.embeddings
    assert mlm.bert.encoder.layer[0] is base.encoder.layer[0]
    assert mlm.bert.encoder.layer[1] is not base.encoder.layer[1]
    assert mlm.cls.predictions.decoder.weight is base.embeddings.word_embeddings.weight
    ids = torch.randint(3, 50, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(mlm.bert(input_ids=ids).last_hidden_state, base(input_ids=ids).last_hidden_state)
    names = mlm_trainable_names(mlm, retrain_top=1)
    assert names and all(n.startswith(("bert.encoder.layer.1.", "cls.predictions.")) for n in names)
    assert "cls.predictions.decoder.weight" not in names
    with pytest.raises(ConfigError):
        mlm_from_base(base, retrain_top=5)


def test_training_the_copy_leaves_the_embedding_path_alone(base: torch.nn.Module) -> None:
    mlm = mlm_from_base(base, retrain_top=1)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    trainable = set(mlm_trainable_names(mlm, retrain_top=1))
    for name, param in mlm.named_parameters():
        param.requires_grad_(name in trainable)
    ids = torch.randint(3, 50, (4, 9))
    corrupted, labels = mask_tokens(
        ids,
        torch.zeros_like(ids, dtype=torch.bool),
        mask_id=4,
        vocab_size=50,
        generator=torch.Generator().manual_seed(0),
        p=0.5,
    )
    optimizer = torch.optim.AdamW([p for p in mlm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss, _ = masked_lm_loss(mlm, corrupted, torch.ones_like(ids), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in base.named_parameters():
        assert torch.equal(param, before[name]), name


def test_targets_only_loss_equals_the_full_loss(base: torch.nn.Module) -> None:
    mlm = mlm_from_base(base)
    ids = torch.randint(3, 50, (3, 8))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    corrupted, labels = mask_tokens(
        ids, special, mask_id=4, vocab_size=50, generator=torch.Generator().manual_seed(1), p=0.4
    )
    assert (labels[:, 0] == -100).all() and (labels != -100).any()
    with torch.no_grad():
        ours, predictions = masked_lm_loss(mlm, corrupted, torch.ones_like(ids), labels)
        full = mlm(input_ids=corrupted, labels=labels)
    torch.testing.assert_close(ours, full.loss)
    assert torch.equal(predictions, full.logits[labels != -100].argmax(-1))


def test_language_adapter_with_invertible_part_on_the_mlm(base: torch.nn.Module) -> None:
    mlm = mlm_from_base(base)
    ids = torch.randint(3, 50, (2, 6))
    with torch.no_grad():
        reference = mlm(input_ids=ids).logits
    am = AdaptedModel(mlm)
    am.add_adapter("sw", BottleneckConfig.language())
    am.set_active("sw")
    with torch.no_grad():
        torch.testing.assert_close(am(input_ids=ids).logits, reference)
    assert "sw" in am.model.cls.predictions.shared


@pytest.mark.parametrize("inverse_at", ["head", "decoder"])
def test_invertible_inverse_site_and_decode_tokens_agree_with_the_full_head(
    base: torch.nn.Module, inverse_at: str
) -> None:
    am = AdaptedModel(mlm_from_base(base))
    am.add_adapter("sw", BottleneckConfig(invertible=True, inverse_at=inverse_at))
    am.set_active("sw")
    randomize(am)
    ids, tokens = torch.randint(3, 50, (2, 6)), torch.tensor([7, 3, 41])
    head = am.model.cls.predictions
    with torch.no_grad():
        full = am(input_ids=ids).logits
        hidden = am.model.bert(input_ids=ids).last_hidden_state
        coupling = am.model.bert.embeddings.adapters["sw"]
        transform = unwrap(head.transform)
        if inverse_at == "head":
            expected = unwrap(head).decoder(transform(coupling.inverse(hidden)))
        else:  # MAD-X / AdapterHub: after the head's transform, before the output embedding
            expected = head.decoder(coupling.inverse(transform(hidden)))
        torch.testing.assert_close(full, expected)
        torch.testing.assert_close(
            decode_tokens(am.model, hidden.reshape(-1, hidden.shape[-1]), tokens), full.reshape(-1, 50)[:, tokens]
        )


def test_decoder_inverse_on_an_xlm_roberta_head() -> None:
    am = AdaptedModel(make_host("xlm-roberta"))
    am.add_adapter("sw", BottleneckConfig(invertible=True, inverse_at="decoder"))
    am.set_active("sw")
    randomize(am)
    ids, tokens = torch.randint(3, 50, (2, 6)), torch.tensor([5, 9])
    head = am.model.lm_head
    with torch.no_grad():
        full = am(input_ids=ids).logits
        hidden = am.model.roberta(input_ids=ids).last_hidden_state
        coupling = am.model.roberta.embeddings.adapters["sw"]
        transformed = unwrap(head.layer_norm)(torch.nn.functional.gelu(head.dense(hidden)))
        torch.testing.assert_close(full, head.decoder(coupling.inverse(transformed)))
        rows = hidden.reshape(-1, hidden.shape[-1])  # (B*T, H)
        torch.testing.assert_close(decode_tokens(am.model, rows, tokens), full.reshape(-1, 50)[:, tokens])
