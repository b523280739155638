"""P-Adapters: identity at init, kept and padded positions, slots, relation prompts, routing, save/load, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import make_host, randomize
from torch import nn

from polyglot_adapters import AdaptedModel
from polyglot_adapters.config import config_from_dict
from polyglot_adapters.errors import AdapterNotFoundError, ConfigError
from polyglot_adapters.interfaces import PRESETS
from polyglot_adapters.methods.p_adapter import (
    PAdapterConfig,
    PAdapterLayer,
    PromptInputError,
    PromptInputs,
    prompt_inputs,
    router_loss,
)

H = 16
P = 3
VOCAB = 50


def _adapted(config: PAdapterConfig, kind: str = "bert-mlm") -> AdaptedModel:
    am = AdaptedModel(make_host(kind))
    am.add_adapter("p", config)
    am.set_active("p")
    return am


def _site(am: AdaptedModel) -> nn.Module:
    return am.model.bert.embeddings


def _layer(am: AdaptedModel) -> PAdapterLayer:
    return _site(am).adapters["p"]


def _ids(rows: int = 4, steps: int = 9, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (rows, steps), generator=torch.Generator().manual_seed(seed))


CONFIGS = {
    "rewrite": PAdapterConfig.rewrite(hidden=8),
    "prefix": PAdapterConfig.prefix(P, hidden=8),
    "ptuning": PAdapterConfig.ptuning(5, P),
    "moe": PAdapterConfig.moe(5, P),
}


# ------------------------------------------------------------------ config
def test_config_presets_round_trip_and_validate() -> None:
    assert PAdapterConfig.rewrite() == PAdapterConfig()
    assert PAdapterConfig.prefix(6).prompt_length == 6
    assert PAdapterConfig.ptuning(41).num_relations == 41
    for config in CONFIGS.values():
        assert config_from_dict(config.to_dict()) == config
    for bad in (
        dict(variant="ptuning"),
        dict(variant="moe", num_relations=0),
        dict(variant="rewrite", num_relations=3),
        dict(variant="soft"),
        dict(hidden=0),
        dict(prompt_length=True),
    ):
        with pytest.raises(ConfigError):
            PAdapterConfig(**bad)
    with pytest.raises(ConfigError, match="num_relations > 0"):
        PAdapterConfig.ptuning(0)


# ------------------------------------------------------------------ rewrite
def test_fresh_rewrite_is_the_identity_exactly() -> None:
    ids = _ids()
    pristine = make_host()(input_ids=ids).logits
    am = _adapted(PAdapterConfig.rewrite(hidden=8))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, 2] = True
    with torch.no_grad():
        assert torch.equal(am(input_ids=ids).logits, pristine)
        with prompt_inputs(am, keep=keep, attention_mask=mask):
            assert torch.equal(am(input_ids=ids).logits, pristine)


def test_rewrite_matches_nn_lstm_formula() -> None:
    am = _adapted(PAdapterConfig.rewrite(hidden=5))
    am.train_adapters("p")
    randomize(am, seed=3)
    layer = _layer(am)
    lstm = nn.LSTM(H, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            param.copy_(getattr(layer, "pa_lstm_" + name.replace("_l0", "")))
    y = torch.randn(2, 7, H)
    hidden = torch.relu(lstm(y)[0] @ layer.pa_mlp_in.T + layer.pa_mlp_in_bias)
    expected = y + hidden @ layer.pa_mlp_out.T + layer.pa_mlp_out_bias
    torch.testing.assert_close(layer(y, y, None), expected)


def test_keep_positions_stay_after_training() -> None:
    am = _adapted(PAdapterConfig.rewrite(hidden=8))
    am.train_adapters("p")
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, 3:5] = True
    base = _site(am).base_layer(input_ids=ids).detach()
    target = torch.randn_like(base)
    optimizer = torch.optim.Adam(list(am.trainable_parameters().values()), lr=1e-2)
    for _ in range(3):
        with prompt_inputs(am, keep=keep, attention_mask=mask):
            loss = (_site(am)(input_ids=ids) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad(), prompt_inputs(am, keep=keep, attention_mask=mask):
        out = _site(am)(input_ids=ids)
    unchanged = keep | (mask == 0)
    assert torch.equal(out[unchanged], base[unchanged])
    assert (out[~unchanged] - base[~unchanged]).abs().amax(-1).min() > 0
    # Without a keep mask, rewrite rewrites every position.
    with torch.no_grad():
        assert (_site(am)(input_ids=ids) - base).abs().amax(-1).min() > 0


# ------------------------------------------------------------------ padding
@pytest.mark.parametrize("variant", ["rewrite", "prefix"])
def test_padding_does_not_leak_into_real_positions(variant: str) -> None:
    am = _adapted(CONFIGS[variant])
    am.train_adapters("p")
    randomize(am, seed=2, std=0.5)
    layer = _layer(am).eval()
    gen = torch.Generator().manual_seed(4)
    rows = [torch.randn(n, H, generator=gen) for n in (6, 9, 5)]
    steps = 12
    batch = torch.randn(3, steps, H, generator=gen) * 50  # padding: large garbage
    mask = torch.zeros(3, steps, dtype=torch.bool)
    batch[0, :6], mask[0, :6] = rows[0], True  # right padding
    batch[1, :9], mask[1, :9] = rows[1], True
    batch[2, :5], mask[2, :5] = rows[2], True
    with torch.no_grad():
        with prompt_inputs(am, attention_mask=mask):
            out = layer(batch, batch, None)
        for b, row in enumerate(rows):
            alone = layer(row[None], row[None], None)[0]
            torch.testing.assert_close(out[b, : len(row)], alone, rtol=0, atol=1e-5)
            with prompt_inputs(am, attention_mask=torch.ones(1, len(row), dtype=torch.long)):
                torch.testing.assert_close(layer(row[None], row[None], None)[0], alone, rtol=0, atol=1e-5)
    assert torch.equal(out[~mask], batch[~mask])


def test_rewrite_reads_only_real_positions_wherever_the_padding_is() -> None:
    am = _adapted(CONFIGS["rewrite"])
    am.train_adapters("p")
    randomize(am, seed=5, std=0.5)
    layer = _layer(am)
    row = torch.randn(5, H)
    padded = torch.full((1, 8, H), 30.0)
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    padded[0, mask[0]] = row
    with torch.no_grad(), prompt_inputs(am, attention_mask=mask):
        out = layer(padded, padded, None)
    with torch.no_grad():
        torch.testing.assert_close(out[0, mask[0]], layer(row[None], row[None], None)[0], rtol=0, atol=1e-5)


# ------------------------------------------------------------------ slots
@pytest.mark.parametrize("variant", ["prefix", "ptuning", "moe"])
def test_slot_variants_change_only_slots(variant: str) -> None:
    am = _adapted(CONFIGS[variant])
    ids = _ids()
    with torch.no_grad(), prompt_inputs(am, relations=torch.tensor([0, 1, 2, 4])):
        out = _site(am)(input_ids=ids)
        base = _site(am).base_layer(input_ids=ids)
    others = torch.ones(ids.shape[1], dtype=torch.bool)
    others[1 : 1 + P] = False
    assert torch.equal(out[:, others], base[:, others])
    assert (out[:, 1 : 1 + P] - base[:, 1 : 1 + P]).abs().amax(-1).min() > 0


def test_ptuning_rows_use_their_relations_prompt() -> None:
    am = _adapted(CONFIGS["ptuning"])
    relations = torch.tensor([3, 0, 3, 1])
    with torch.no_grad(), prompt_inputs(am, relations=relations):
        out = _site(am)(input_ids=_ids())
    assert torch.equal(out[:, 1 : 1 + P], _layer(am).pa_prompts[relations])


def test_prefix_slots_depend_on_the_prompt() -> None:
    am = _adapted(CONFIGS["prefix"])
    ids = _ids(2)
    ids[1] = ids[0]
    ids[1, -1] = (ids[0, -1] + 1) % VOCAB
    with torch.no_grad():
        out = _site(am)(input_ids=ids)
    assert not torch.allclose(out[0, 1 : 1 + P], out[1, 1 : 1 + P])


# ------------------------------------------------------------------ moe
def _separable_batch(rows: int, relations: int, steps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose prompt tokens come from a vocabulary range of their relation; slots hold token 1."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(rows) % relations
    width = (VOCAB - 3) // relations
    ids = 3 + labels[:, None] * width + torch.randint(0, width, (rows, steps), generator=gen)
    ids[:, 0] = 2
    ids[:, 1 : 1 + P] = 1
    return ids, labels


def test_moe_picks_argmax_prompt_at_eval_and_true_prompt_in_training() -> None:
    am = _adapted(CONFIGS["moe"])
    ids, labels = _separable_batch(6, 5)
    layer = _layer(am)
    with torch.no_grad(), prompt_inputs(am, relations=labels):
        am.eval()
        out = _site(am)(input_ids=ids)
        chosen = layer.router_logits.argmax(-1)
        assert torch.equal(out[:, 1 : 1 + P], layer.pa_prompts[chosen])
        am.train()
        out = _site(am)(input_ids=ids)
        assert torch.equal(out[:, 1 : 1 + P], layer.pa_prompts[labels])
    assert layer.router_logits.shape == (6, 5)


def test_router_loss_decreases_on_a_separable_task() -> None:
    am = _adapted(CONFIGS["moe"])
    am.train_adapters("p")
    am.train()
    ids, labels = _separable_batch(30, 3)
    optimizer = torch.optim.Adam(list(am.trainable_parameters().values()), lr=0.1)
    losses = []
    for _ in range(30):
        with prompt_inputs(am, relations=labels):
            am(input_ids=ids)
        loss = router_loss(am, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    am.eval()
    with torch.no_grad():
        am(input_ids=ids)
    assert (_layer(am).router_logits.argmax(-1) == labels).float().mean() >= 0.9


# ------------------------------------------------------------------ training, saving
@pytest.mark.parametrize("variant", list(CONFIGS))
def test_gradients_reach_only_p_adapter_parameters(variant: str) -> None:
    am = _adapted(CONFIGS[variant])
    trainable = am.train_adapters("p")
    assert trainable and all(n.rsplit(".", 1)[-1].startswith("pa_") for n in trainable)
    am.train()
    ids = _ids()
    relations = torch.tensor([0, 2, 2, 4])
    with prompt_inputs(am, relations=relations, attention_mask=torch.ones_like(ids)):
        loss = am(input_ids=ids).logits.logsumexp(-1).mean()
        if variant == "moe":
            loss = loss + router_loss(am, relations)
    loss.backward()
    params = dict(am.model.named_parameters())
    assert all(params[n].grad is not None for n in trainable)
    assert all(p.grad is None for n, p in params.items() if n not in trainable)
    if variant in ("ptuning", "moe"):
        used = _layer(am).pa_prompts.grad.flatten(1).abs().sum(1) > 0
        assert used.tolist() == [True, False, True, False, True]


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_save_load_gives_identical_outputs(variant: str, tmp_path) -> None:
    am = _adapted(CONFIGS[variant])
    am.train_adapters("p")
    randomize(am, seed=7)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[3, 6:] = 0
    keep = torch.zeros_like(mask)
    keep[:, -2] = 1
    inputs = dict(keep=keep, attention_mask=mask, relations=torch.tensor([1, 0, 4, 2]))
    with torch.no_grad(), prompt_inputs(am, **inputs):
        expected = am(input_ids=ids, attention_mask=mask).logits
    am.save_adapter("p", tmp_path / "p")
    other = AdaptedModel(make_host())
    other.load_adapter(tmp_path / "p")
    other.set_active("p")
    with torch.no_grad(), prompt_inputs(other, **inputs):
        assert torch.equal(other(input_ids=ids, attention_mask=mask).logits, expected)


# ------------------------------------------------------------------ inputs and errors
def test_prompt_inputs_are_scoped_and_restored_on_errors() -> None:
    am = _adapted(CONFIGS["ptuning"])
    layer = _layer(am)
    outer, inner = torch.tensor([1, 1]), torch.tensor([2, 3])
    with prompt_inputs(am, relations=outer):
        with pytest.raises(RuntimeError, match="boom"), prompt_inputs(am, relations=inner):
            assert layer.inputs.relations is inner
            raise RuntimeError("boom")
        assert layer.inputs.relations is outer
    assert layer.inputs == PromptInputs()


def test_bad_inputs_raise_one_line_errors() -> None:
    ids = _ids()
    am = _adapted(CONFIGS["ptuning"])
    with pytest.raises(PromptInputError, match="needs relation ids"):
        am(input_ids=ids)
    with pytest.raises(PromptInputError, match="relation id 5 is out of range"):
        with prompt_inputs(am, relations=torch.tensor([0, 1, 5, 2])):
            pass
    with pytest.raises(PromptInputError, match="relation id -1"):
        with prompt_inputs(am, relations=torch.tensor([0, -1, 1, 2])):
            pass
    with pytest.raises(PromptInputError, match=r"got 3 relation ids for a batch of 4 rows"):
        with prompt_inputs(am, relations=torch.tensor([0, 1, 2])):
            am(input_ids=ids)
    with pytest.raises(PromptInputError, match="integer ids"):
        with prompt_inputs(am, relations=torch.tensor([0.0, 1.0, 2.0, 3.0])):
            pass
    with pytest.raises(PromptInputError, match="fall on padding"):
        mask = torch.ones_like(ids)
        mask[0, 2:] = 0
        with prompt_inputs(am, relations=torch.zeros(4, dtype=torch.long), attention_mask=mask):
            am(input_ids=ids, attention_mask=mask)
    with pytest.raises(PromptInputError, match="slots at positions"):
        with prompt_inputs(am, relations=torch.zeros(4, dtype=torch.long)):
            am(input_ids=ids[:, :P])

    am = _adapted(CONFIGS["rewrite"])
    with pytest.raises(PromptInputError, match=r"keep is \(4, 8\) but the batch is \(4, 9\)"):
        with prompt_inputs(am, keep=torch.zeros(4, 8, dtype=torch.bool)):
            am(input_ids=ids)
    with pytest.raises(PromptInputError, match=r"must be a \(B, T\) tensor"):
        with prompt_inputs(am, keep=torch.zeros(4, dtype=torch.bool)):
            pass
    with pytest.raises(PromptInputError, match="bool or integer"):
        with prompt_inputs(am, attention_mask=torch.ones(4, 9)):
            pass
    with pytest.raises(PromptInputError, match="differ in shape"):
        with prompt_inputs(am, keep=torch.zeros(4, 9, dtype=torch.bool), attention_mask=torch.ones(4, 8).long()):
            pass
    with pytest.raises(AdapterNotFoundError, match="no moe p_adapter"):
        router_loss(am, torch.zeros(4, dtype=torch.long))
    with pytest.raises(AdapterNotFoundError, match="no p_adapter"):
        with prompt_inputs(AdaptedModel(make_host()), keep=torch.zeros(4, 9, dtype=torch.bool)):
            pass

    am = _adapted(CONFIGS["moe"])
    with pytest.raises(PromptInputError, match="has not run"):
        router_loss(am, torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        am(input_ids=ids)
    with pytest.raises(PromptInputError, match="router_loss got relations"):
        router_loss(am, torch.zeros(3, dtype=torch.long))

    no_embeddings = dataclasses.replace(PRESETS["bert"], embeddings=None)
    with pytest.raises(ConfigError, match="names no embedding module"):
        AdaptedModel(make_host("bert"), interface=no_embeddings).add_adapter("p", CONFIGS["rewrite"])
