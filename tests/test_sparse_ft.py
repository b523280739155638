"""Sparse fine-tuning: config, closed forms, the value gradient, LT-SFT phases and SparseDiff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, host_output, make_host, randomize
from safetensors.torch import load_file
from torch.nn import functional as F

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, Stack
from polyglot_adapters.errors import (
    AdapterNotFoundError,
    BaseModelMismatchError,
    ConfigError,
    CorruptArtifactError,
    SchemaVersionError,
)
from polyglot_adapters.interfaces import find_interface
from polyglot_adapters.io import fingerprint
from polyglot_adapters.methods.sparse_ft import (
    SparseDiff,
    SparseDiffError,
    SparseFTConfig,
    decode_mask,
    encode_mask,
)
from polyglot_adapters.methods.sparse_ft.lt_sft import select_mask, train_lt_sft, values_in_weights
from polyglot_adapters.training import TrainConfig

Q0 = "encoder.layer.0.attention.self.query"
FFN1 = "encoder.layer.1.output.dense"


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def base_of(model: torch.nn.Module) -> dict:
    return fingerprint(model, find_interface(model, None))


def random_diff(model: torch.nn.Module, keys: dict[str, tuple[int, ...]], k: int, seed: int) -> SparseDiff:
    gen = torch.Generator().manual_seed(seed)
    entries = {}
    for key, shape in keys.items():
        size = int(torch.tensor(shape).prod())
        idx = torch.randperm(size, generator=gen)[:k].sort().values
        entries[key] = (shape, idx, torch.randn(idx.numel(), generator=gen) * 0.3)
    return SparseDiff(base=base_of(model), entries=entries)


KEYS = {f"{Q0}.weight": (16, 16), f"{FFN1}.weight": (16, 32), "embeddings.LayerNorm.bias": (16,)}


# ------------------------------------------------------------------ config
def test_config_round_trips_through_json_with_its_mask() -> None:
    positions = {Q0: torch.tensor([0, 3, 4, 255]), FFN1: torch.tensor([], dtype=torch.long)}
    config = SparseFTConfig(targets=("q", "ffn_out"), density=7, l1=0.01).with_mask(positions)
    again = SparseFTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert {k: v.tolist() for k, v in again.positions().items()} == {Q0: [0, 3, 4, 255], FFN1: []}
    assert torch.equal(decode_mask(encode_mask(torch.tensor([5, 2**31 + 7]))), torch.tensor([5, 2**31 + 7]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"density": 0},
        {"density": 1.5},
        {"density": True},
        {"l1": -1.0},
        {"targets": ()},
        {"mask": (("a", "not base64!"),)},
        {"mask": ((Q0, encode_mask(torch.tensor([1, 1, 2]))),)},
        {"mask": ((Q0, ""), (Q0, ""))},
    ],
)
def test_invalid_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        config = SparseFTConfig(**kwargs)
        config.positions()


def test_density_as_count_or_fraction() -> None:
    assert SparseFTConfig(density=0.25).count(100) == 25
    assert SparseFTConfig(density=1e-9).count(100) == 1
    assert SparseFTConfig(density=30).count(100) == 30
    with pytest.raises(ConfigError, match="exceeds"):
        SparseFTConfig(density=101).count(100)


def test_mask_outside_the_weight_or_the_targets_is_refused() -> None:
    am = AdaptedModel(make_host())
    with pytest.raises(ConfigError, match="outside"):
        am.add_adapter("a", SparseFTConfig(targets=("q",)).with_mask({Q0: torch.tensor([256])}))
    with pytest.raises(ConfigError, match="targets do not select"):
        am.add_adapter("a", SparseFTConfig(targets=("v",)).with_mask({Q0: torch.tensor([1])}))
    assert not am.adapters


# ------------------------------------------------------------ closed forms
def test_phase2_adapter_equals_the_weights_plus_its_diff(ids: torch.Tensor) -> None:
    positions = {Q0: torch.tensor([0, 17, 100, 255]), FFN1: torch.arange(0, 512, 5)}
    am = AdaptedModel(make_host())
    am.add_adapter("a", SparseFTConfig(targets=("q", "ffn_out")).with_mask(positions))
    am.set_active("a")
    with torch.no_grad():
        for name, p in am.model.named_parameters():
            if name.endswith("sft_values"):
                p.copy_(torch.linspace(-1, 1, p.numel()))
    diff = SparseDiff.from_adapter(am, "a")
    assert set(diff.entries) == {f"{Q0}.weight", f"{FFN1}.weight"} and diff.nnz == 4 + 103
    plain = make_host()
    diff.apply(plain)
    with torch.no_grad():
        torch.testing.assert_close(host_output(am, ids), host_output(plain, ids), rtol=1e-5, atol=1e-5)


def test_phase2_gradient_is_the_dense_gradient_at_the_positions_and_no_dense_gradient_exists(
    ids: torch.Tensor,
) -> None:
    positions = {Q0: torch.tensor([1, 2, 40, 77, 200]), FFN1: torch.tensor([0, 31, 32, 511])}
    am = AdaptedModel(make_host())
    am.add_adapter("a", SparseFTConfig(targets=("q", "ffn_out")).with_mask(positions))
    am.set_active("a")
    am.train_adapters("a")
    host_output(am, ids).square().mean().backward()
    assert all(p.grad is None for n, p in am.model.named_parameters() if "sft_" not in n)
    grads = {n.split(".adapters.")[0]: p.grad for n, p in am.model.named_parameters() if "sft_" in n}

    dense = make_host()
    dense.requires_grad_(False)
    weights = {key: dense.get_submodule(f"bert.{key}").weight for key in positions}
    for w in weights.values():
        w.requires_grad_(True)
    host_output(dense, ids).square().mean().backward()
    for key, idx in positions.items():
        torch.testing.assert_close(grads[f"bert.{key}"], weights[key].grad.view(-1)[idx], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- LT-SFT
def test_select_mask_takes_the_global_top_k_of_the_phase1_change() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("a", SparseFTConfig(targets=("q", "ffn_out"), density=50))
    am.train_adapters("a")
    randomize(am, seed=1)
    deltas = {n: p.detach() for n, p in am.trainable_parameters().items()}
    config = select_mask(am, "a")
    flat = torch.cat([d.reshape(-1) for d in deltas.values()]).abs()
    threshold = flat.topk(50).values[-1]
    chosen = config.positions()
    assert sum(v.numel() for v in chosen.values()) == 50
    for name, delta in deltas.items():
        key = name.split(".adapters.")[0].removeprefix("bert.")
        expected = (delta.reshape(-1).abs() >= threshold).nonzero().squeeze(1)
        assert torch.equal(chosen.get(key, torch.empty(0, dtype=torch.long)), expected)
    with pytest.raises(ConfigError, match="phase-1"):
        am2 = AdaptedModel(make_host())
        am2.add_adapter("b", config)
        select_mask(am2, "b")


def _mlm_task() -> tuple[list[torch.Tensor], object, object]:
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(3, TINY["vocab_size"], (9,), generator=gen) for _ in range(8)]

    def collate(examples: list[torch.Tensor], seeds: list[int]) -> torch.Tensor:
        return torch.stack(examples)

    def loss_fn(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=batch).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch.reshape(-1))

    return data, collate, loss_fn


def test_lt_sft_trains_only_the_selected_values_and_leaves_the_base_untouched(tmp_path: Path) -> None:
    data, collate, loss_fn = _mlm_task()
    host = make_host()
    pristine = state(host)
    am = AdaptedModel(host)
    with torch.no_grad():
        before = float(loss_fn(am, collate(data, [])))
    config = SparseFTConfig(targets=("q", "v", "ffn_out"), density=0.05, l1=1e-4)
    phase = TrainConfig(steps=6, lr=5e-2, batch_size=4, log_every=1)
    result = train_lt_sft(am, "sft", config, data, collate, loss_fn, phase, phase, out_dir=tmp_path, progress=False)
    total = 2 * (16 * 16 * 2 + 16 * 32)
    assert result.selected == round(0.05 * total) == am.num_parameters("sft")
    assert am.adapters["sft"] == result.config and result.config.mask is not None
    assert [n.rsplit(".", 1)[-1] for n in am.trainable_parameters()] == ["sft_values"] * len(result.config.mask)
    with torch.no_grad():
        after = float(loss_fn(am, collate(data, [])))
    assert after < before
    # The phase-2 checkpoint holds the values and their AdamW moments only: K entries each.
    ckpt = load_file(tmp_path / "phase2" / "checkpoint" / "state.safetensors")
    floats = sum(t.numel() for t in ckpt.values() if t.dtype.is_floating_point and t.ndim == 1 and t.numel() > 1)
    assert floats == 3 * result.selected
    # The base weights never changed: switching the adapter off gives the untouched host.
    am.set_active(None)
    assert_same_state(am.unload(), pristine)


def test_lt_sft_refuses_more_entries_than_its_targets_hold_before_training() -> None:
    data, collate, loss_fn = _mlm_task()
    host = make_host()
    pristine = state(host)
    am = AdaptedModel(host)
    phase = TrainConfig(steps=1, lr=1e-2, batch_size=4)
    config = SparseFTConfig(targets=("q",), density=2 * 16 * 16 + 1)  # 2 blocks of 16 x 16 query weights
    with pytest.raises(ConfigError, match="exceeds the 512 targeted entries"):
        train_lt_sft(am, "sft", config, data, collate, loss_fn, phase, phase, progress=False)
    assert not am.adapters
    assert_same_state(am.unload(), pristine)


def test_lt_sft_trains_under_a_composition_over_a_language_adapter() -> None:
    data, collate, loss_fn = _mlm_task()
    am = AdaptedModel(make_host())
    am.add_adapter("lang", BottleneckConfig())
    am.train_adapters("lang")
    randomize(am, seed=4)
    lang = {k: v.detach().clone() for k, v in am.adapter_state_dict("lang").items()}
    phase = TrainConfig(steps=2, lr=1e-2, batch_size=4)
    config = SparseFTConfig(targets=("ffn_out",), density=20)
    with pytest.raises(ConfigError, match="does not name"):
        train_lt_sft(am, "sft", config, data, collate, loss_fn, phase, phase, composition="lang", progress=False)
    assert "sft" not in am.adapters
    result = train_lt_sft(
        am, "sft", config, data, collate, loss_fn, phase, phase, composition=Stack("lang", "sft"), progress=False
    )
    assert am.active == Stack("lang", "sft") and result.selected == 20
    # Only the sparse values trained; the language adapter is as it was.
    assert all(torch.equal(v, lang[k]) for k, v in am.adapter_state_dict("lang").items())
    assert any(bool(v.abs().sum()) for v in am.adapter_state_dict("sft").values())


def test_values_held_in_the_weights_train_exactly_like_the_sparse_product(ids: torch.Tensor) -> None:
    mask = {Q0: torch.arange(0, 256, 3), FFN1: torch.arange(5, 512, 7)}
    models = []
    for _ in range(2):
        am = AdaptedModel(make_host().double())
        am.add_adapter("a", SparseFTConfig(targets=("q", "ffn_out")).with_mask(mask))
        am.set_active("a")
        am.train_adapters("a")
        models.append(am)
    fused, plain = models
    pristine = state(fused.model)
    with values_in_weights(fused, "a") as held:
        assert held
        for am in models:
            opt = torch.optim.AdamW(list(am.trainable_parameters().values()), lr=0.05)
            for _ in range(3):
                host_output(am, ids).square().mean().backward()
                opt.step()
                opt.zero_grad()
        for a, b in zip(fused.trainable_parameters().values(), plain.trainable_parameters().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
            assert bool(a.abs().sum())
        with torch.no_grad():
            torch.testing.assert_close(host_output(fused, ids), host_output(plain, ids), rtol=1e-9, atol=1e-12)
    # Leaving restores the base weights bit for bit; the adapter then runs as a sparse product again.
    fused.set_active(None)
    assert_same_state(fused.model, pristine | {k: v for k, v in state(fused.model).items() if ".adapters." in k})
    with torch.no_grad():
        fused.set_active("a")
        torch.testing.assert_close(host_output(fused, ids), host_output(plain, ids), rtol=1e-9, atol=1e-12)


def test_values_stay_out_of_the_weights_where_another_adapter_acts_first() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("lang", BottleneckConfig())
    am.add_adapter("a", SparseFTConfig(targets=("ffn_out",)).with_mask({FFN1: torch.arange(4)}))
    am.set_active(Stack("lang", "a"))
    pristine = state(am.model)
    with values_in_weights(am, "a") as held:
        assert not held
    am.set_active(Stack("a", "lang"))
    with values_in_weights(am, "a") as held:
        assert held
    assert_same_state(am.model, pristine)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_phase2_adapter_in_other_dtypes(dtype: torch.dtype, ids: torch.Tensor) -> None:
    am = AdaptedModel(make_host().to(dtype))
    am.add_adapter("a", SparseFTConfig(targets=("q",)).with_mask({Q0: torch.arange(0, 256, 3)}))
    am.set_active("a")
    am.train_adapters("a")
    randomize(am, seed=5)
    (values,) = am.trainable_parameters().values()
    assert values.dtype == dtype
    host_output(am, ids).float().square().mean().backward()
    assert values.grad is not None and values.grad.dtype == dtype and bool(values.grad.abs().sum())
    with torch.no_grad():
        adapted = host_output(am, ids)
        am.merge("a")
        torch.testing.assert_close(host_output(am, ids), adapted, rtol=0.05, atol=0.05)


# -------------------------------------------------------------- SparseDiff
def test_apply_then_revert_is_bit_identical(ids: torch.Tensor) -> None:
    host = make_host()
    before, out = state(host), host_output(host, ids).detach()
    diff = random_diff(host, KEYS, 10, seed=0)
    diff.apply(host)
    assert not torch.equal(host_output(host, ids), out)
    diff.revert(host)
    assert_same_state(host, before)
    revert = diff.apply(host)
    revert()
    assert_same_state(host, before)


def test_diffs_stack_with_bottleneck_and_lora_adapters(ids: torch.Tensor, tmp_path: Path) -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("bn", BottleneckConfig())
    am.add_adapter("lo", LoraConfig(targets=("q", "v")))
    am.train_adapters("bn", "lo")
    randomize(am, seed=2)
    am.set_active(Stack("bn", "lo"))
    am.save_adapter("bn", tmp_path / "bn")
    am.save_adapter("lo", tmp_path / "lo")
    diff = random_diff(make_host(), KEYS, 20, seed=1)
    with torch.no_grad():
        adapted = host_output(am, ids)
        diff.apply(am)
        both = host_output(am, ids)
        # The diff on a bare host, then the same adapters attached: the same output.
        other = make_host()
        diff.apply(other)
        am2 = AdaptedModel(other)
        am2.load_adapter(tmp_path / "bn")
        am2.load_adapter(tmp_path / "lo")
        am2.set_active(Stack("bn", "lo"))
        assert torch.equal(host_output(am2, ids), both)
        assert not torch.equal(both, adapted)
        diff.revert(am)
        assert torch.equal(host_output(am, ids), adapted)


def test_composed_diffs_equal_sequential_application() -> None:
    host = make_host()
    a = random_diff(host, KEYS, 30, seed=2)
    b = random_diff(host, {f"{Q0}.weight": (16, 16), f"{FFN1}.bias": (16,)}, 9, seed=3)
    one, two = make_host(), make_host()
    (a + b).apply(one)
    a.apply(two)
    b.apply(two)
    for (name, p), q in zip(one.named_parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    # Where the diffs do not meet, composition is exact; the sum is symmetric.
    for key, (_, idx, values) in (a + b).entries.items():
        _, idx2, values2 = (b + a).entries[key]
        assert torch.equal(idx, idx2) and torch.equal(values, values2)
    assert (a + b).nnz <= a.nnz + b.nnz


def test_scaling() -> None:
    host = make_host()
    a = random_diff(host, KEYS, 10, seed=4)
    for key, (_, idx, values) in (a + a).entries.items():
        assert torch.equal(idx, a.entries[key][1])
        assert torch.equal(values, (2 * a).entries[key][2])
        assert torch.equal((a * 0.5).entries[key][2], a.entries[key][2] * 0.5)


def test_save_and_read_round_trip(tmp_path: Path) -> None:
    host = make_host()
    diff = random_diff(host, KEYS, 10, seed=5)
    diff.save(tmp_path / "d")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["adapter.json", "adapter.safetensors"]
    meta = json.loads((tmp_path / "d" / "adapter.json").read_text())
    assert meta["method"] == "sparse_ft" and meta["base"] == diff.base
    assert {
        t.dtype for k, t in load_file(tmp_path / "d" / "adapter.safetensors").items() if k.endswith("indices")
    } == {torch.int32}
    again = SparseDiff.read(tmp_path / "d")
    assert again.entries.keys() == diff.entries.keys()
    for key, (shape, idx, values) in diff.entries.items():
        assert again.entries[key][0] == shape
        assert torch.equal(again.entries[key][1], idx) and torch.equal(again.entries[key][2], values)
    # A normal adapter directory is not a diff, and an altered tensor file is caught.
    am = AdaptedModel(make_host())
    am.add_adapter("lo", LoraConfig())
    am.save_adapter("lo", tmp_path / "lo")
    with pytest.raises(SchemaVersionError, match="not a sparse diff"):
        SparseDiff.read(tmp_path / "lo")
    blob = (tmp_path / "d" / "adapter.safetensors").read_bytes()
    (tmp_path / "d" / "adapter.safetensors").write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(CorruptArtifactError, match="checksum"):
        SparseDiff.read(tmp_path / "d")


def test_empty_mask_is_a_no_op(ids: torch.Tensor) -> None:
    host = make_host()
    before = state(host)
    empty = torch.empty(0, dtype=torch.long)
    for diff in (
        SparseDiff(base=base_of(host), entries={}),
        SparseDiff(base=base_of(host), entries={f"{Q0}.weight": ((16, 16), empty, torch.empty(0))}),
    ):
        diff.apply(host)
        assert_same_state(host, before)
        diff.revert(host)
        assert_same_state(host, before)


@pytest.mark.parametrize(
    ("indices", "values", "match"),
    [
        ([0, 256], [1.0, 1.0], "outside"),
        ([-1, 3], [1.0, 1.0], "outside"),
        ([3, 3, 4], [1.0, 1.0, 1.0], "repeats"),
        ([4, 3], [1.0, 1.0], "not sorted"),
        ([1, 2], [1.0, float("nan")], "finite"),
        (list(range(257)), [1.0] * 257, "only 256 positions"),
        ([1, 2], [1.0], "match"),
    ],
)
def test_malformed_diffs_are_refused(indices: list[int], values: list[float], match: str) -> None:
    host = make_host()
    with pytest.raises(SparseDiffError, match=match):
        SparseDiff(
            base=base_of(host), entries={f"{Q0}.weight": ((16, 16), torch.tensor(indices), torch.tensor(values))}
        )


def test_diffs_for_another_base_leave_the_weights_untouched() -> None:
    host = make_host()
    before = state(host)
    diff = random_diff(host, KEYS, 5, seed=6)
    with pytest.raises(BaseModelMismatchError):
        diff.apply(make_host("roberta"))
    wrong_shape = SparseDiff(
        base=diff.base,
        entries={**diff.entries, f"{FFN1}.weight": ((32, 16), torch.tensor([0]), torch.tensor([1.0]))},
    )
    with pytest.raises(BaseModelMismatchError, match="shape"):
        wrong_shape.apply(host)
    with pytest.raises(BaseModelMismatchError):
        (diff + SparseDiff(base=base_of(make_host("roberta")), entries={}))
    assert_same_state(host, before)


def test_reverting_out_of_order_is_refused() -> None:
    host = make_host()
    before = state(host)
    a, b = random_diff(host, KEYS, 10, seed=7), random_diff(host, KEYS, 10, seed=8)
    a.apply(host)
    b.apply(host)
    with pytest.raises(SparseDiffError, match="reverse order"):
        a.revert(host)
    b.revert(host)
    a.revert(host)
    assert_same_state(host, before)
    with pytest.raises(AdapterNotFoundError):
        SparseDiff.from_adapter(AdaptedModel(make_host()), "nothing")
