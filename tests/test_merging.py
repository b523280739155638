"""Merging invariants: identity, permutation invariance, save/reload, into the base and back, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_host, randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, Stack
from polyglot_adapters.errors import BaseModelMismatchError, ConfigError, PolyglotAdaptersError
from polyglot_adapters.merging import (
    MergeError,
    SavedAdapter,
    average_checkpoints,
    combine,
    ema_weights,
    merge_adapters,
)

TOL = 1e-5
CONFIGS = {
    "bottleneck": BottleneckConfig.houlsby(reduction_factor=4),
    "lora": LoraConfig(r=2, alpha=4, targets=("q", "v")),
}


def save(tmp_path: Path, name: str, config, seed: int, kind: str = "bert-mlm") -> Path:
    am = AdaptedModel(make_host(kind))
    am.add_adapter(name, config)
    am.train_adapters(name)
    randomize(am, seed=seed)
    return am.save_adapter(name, tmp_path / name)


def logits(ids: torch.Tensor, *dirs: Path, active=None) -> torch.Tensor:
    am = AdaptedModel(make_host())
    names = [am.load_adapter(d) for d in dirs]
    am.set_active(active if active is not None else names[0])
    with torch.no_grad():
        return am(input_ids=ids).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ------------------------------------------------------------------------------------------------ identity
@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("how", ["linear", "ties", "dare", "dare_ties"])
def test_one_adapter_with_weight_one_is_the_identity(method: str, how: str, ids, tmp_path) -> None:
    src = save(tmp_path, "a", CONFIGS[method], seed=1)
    merged = merge_adapters([src], how=how, weights=[1.0])
    if method == "bottleneck":  # parameter space: exactly the same tensors
        original = SavedAdapter.read(src)
        assert merged.config == original.config
        assert all(torch.equal(merged.tensors[k], v) for k, v in original.tensors.items())
    out = merged.save(tmp_path / "m")
    assert max_diff(logits(ids, out), logits(ids, src)) <= TOL


def test_checkpoint_average_of_one_is_exact(tmp_path) -> None:
    src = save(tmp_path, "a", CONFIGS["lora"], seed=1)
    merged = average_checkpoints([src])
    assert all(torch.equal(merged.tensors[k], v) for k, v in SavedAdapter.read(src).tensors.items())


# ----------------------------------------------------------------------------------------- permutations
@pytest.mark.parametrize("method", sorted(CONFIGS))
@pytest.mark.parametrize("how", ["linear", "ties"])
def test_merges_are_permutation_invariant(method: str, how: str, ids, tmp_path) -> None:
    srcs = [save(tmp_path, f"s{i}", CONFIGS[method], seed=i) for i in range(3)]
    weights = [0.2, 0.5, -0.4]
    rank = "full" if method == "lora" else None
    one = merge_adapters(srcs, how=how, weights=weights, density=0.5, rank=rank)
    order = [2, 0, 1]
    other = merge_adapters(
        [srcs[i] for i in order], how=how, weights=[weights[i] for i in order], density=0.5, rank=rank
    )
    a, b = one.save(tmp_path / "one"), other.save(tmp_path / "other")
    assert max_diff(logits(ids, a), logits(ids, b)) <= TOL


def test_uniform_checkpoint_average_is_permutation_invariant(tmp_path) -> None:
    srcs = [save(tmp_path, f"c{i}", CONFIGS["bottleneck"], seed=i) for i in range(3)]
    one, other = average_checkpoints(srcs), average_checkpoints(srcs[::-1])
    assert all(torch.allclose(one.tensors[k], other.tensors[k], rtol=0, atol=1e-7) for k in one.tensors)


# ------------------------------------------------------------------------------------------- semantics
def test_linear_lora_merge_at_rank_sum_equals_stacking(ids, tmp_path) -> None:
    """Different ranks and targets: the union of sites, and exactly the sum of the updates."""
    a = save(tmp_path, "a", LoraConfig(r=2, alpha=4, targets=("q", "v")), seed=1)
    b = save(tmp_path, "b", LoraConfig(r=3, alpha=2, targets=("q", "k")), seed=2)
    merged = merge_adapters([a, b], how="linear", rank="sum")
    assert merged.config.r == 5 and merged.config.alpha == 5.0
    out = merged.save(tmp_path / "m")
    assert max_diff(logits(ids, out), logits(ids, a, b, active=Stack("a", "b"))) <= TOL


def test_truncated_rank_is_the_best_approximation(tmp_path) -> None:
    a = save(tmp_path, "a", LoraConfig(r=4, targets=("q",)), seed=1)
    b = save(tmp_path, "b", LoraConfig(r=4, targets=("q",)), seed=2)
    exact = merge_adapters([a, b], rank="sum")
    low = merge_adapters([a, b], rank=2)
    key = next(k.rsplit(".", 1)[0] for k in exact.tensors)

    def dense(m: SavedAdapter) -> torch.Tensor:
        return m.tensors[f"{key}.lora_B"] @ m.tensors[f"{key}.lora_A"] * m.config.scaling

    full = dense(exact).double()
    s = torch.linalg.svdvals(full)
    err = torch.linalg.matrix_norm(full - dense(low).double())
    assert abs(err.item() - s[2:].norm().item()) <= 1e-4


def test_checkpoint_average_weights_and_ema(tmp_path) -> None:
    srcs = [save(tmp_path, f"c{i}", CONFIGS["bottleneck"], seed=i) for i in range(3)]
    tensors = [SavedAdapter.read(s).tensors for s in srcs]
    key = next(iter(tensors[0]))
    uniform = average_checkpoints(srcs)
    mean = sum(t[key].double() for t in tensors) / 3
    assert torch.allclose(uniform.tensors[key].double(), mean, atol=1e-7)
    assert ema_weights(3, 0.5) == [0.25, 0.25, 0.5]
    ema = average_checkpoints(srcs, ema=0.9)
    running = tensors[0][key].double()
    for t in tensors[1:]:
        running = 0.9 * running + 0.1 * t[key].double()
    assert torch.allclose(ema.tensors[key].double(), running, atol=1e-7)
    weighted = average_checkpoints(srcs, weights=[0.5, 0.25, 0.25])
    ref = 0.5 * tensors[0][key].double() + 0.25 * tensors[1][key].double() + 0.25 * tensors[2][key].double()
    assert torch.allclose(weighted.tensors[key].double(), ref, atol=1e-7)
    assert weighted.extra["merge"]["how"] == "checkpoint-average"


# ------------------------------------------------------------------------------------ save, base weights
def test_merge_save_reload_gives_identical_outputs(ids, tmp_path) -> None:
    srcs = [save(tmp_path, f"s{i}", CONFIGS["lora"], seed=i) for i in range(2)]
    merged = merge_adapters(srcs, how="dare", density=0.7, weights=[0.6, 0.4], seed=3)
    out = merged.save(tmp_path / "m")
    again = SavedAdapter.read(out)
    assert again.config == merged.config and again.extra == {}
    assert all(torch.equal(again.tensors[k], v) for k, v in merged.tensors.items())
    assert torch.equal(logits(ids, out), logits(ids, out))
    same_seed = merge_adapters(srcs, how="dare", density=0.7, weights=[0.6, 0.4], seed=3)
    assert all(torch.equal(same_seed.tensors[k], v) for k, v in merged.tensors.items())


def test_merged_lora_folds_into_the_base_and_back(ids, tmp_path) -> None:
    srcs = [save(tmp_path, f"s{i}", CONFIGS["lora"], seed=i) for i in range(2)]
    out = merge_adapters(srcs, how="ties", density=0.5, rank="full").save(tmp_path / "m")
    am = AdaptedModel(make_host())
    name = am.load_adapter(out)
    am.set_active(name)
    before = {n: p.detach().clone() for n, p in am.model.named_parameters() if ".adapters." not in n}
    with torch.no_grad():
        unmerged = am(input_ids=ids).logits
        am.merge(name)
        merged = am(input_ids=ids).logits
        am.unmerge(name)
        back = am(input_ids=ids).logits
    assert max_diff(merged, unmerged) <= TOL
    assert torch.equal(back, unmerged)
    assert all(torch.equal(p, before[n]) for n, p in am.model.named_parameters() if n in before)


# ------------------------------------------------------------------------------------------ bad input
def test_different_bases_are_refused(tmp_path) -> None:
    a = save(tmp_path, "a", CONFIGS["lora"], seed=1)
    b = save(tmp_path, "b", CONFIGS["lora"], seed=2, kind="roberta")
    with pytest.raises(BaseModelMismatchError, match="only adapters of one base model merge"):
        merge_adapters([a, b])
    with pytest.raises(BaseModelMismatchError):
        average_checkpoints([a, b])


def test_bad_merges_are_refused(tmp_path) -> None:
    lora2 = save(tmp_path, "l2", CONFIGS["lora"], seed=1)
    lora4 = save(tmp_path, "l4", LoraConfig(r=4, targets=("q", "v")), seed=2)
    bn = save(tmp_path, "bn", CONFIGS["bottleneck"], seed=3)
    bn2 = save(tmp_path, "bn2", BottleneckConfig.houlsby(reduction_factor=2), seed=4)
    cases = [
        (lambda: merge_adapters([lora2, bn]), MergeError, "different methods"),
        (lambda: merge_adapters([lora2, lora4]), ConfigError, "ranks differ"),
        (lambda: merge_adapters([lora2, lora4], rank=0), ConfigError, "rank must be"),
        (lambda: merge_adapters([bn, bn2]), MergeError, "identical configs"),
        (lambda: merge_adapters([bn, bn], rank=4), MergeError, "parameter-wise"),
        (lambda: merge_adapters([bn, bn], weights=[1.0]), MergeError, "one weight per adapter"),
        (lambda: merge_adapters([bn, bn], weights=[1.0, float("nan")]), MergeError, "finite"),
        (lambda: merge_adapters([bn, bn], how="ties", density=0), MergeError, "density"),
        (lambda: merge_adapters([bn, bn], how="mean"), MergeError, "unknown merge"),
        (lambda: merge_adapters([]), MergeError, "at least one"),
        (lambda: average_checkpoints([bn, bn], weights=[0.5, 0.6]), MergeError, "sum to 1"),
        (lambda: average_checkpoints([bn, bn], weights=[1.5, -0.5]), MergeError, "sum to 1"),
        (lambda: average_checkpoints([bn, bn], weights=[0.5, 0.5], ema=0.9), MergeError, "not both"),
        (lambda: average_checkpoints([bn, bn], ema=1.0), MergeError, "decay"),
        (lambda: average_checkpoints([lora2, lora4]), MergeError, "identical configs"),
        (lambda: merge_adapters([bn, tmp_path / "missing"]), PolyglotAdaptersError, "missing"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error, match=fragment) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dare_masks_are_the_bernoulli_draws_peft_makes(dtype: torch.dtype) -> None:
    tensor = torch.ones(37, 41, dtype=dtype)
    got = combine([tensor], [1.0], "dare", density=0.3, generator=torch.Generator().manual_seed(7))
    expected = torch.bernoulli(torch.full_like(tensor, 0.3), generator=torch.Generator().manual_seed(7)) / 0.3
    assert torch.equal(got, expected)
