"""The adapter pool: 1,000 registered adapters, 64 attached at a time, every row equal to running it alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, host_output, make_host, randomize
from test_training_and_interfaces import CONFORMER, conformer

from polyglot_adapters import AdaptedModel, AdapterPool, BottleneckConfig, LoraConfig
from polyglot_adapters.errors import AdapterNotFoundError, BaseModelMismatchError, ConfigError, CorruptArtifactError

LORA = LoraConfig(r=2, targets=("q", "v"))


def _random_adapters(count: int, config: LoraConfig | BottleneckConfig, seed: int) -> list[dict[str, torch.Tensor]]:
    """``count`` tensor sets of ``config`` on the tiny BERT, random (so every adapter changes the output)."""
    scratch = AdaptedModel(make_host("bert"))
    scratch.add_adapter("x", config)
    shapes = {key: value.shape for key, value in scratch.adapter_state_dict("x").items()}
    gen = torch.Generator().manual_seed(seed)
    return [{key: torch.randn(shape, generator=gen) * 0.3 for key, shape in shapes.items()} for _ in range(count)]


def _alone(
    tensors: dict[str, torch.Tensor],
    config: LoraConfig | BottleneckConfig,
    ids: torch.Tensor,
    am: AdaptedModel | None = None,
) -> torch.Tensor:
    """One adapter on its own, on a fresh copy of the host (or in ``am``'s adapter ``a`` of the same config)."""
    if am is None:
        am = AdaptedModel(make_host("bert"))
        am.add_adapter("a", config)
    with torch.no_grad():
        for key, param in am.adapter_state_dict("a").items():
            param.copy_(tensors[key])
        am.set_active("a")
        return host_output(am, ids)


def test_a_thousand_adapters_through_a_pool_of_64() -> None:
    adapters = _random_adapters(1000, LORA, seed=0)
    am = AdaptedModel(make_host("bert"))
    pool = AdapterPool(am, capacity=64)
    for i, tensors in enumerate(adapters):
        assert pool.register(f"lang{i}", LORA, tensors) == i
    assert len(pool) == 1000 and not pool.resident and not am.adapters
    per_adapter = sum(t.numel() for t in adapters[0].values())
    reference = AdaptedModel(make_host("bert"))
    reference.add_adapter("a", LORA)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, TINY["vocab_size"], (64, 5), generator=gen)
    for batch in range(3):
        rows = torch.randint(0, 1000, (64,), generator=gen)
        with torch.no_grad():
            out = host_output_of(pool.run(rows, input_ids=ids))
        assert len(pool.resident) <= 64 and len(am.adapters) <= 64
        assert sum(am.num_parameters(name) for name in am.adapters) <= 64 * per_adapter
        checked = range(64) if batch == 0 else range(0, 64, 9)
        for row in checked:
            expected = _alone(adapters[int(rows[row])], LORA, ids[row : row + 1], reference)
            torch.testing.assert_close(out[row : row + 1], expected, rtol=1e-5, atol=1e-5)


def host_output_of(out: object) -> torch.Tensor:
    return out.last_hidden_state  # type: ignore[attr-defined]


def test_least_recently_used_adapters_are_evicted_and_reloaded_transparently() -> None:
    adapters = _random_adapters(6, LORA, seed=2)
    am = AdaptedModel(make_host("bert"))
    pool = AdapterPool(am, capacity=3)
    for i, tensors in enumerate(adapters):
        pool.register(f"a{i}", LORA, tensors)
    ids = torch.randint(3, TINY["vocab_size"], (3, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        first = host_output_of(pool.run(["a0", "a1", "a0"], input_ids=ids))
        pool.run([2, 2, 2], input_ids=ids)
        assert pool.resident == ("a0", "a1", "a2")
        pool.run(["a1", "a3", "a1"], input_ids=ids)  # a0 is the least recently used: evicted
        assert pool.resident == ("a2", "a1", "a3") and "a0" not in am.adapters
        again = host_output_of(pool.run(["a0", "a1", "a0"], input_ids=ids))  # a0 reloaded from CPU memory
    assert torch.equal(again, first)
    assert pool.resident == ("a3", "a0", "a1")


def test_mixed_methods_saved_adapters_and_the_asr_encoder(tmp_path: Path) -> None:
    am = AdaptedModel(make_host("bert"))
    saver = AdaptedModel(make_host("bert"))
    configs = {"lo": LoraConfig(r=3), "bn": BottleneckConfig(positions=("ffn",), reduction_factor=4)}
    for name, config in configs.items():
        saver.add_adapter(name, config)
    saver.train_adapters(*configs)  # randomize() touches only trainable parameters: the adapters'
    randomize(saver)
    for name in configs:
        saver.save_adapter(name, tmp_path / name)
    pool = AdapterPool(am, capacity=2)
    assert [pool.register_saved(tmp_path / name) for name in configs] == [0, 1]
    ids = torch.randint(3, TINY["vocab_size"], (4, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = host_output_of(pool.run(["bn", "lo", "lo", "bn"], input_ids=ids))
        for row, name in enumerate(["bn", "lo", "lo", "bn"]):
            saver.set_active(name)
            torch.testing.assert_close(
                out[row : row + 1], host_output(saver, ids[row : row + 1]), rtol=1e-5, atol=1e-5
            )

    # The speech encoder: blocks see (T, B, D), so rows are along dimension 1 inside the host.
    feats, lengths = torch.randn(3, 11, 16), torch.tensor([11, 11, 11])
    speech = AdaptedModel(conformer(), interface=CONFORMER)
    scratch = AdaptedModel(conformer(), interface=CONFORMER)
    config = BottleneckConfig(placement="parallel", positions=("ffn1", "ffn2"), reduction_factor=4)
    pool = AdapterPool(speech, capacity=2)
    for name in ("sw", "am", "yo"):
        scratch.add_adapter(name, config)
    scratch.train_adapters("sw", "am", "yo")
    randomize(scratch)
    for name in ("sw", "am", "yo"):
        pool.register(name, config, scratch.adapter_state_dict(name), base=scratch.base_fingerprint)
    with torch.no_grad():
        routed, _ = pool.run(["yo", "sw", "yo"], feats, lengths)
        for row, name in enumerate(["yo", "sw", "yo"]):
            scratch.set_active(name)
            alone, _ = scratch(feats[row : row + 1], lengths[row : row + 1])
            torch.testing.assert_close(routed[row : row + 1], alone, rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    am = AdaptedModel(make_host("bert"))
    pool = AdapterPool(am, capacity=2)
    tensors = _random_adapters(3, LORA, seed=5)
    for i in range(3):
        pool.register(f"a{i}", LORA, tensors[i])
    ids = torch.randint(3, TINY["vocab_size"], (3, 4))
    with pytest.raises(AdapterNotFoundError, match=r"row 1: adapter id 3 is out of range.*ids 0-2"):
        pool.run([0, 3, 1], input_ids=ids)
    with pytest.raises(AdapterNotFoundError, match="row 2: no adapter named 'zz'"):
        pool.run(["a0", "a1", "zz"], input_ids=ids)
    with pytest.raises(AdapterNotFoundError, match="out of range"):
        pool.run([0, -1, 1], input_ids=ids)
    with pytest.raises(ConfigError, match="uses 3 distinct adapters but the pool attaches at most 2"):
        pool.run([0, 1, 2], input_ids=ids)
    assert len(am.adapters) <= 2
    with pytest.raises(ConfigError, match="already has an adapter named 'a0'"):
        pool.register("a0", LORA, tensors[0])
    with pytest.raises(CorruptArtifactError, match="do not match the config"):
        pool.register("b", LoraConfig(r=4), tensors[0])
    with pytest.raises(ConfigError, match="capacity must be a positive integer"):
        AdapterPool(am, capacity=0)
    # An adapter saved for another base (a RoBERTa host) cannot join this pool.
    other = AdaptedModel(make_host("roberta"))
    other.add_adapter("r", LORA)
    other.save_adapter("r", tmp_path / "r")
    with pytest.raises(BaseModelMismatchError, match=str(tmp_path / "r")):
        pool.register_saved(tmp_path / "r")
    assert pool.names == ("a0", "a1", "a2")
    with torch.no_grad():  # the pool still works after every refusal
        out = host_output_of(pool.run([1, 0, 1], input_ids=ids))
    torch.testing.assert_close(out[:1], _alone(tensors[1], LORA, ids[:1]), rtol=1e-5, atol=1e-5)
