"""Merging sparse diffs in union space: identity, dense sums, TIES/DARE semantics, files, the CLI, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import host_output, make_host

from polyglot_adapters import AdaptedModel, LoraConfig
from polyglot_adapters.cli.main import main
from polyglot_adapters.errors import BaseModelMismatchError, MissingArtifactError, SchemaVersionError
from polyglot_adapters.interfaces import find_interface
from polyglot_adapters.io import fingerprint, read_meta
from polyglot_adapters.merging import MergeError, combine, ema_weights
from polyglot_adapters.methods.sparse_ft import SparseDiff, average_diffs, is_sparse_diff, merge_diffs

Q0 = "encoder.layer.0.attention.self.query.weight"
FFN1 = "encoder.layer.1.output.dense.weight"
KEYS = {Q0: (16, 16), FFN1: (16, 32), "embeddings.LayerNorm.bias": (16,)}
HOWS = ["linear", "ties", "dare", "dare_ties"]
TOL = 1e-6


def base_of(kind: str = "bert-mlm") -> dict:
    host = make_host(kind)
    return fingerprint(host, find_interface(host, None))


BASE = base_of()


def random_diff(k: int, seed: int, keys: dict[str, tuple[int, ...]] = KEYS, base: dict = BASE) -> SparseDiff:
    """``k`` random positions (at most the parameter's size) with N(0, 0.3) values per key."""
    gen = torch.Generator().manual_seed(seed)
    entries = {}
    for key, shape in keys.items():
        size = int(torch.tensor(shape).prod())
        idx = torch.randperm(size, generator=gen)[: min(k, size)].sort().values
        entries[key] = (shape, idx, torch.randn(idx.numel(), generator=gen) * 0.3)
    return SparseDiff(base=base, entries=entries)


def dense(diff: SparseDiff, key: str) -> torch.Tensor:
    """The diff's dense float64 difference tensor of ``key`` (zeros where it stores nothing)."""
    shape, idx, values = diff.entries[key]
    out = torch.zeros(int(torch.tensor(shape).prod()), dtype=torch.float64)
    out[idx] = values.double()
    return out.reshape(shape)


def union_vectors(diffs: list[SparseDiff], key: str) -> tuple[list[int], list[torch.Tensor]]:
    """The sorted union of the diffs' positions of ``key`` and each diff's vector over it, position by position."""
    union = sorted({int(i) for d in diffs for i in d.entries[key][1]})
    vectors = []
    for d in diffs:
        stored = dict(zip(d.entries[key][1].tolist(), d.entries[key][2].tolist(), strict=True))
        vectors.append(torch.tensor([stored.get(i, 0.0) for i in union], dtype=d.entries[key][2].dtype))
    return union, vectors


def with_new_values(diff: SparseDiff, seed: int) -> SparseDiff:
    gen = torch.Generator().manual_seed(seed)
    entries = {k: (shape, idx, torch.randn(idx.numel(), generator=gen)) for k, (shape, idx, _) in diff.entries.items()}
    return SparseDiff(base=diff.base, entries=entries)


def assert_same_diff(a: SparseDiff, b: SparseDiff) -> None:
    assert a.entries.keys() == b.entries.keys()
    for key, (shape, idx, values) in a.entries.items():
        assert b.entries[key][0] == shape
        assert torch.equal(b.entries[key][1], idx) and torch.equal(b.entries[key][2], values), key


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------------ identity
@pytest.mark.parametrize("how", HOWS)
def test_one_diff_with_weight_one_merges_to_itself(how: str) -> None:
    diff = random_diff(40, seed=1)
    assert_same_diff(merge_diffs([diff], how=how, weights=[1.0]), diff)
    assert_same_diff(average_diffs([diff]), diff)


# ------------------------------------------------------------------------------------------- semantics
def test_linear_merge_is_the_dense_sum_and_equals_applying_each_diff(ids: torch.Tensor) -> None:
    diffs = [random_diff(60, seed=s) for s in range(3)]  # 60 of 256/512 positions: the diffs overlap
    weights = [0.5, -1.2, 2.0]
    merged = merge_diffs(diffs, weights=weights)
    for key in KEYS:
        expected = sum(w * dense(d, key) for w, d in zip(weights, diffs, strict=True))
        torch.testing.assert_close(dense(merged, key), expected, rtol=0, atol=TOL)
        union = torch.unique(torch.cat([d.entries[key][1] for d in diffs]))
        assert torch.equal(merged.entries[key][1], union)  # linear keeps the whole union
    one, each = make_host(), make_host()
    merge_diffs(diffs).apply(one)
    for diff in diffs:
        diff.apply(each)
    for (name, p), q in zip(one.named_parameters(), each.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=TOL, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(host_output(one, ids), host_output(each, ids), rtol=0, atol=1e-5)


@pytest.mark.parametrize("how", ["linear", "ties"])
def test_linear_and_ties_are_permutation_invariant(how: str) -> None:
    diffs = [random_diff(50, seed=s) for s in range(3)]
    weights = [0.2, 0.5, -0.4]
    one = merge_diffs(diffs, how=how, weights=weights, density=0.5)
    order = [2, 0, 1]
    other = merge_diffs([diffs[i] for i in order], how=how, weights=[weights[i] for i in order], density=0.5)
    for key, (_, idx, values) in one.entries.items():
        assert torch.equal(other.entries[key][1], idx)
        torch.testing.assert_close(other.entries[key][2], values, rtol=0, atol=TOL)


@pytest.mark.parametrize("sign_method", ["total", "frequency"])
def test_ties_at_density_one_is_combine_on_the_dense_tensors(sign_method: str) -> None:
    diffs = [random_diff(70, seed=s) for s in range(4)]
    weights = [1.0, 0.5, -0.7, 0.3]
    merged = merge_diffs(diffs, how="ties", weights=weights, sign_method=sign_method)
    for key in KEYS:
        expected = combine([dense(d, key) for d in diffs], weights, "ties", sign_method=sign_method)
        torch.testing.assert_close(dense(merged, key), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize(("how", "sign_method"), [("ties", "total"), ("ties", "frequency"), ("linear", "total")])
def test_merges_are_combine_on_the_union_vectors(how: str, sign_method: str) -> None:
    """The specification: ``combine`` of each diff's vector over the union, density relative to the union."""
    diffs = [random_diff(k, seed=s) for s, k in enumerate([90, 20, 45])]
    weights = [0.6, 1.0, -0.5]
    merged = merge_diffs(diffs, how=how, weights=weights, density=0.3, sign_method=sign_method)
    for key in KEYS:
        union, vectors = union_vectors(diffs, key)
        expected = combine(vectors, weights, how, density=0.3, sign_method=sign_method)
        keep = expected != 0 if how == "ties" else torch.ones_like(expected, dtype=torch.bool)
        assert merged.entries[key][1].tolist() == torch.tensor(union)[keep].tolist()
        torch.testing.assert_close(merged.entries[key][2], expected[keep], rtol=0, atol=TOL)


def test_ties_trims_to_the_right_count_per_key() -> None:
    """Disjoint diffs of 40 and 10 entries (union 50): density 0.4 keeps 20 of the first, all 10 of the other."""
    big = SparseDiff(BASE, {Q0: ((16, 16), torch.arange(0, 80, 2), torch.linspace(-2.0, 2.0, 40))})
    small = SparseDiff(BASE, {Q0: ((16, 16), torch.arange(101, 111), torch.linspace(0.1, 0.2, 10))})
    merged = merge_diffs([big, small], how="ties", density=0.4)
    _, idx, values = merged.entries[Q0]
    largest = big.entries[Q0][2].abs().topk(20).indices.sort().values
    assert idx.tolist() == big.entries[Q0][1][largest].tolist() + list(range(101, 111))
    assert torch.equal(values[:20], big.entries[Q0][2][largest])
    alone = merge_diffs([big], how="ties", density=0.25)
    assert alone.entries[Q0][1].numel() == 10  # int(0.25 * 40): the union is the diff's own positions
    assert merge_diffs([big], how="ties", density=0.01).nnz == 0  # int(0.01 * 40) == 0 keeps nothing


@pytest.mark.parametrize("how", ["dare", "dare_ties"])
def test_dare_keeps_about_density_of_the_entries_and_rescales(how: str) -> None:
    diff = random_diff(512, seed=3)  # every position of every key: 784 entries
    merged = merge_diffs([diff], how=how, density=0.3, generator=torch.Generator().manual_seed(5))
    assert abs(merged.nnz / diff.nnz - 0.3) < 0.08
    for key, (_, idx, values) in merged.entries.items():
        _, all_idx, all_values = diff.entries[key]
        torch.testing.assert_close(values, all_values[idx] / 0.3, rtol=1e-6, atol=0)
    again = merge_diffs([diff], how=how, density=0.3, seed=5)
    assert_same_diff(again, merged)  # a seed stands for a generator seeded with it


# ------------------------------------------------------------------------------------------------- files
def test_merge_save_read_apply_gives_identical_outputs(ids: torch.Tensor, tmp_path: Path) -> None:
    diffs = [random_diff(60, seed=s) for s in range(3)]
    dirs = [d.save(tmp_path / f"d{i}") for i, d in enumerate(diffs)]
    merged = merge_diffs(dirs, how="dare_ties", weights=[0.6, 0.4, 1.0], density=0.7, seed=3)
    assert_same_diff(merge_diffs(diffs, how="dare_ties", weights=[0.6, 0.4, 1.0], density=0.7, seed=3), merged)
    again = SparseDiff.read(merged.save(tmp_path / "m", "mix"))
    assert_same_diff(again, merged)
    provenance = again.origin["merge"]
    assert provenance["how"] == "dare_ties" and provenance["density"] == 0.7 and provenance["weights"] == [0.6, 0.4, 1]
    assert [s["source"] for s in provenance["sources"]] == [str(d) for d in dirs]
    assert read_meta(tmp_path / "m")["name"] == "mix"
    one, other = make_host(), make_host()
    merged.apply(one)
    again.apply(other)
    with torch.no_grad():
        assert torch.equal(host_output(one, ids), host_output(other, ids))


def test_is_sparse_diff_reads_only_the_json(tmp_path: Path) -> None:
    random_diff(5, seed=1).save(tmp_path / "d")
    (tmp_path / "d" / "adapter.safetensors").unlink()
    am = AdaptedModel(make_host())
    am.add_adapter("lo", LoraConfig())
    am.save_adapter("lo", tmp_path / "lo")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "adapter.json").write_bytes(b"\xff not json")
    assert is_sparse_diff(tmp_path / "d")
    assert not any(is_sparse_diff(tmp_path / p) for p in ("lo", "junk", "missing"))


# ------------------------------------------------------------------------------------- checkpoint average
def test_checkpoint_average_is_the_weighted_mean() -> None:
    first = random_diff(30, seed=0)
    ckpts = [first, *(with_new_values(first, seed=s) for s in (1, 2))]  # the same positions, other values
    for weights, ema in (([1 / 3] * 3, None), ([0.5, 0.25, 0.25], None), (ema_weights(3, 0.9), 0.9)):
        merged = average_diffs(ckpts, ema=ema) if ema is not None else average_diffs(ckpts, weights=weights)
        for key, (_, idx, _) in ckpts[0].entries.items():
            assert torch.equal(merged.entries[key][1], idx)
            expected = sum(w * c.entries[key][2].double() for w, c in zip(weights, ckpts, strict=True))
            torch.testing.assert_close(merged.entries[key][2], expected.float(), rtol=0, atol=1e-7)
            assert merged.entries[key][2].dtype == torch.float32
    running = ckpts[0].entries[Q0][2].double()
    for c in ckpts[1:]:
        running = 0.9 * running + 0.1 * c.entries[Q0][2].double()
    torch.testing.assert_close(average_diffs(ckpts, ema=0.9).entries[Q0][2].double(), running, rtol=0, atol=1e-7)
    uniform = average_diffs(ckpts)
    assert uniform.origin["merge"]["how"] == "checkpoint-average" and uniform.origin["merge"]["ema"] is None
    # Positions a checkpoint does not store count as zero differences.
    mixed = average_diffs([random_diff(20, seed=7), random_diff(20, seed=8)])
    a, b = random_diff(20, seed=7), random_diff(20, seed=8)
    torch.testing.assert_close(dense(mixed, FFN1), (dense(a, FFN1) + dense(b, FFN1)) / 2, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    a, b = random_diff(10, seed=1), random_diff(10, seed=2)
    other_base = random_diff(10, seed=3, base=base_of("roberta"))
    reshaped = SparseDiff(BASE, {Q0: ((256,), torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))})
    am = AdaptedModel(make_host())
    am.add_adapter("lo", LoraConfig())
    lora = am.save_adapter("lo", tmp_path / "lo")
    cases = [
        (lambda: merge_diffs([]), MergeError, "at least one"),
        (lambda: average_diffs([]), MergeError, "at least one"),
        (lambda: merge_diffs([a, other_base]), BaseModelMismatchError, "one base model"),
        (lambda: average_diffs([a, other_base]), BaseModelMismatchError, "one base model"),
        (lambda: merge_diffs([a, reshaped]), BaseModelMismatchError, "shape"),
        (lambda: merge_diffs([a, b], weights=[1.0]), MergeError, "one weight per"),
        (lambda: merge_diffs([a, b], weights=[1.0, float("nan")]), MergeError, "finite"),
        (lambda: merge_diffs([a, b], weights=[1.0, float("inf")]), MergeError, "finite"),
        (lambda: merge_diffs([a, b], how="ties", density=0), MergeError, "density"),
        (lambda: merge_diffs([a, b], how="dare", density=1.5), MergeError, "density"),
        (lambda: merge_diffs([a, b], how="mean"), MergeError, "unknown merge"),
        (lambda: merge_diffs([a, b], how="ties", sign_method="vote"), MergeError, "unknown sign method"),
        (lambda: average_diffs([a, b], weights=[0.5, 0.6]), MergeError, "sum to 1"),
        (lambda: average_diffs([a, b], weights=[1.5, -0.5]), MergeError, "sum to 1"),
        (lambda: average_diffs([a, b], weights=[0.5, 0.5], ema=0.9), MergeError, "not both"),
        (lambda: average_diffs([a, b], ema=1.0), MergeError, "decay"),
        (lambda: merge_diffs([a, lora]), SchemaVersionError, "not a sparse diff"),
        (lambda: merge_diffs([a, tmp_path / "missing"]), MissingArtifactError, "missing"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error, match=fragment) as info:
            call()
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_merges_and_averages_sparse_diff_directories(tmp_path: Path, capsys) -> None:
    diffs = [random_diff(40, seed=s) for s in range(3)]
    dirs = [d.save(tmp_path / f"d{i}", f"ckpt{i}") for i, d in enumerate(diffs)]
    code, out, err = run(
        capsys, "merge", "--method", "ties", *dirs, "--out", tmp_path / "m", "--weights", "0.5,0.3,0.2",
        "--density", "0.4", "--sign", "frequency",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"wrote {tmp_path / 'm'}") and "method: sparse_ft" in out and "merge: ties" in out
    expected = merge_diffs(diffs, how="ties", weights=[0.5, 0.3, 0.2], density=0.4, sign_method="frequency")
    assert_same_diff(SparseDiff.read(tmp_path / "m"), expected)
    assert read_meta(tmp_path / "m")["name"] == "merged"
    code, _, err = run(
        capsys, "merge", "adapters", "--method", "checkpoint-average", *dirs, "--out", tmp_path / "avg", "--ema", "0.5"
    )
    assert code == 0, err
    assert_same_diff(SparseDiff.read(tmp_path / "avg"), average_diffs(diffs, ema=0.5))
    meta = read_meta(tmp_path / "avg")
    assert meta["name"] == "ckpt0" and meta["sparse_diff"]["converted_from"]["merge"]["weights"] == [0.25, 0.25, 0.5]
    assert json.loads(json.dumps(meta))["method"] == "sparse_ft"


def test_cli_errors_on_diffs_are_one_line_and_write_nothing(tmp_path: Path, capsys) -> None:
    a, b = random_diff(10, seed=1).save(tmp_path / "a"), random_diff(10, seed=2).save(tmp_path / "b")
    other = random_diff(10, seed=3, base=base_of("roberta")).save(tmp_path / "other")
    am = AdaptedModel(make_host())
    am.add_adapter("lo", LoraConfig())
    lora = am.save_adapter("lo", tmp_path / "lo")
    x = tmp_path / "x"
    cases = [
        (["merge", a, lora, "--out", x], "sparse diffs merge only with sparse diffs"),
        (["merge", lora, a, "--out", x], "sparse diffs merge only with sparse diffs"),
        (["merge", a, tmp_path / "missing", "--out", x], "not a directory"),
        (["merge", "--method", "ties", a, b, "--out", x, "--rank", "4"], "--rank"),
        (["merge", a, other, "--out", x], "one base model"),
        (["merge", "--method", "dare", a, b, "--out", x, "--density", "1.5"], "density"),
        (["merge", a, b, "--out", x, "--weights", "1"], "one weight per"),
        (["merge", "--method", "checkpoint-average", a, b, "--out", x, "--weights", "0.7,0.7"], "sum to 1"),
        (["merge", "--method", "checkpoint-average", a, b, "--out", x, "--density", "0.5"], "--density"),
        (["merge", a, b, "--out", x, "--ema", "0.5"], "--ema"),
    ]
    for argv, fragment in cases:
        code, _, err = run(capsys, *argv)
        lines = err.splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
        assert not x.exists()
