"""Sparse fine-tuning kernels against dense float64 references, on irregular shapes."""

from __future__ import annotations

import pytest
import torch

from polyglot_adapters.kernels import gather_add_, global_topk, sampled_dense_dense, scatter_add_, sparse_delta_matmul
from polyglot_adapters.methods.sparse_ft import sparse_linear

SHAPES = [(37, 181), (1, 13), (61, 7)]


def _entries(shape: tuple[int, int], k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randperm(shape[0] * shape[1], generator=gen)[:k].sort().values
    return positions, positions // shape[1], positions % shape[1]


def _dense(shape: tuple[int, int], positions: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    dense = torch.zeros(shape[0] * shape[1], dtype=values.dtype)
    dense[positions] = values
    return dense.view(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scatter_add_applies_several_diffs_in_one_call(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(1823 * 7, generator=gen, dtype=dtype)
    updates = []
    for seed, scale in ((1, 1.0), (2, 0.5), (3, -2.0)):
        positions, _, _ = _entries((1823, 7), 900, seed)
        updates.append((positions.int() if seed == 2 else positions, torch.randn(900, generator=gen), scale))
    expected = flat.clone()
    for positions, values, scale in updates:  # same dtype, one diff after another
        expected[positions.long()] = expected[positions.long()] + (values * scale).to(dtype)
    exact = flat.double().clone()
    for positions, values, scale in updates:
        exact[positions.long()] += values.double() * scale
    out = scatter_add_(flat, updates)
    assert out is flat
    assert torch.equal(flat, expected)
    torch.testing.assert_close(flat.double(), exact, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gather_add_equals_index_add_and_returns_what_it_replaced(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    flat = torch.randn(1823 * 7, generator=gen).to(dtype)
    positions, _, _ = _entries((1823, 7), 2000, seed=5)
    values = torch.randn(2000, generator=gen)  # float32: rounded to flat's dtype, as index_add_ adds
    before = flat.clone()
    expected = before.clone().index_add_(0, positions, values.to(dtype))
    original = gather_add_(flat, positions, values)
    assert torch.equal(flat, expected) and torch.equal(original, before[positions])
    flat.index_copy_(0, positions, original)
    assert torch.equal(flat, before)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_delta_matmul_equals_the_dense_product(shape: tuple[int, int], dtype: torch.dtype) -> None:
    k = max(1, shape[0] * shape[1] // 5)
    positions, rows, cols = _entries(shape, k, seed=shape[0])
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(k, generator=gen, dtype=dtype)
    x = torch.randn(29, shape[1], generator=gen, dtype=dtype)
    g = torch.randn(29, shape[0], generator=gen, dtype=dtype)
    dense = _dense(shape, positions, values)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    out = sparse_delta_matmul(x, rows, cols, values, shape)
    assert out.shape == (29, shape[0]) and out.dtype == dtype
    torch.testing.assert_close(out, x @ dense.T, **tol)  # same dtype
    torch.testing.assert_close(out.double(), x.double() @ dense.double().T, **tol)  # float64
    back = sparse_delta_matmul(g, rows, cols, values, shape, transpose=True)
    torch.testing.assert_close(back.double(), g.double() @ dense.double(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampled_dense_dense_is_the_sampled_weight_gradient(dtype: torch.dtype) -> None:
    shape = (37, 181)
    positions, rows, cols = _entries(shape, 5000, seed=4)
    gen = torch.Generator().manual_seed(2)
    # 1823 tokens make the kernel work in several chunks of entries.
    x = torch.randn(1823, shape[1], generator=gen, dtype=dtype)
    g = torch.randn(1823, shape[0], generator=gen, dtype=dtype)
    out = sampled_dense_dense(g, x, rows, cols)
    assert out.shape == (5000,) and out.dtype == dtype
    same = (g.T @ x)[rows, cols]
    exact = (g.double().T @ x.double())[rows, cols]
    tol = {"rtol": 1e-4, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(out, same, **tol)
    torch.testing.assert_close(out.double(), exact, **tol)


@pytest.mark.parametrize("k", [40, 12000], ids=["sparse", "dense-blocks"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "unsorted"])
def test_sparse_kernels_on_their_sparse_and_dense_paths(k: int, shuffle: bool) -> None:
    # 40 of 54,307 entries take the gathers / sparse product; 12,000 the dense blocks (more than 1/400).
    shape = (1823, 29) if not shuffle else (301, 181)
    positions, rows, cols = _entries(shape, k, seed=k)
    gen = torch.Generator().manual_seed(6)
    if shuffle:
        perm = torch.randperm(k, generator=gen)
        rows, cols = rows[perm], cols[perm]
    values = torch.randn(k, generator=gen, dtype=torch.float64)
    x = torch.randn(13, shape[1], generator=gen, dtype=torch.float64)
    g = torch.randn(13, shape[0], generator=gen, dtype=torch.float64)
    exact = (g.T @ x)[rows, cols]
    torch.testing.assert_close(sampled_dense_dense(g, x, rows, cols), exact, rtol=1e-10, atol=1e-10)
    if not shuffle:  # the sparse product takes row-major sorted entries
        dense = _dense(shape, positions, values)
        torch.testing.assert_close(sparse_delta_matmul(x, rows, cols, values, shape), x @ dense.T)
        torch.testing.assert_close(sparse_delta_matmul(g, rows, cols, values, shape, transpose=True), g @ dense)


def test_sparse_linear_gradients_match_finite_differences() -> None:
    shape = (5, 11)
    _, rows, cols = _entries(shape, 17, seed=5)
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(17, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, shape[1], generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, v: sparse_linear(x, v, rows, cols, shape), (x, values))


def test_global_topk_equals_topk_over_the_concatenation() -> None:
    gen = torch.Generator().manual_seed(6)
    scores = [torch.randn(s, generator=gen) for s in [(1823, 7), (13,), (61, 7, 3), (1, 1)]]
    flat = torch.cat([s.reshape(-1) for s in scores]).abs()
    offsets = [0]
    for s in scores:
        offsets.append(offsets[-1] + s.numel())
    for k in (0, 1, 777, flat.numel()):
        chosen = global_topk(scores, k)
        assert [c.dtype for c in chosen] == [torch.long] * len(scores)
        assert all(torch.equal(c, c.sort().values) for c in chosen)
        got = torch.cat([c + off for c, off in zip(chosen, offsets, strict=False)]).sort().values
        expected = flat.topk(k).indices.sort().values
        assert torch.equal(got, expected)


def test_global_topk_breaks_ties_towards_earlier_entries() -> None:
    scores = [torch.tensor([1.0, -3.0, 2.0]), torch.tensor([[2.0, -2.0], [0.5, 3.0]])]
    chosen = global_topk(scores, 4)  # |3|, |3|, then two of the four 2s: the earliest ones
    assert [c.tolist() for c in chosen] == [[1, 2], [0, 3]]


def test_global_topk_when_most_scores_are_zero() -> None:
    # The k-th entry falls in the bin of zeros, too large to keep as candidates: a third pass picks them.
    gen = torch.Generator().manual_seed(8)
    scores = [torch.zeros(500), torch.zeros(37, 11), torch.zeros(300)]
    scores[1].view(-1)[torch.randperm(407, generator=gen)[:30]] = torch.randn(30, generator=gen)
    scores[2][7] = -1e-30
    chosen = global_topk(scores, 200)
    assert sum(c.numel() for c in chosen) == 200
    assert torch.equal(chosen[1], scores[1].view(-1).nonzero().squeeze(1))
    assert torch.equal(chosen[0], torch.arange(169))  # ties at zero go to the earliest tensor
    assert torch.equal(chosen[2], torch.tensor([7]))


def test_global_topk_refuses_more_entries_than_there_are() -> None:
    with pytest.raises(ValueError, match="cannot select 8 entries out of 7"):
        global_topk([torch.ones(3), torch.ones(4)], 8)
    with pytest.raises(ValueError, match="cannot select -1"):
        global_topk([torch.ones(3)], -1)
