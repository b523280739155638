"""Triton sparse kernels against the same-dtype and float64 references (CPU: ``TRITON_INTERPRET=1``)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import DEVICES

pytest.importorskip("triton")

from polyglot_adapters.kernels import dispatch  # noqa: E402
from polyglot_adapters.kernels.reference import (  # noqa: E402
    gather_add_ref,
    sampled_dense_dense_ref,
    scatter_add_ref,
    sparse_delta_matmul_ref,
)
from polyglot_adapters.kernels.triton_sparse import (  # noqa: E402
    gather_add_triton,
    sampled_dense_dense_triton,
    scatter_add_triton,
    sparse_delta_matmul_triton,
)

# Triton runs on CPU tensors only through its interpreter; on CUDA it compiles.
CAN_RUN = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"),
    ),
    DEVICES[1],
]
SHAPES = [(37, 181), (3, 5), (29, 1)]
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float16: {"rtol": 2e-2, "atol": 2e-2}}


def _entries(shape: tuple[int, int], k: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    positions = torch.randperm(shape[0] * shape[1], generator=gen)[:k].sort().values.to(device)
    return positions // shape[1], positions % shape[1]


@pytest.mark.parametrize("device", CAN_RUN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scatter_add_matches_the_reference_bit_for_bit(device: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(1823 * 7, generator=gen).to(device, dtype)
    updates = []
    for seed, scale in ((1, 1.0), (2, -0.5)):
        positions = torch.randperm(flat.numel(), generator=gen)[: 700 + seed].sort().values.to(device)
        updates.append(
            (positions.int() if seed == 2 else positions, torch.randn(700 + seed, generator=gen).to(device), scale)
        )
    expected = scatter_add_ref(flat.clone(), updates)
    exact = scatter_add_ref(flat.double(), updates)
    out = scatter_add_triton(flat, updates)
    assert out is flat and torch.equal(flat, expected)
    torch.testing.assert_close(flat.double(), exact, **TOL[dtype])


@pytest.mark.parametrize("device", CAN_RUN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gather_add_matches_the_reference_bit_for_bit(device: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    flat = torch.randn(1823 * 7, generator=gen).to(device, dtype)
    positions = torch.randperm(flat.numel(), generator=gen)[:901].sort().values.to(device)
    values = torch.randn(901, generator=gen).to(device)
    expected = flat.clone()
    expected_original = gather_add_ref(expected, positions, values)
    original = gather_add_triton(flat, positions, values)
    assert torch.equal(flat, expected) and torch.equal(original, expected_original)


@pytest.mark.parametrize("device", CAN_RUN)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_sparse_products_match_the_references(device: str, shape: tuple[int, int], dtype: torch.dtype) -> None:
    k = max(1, shape[0] * shape[1] // 7)
    rows, cols = _entries(shape, k, seed=shape[1], device=device)
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(k, generator=gen).to(device, dtype)
    x = torch.randn(97, shape[1], generator=gen).to(device, dtype)
    g = torch.randn(97, shape[0], generator=gen).to(device, dtype)
    wide = [t.double() for t in (x, g, values)]
    ref_dtype = torch.float32 if device == "cpu" and dtype == torch.float16 else dtype  # no CPU fp16 sparse mm

    out = sparse_delta_matmul_triton(x, rows, cols, values, shape)
    same = sparse_delta_matmul_ref(x.to(ref_dtype), rows, cols, values.to(ref_dtype), shape)
    exact = sparse_delta_matmul_ref(wide[0], rows, cols, wide[2], shape)
    assert out.dtype == dtype and out.shape == (97, shape[0])
    torch.testing.assert_close(out.to(ref_dtype), same, **TOL[dtype])
    torch.testing.assert_close(out.double(), exact, **TOL[dtype])

    back = sparse_delta_matmul_triton(g, rows, cols, values, shape, transpose=True)
    exact = sparse_delta_matmul_ref(wide[1], rows, cols, wide[2], shape, transpose=True)
    torch.testing.assert_close(back.double(), exact, **TOL[dtype])

    grads = sampled_dense_dense_triton(g, x, rows, cols)
    same = sampled_dense_dense_ref(g, x, rows, cols)
    exact = sampled_dense_dense_ref(wide[1], wide[0], rows, cols)
    assert grads.dtype == dtype and grads.shape == (k,)
    torch.testing.assert_close(grads, same, **TOL[dtype])
    torch.testing.assert_close(grads.double(), exact, **TOL[dtype])


@pytest.mark.gpu
def test_dispatch_uses_triton_on_cuda_and_agrees_with_the_cpu_path() -> None:
    shape = (1823, 781)
    rows, cols = _entries(shape, 20000, seed=3, device="cpu")
    gen = torch.Generator().manual_seed(4)
    values, x = torch.randn(20000, generator=gen), torch.randn(64, shape[1], generator=gen)
    assert dispatch._fast(x.cuda()) is not None and dispatch._fast(x) is None
    cpu = dispatch.sparse_delta_matmul(x, rows, cols, values, shape)
    gpu = dispatch.sparse_delta_matmul(x.cuda(), rows.cuda(), cols.cuda(), values.cuda(), shape)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
