"""Per-row (gathered) adapter kernels and the fused ``Route`` path.

Kernels: Triton (CPU under ``TRITON_INTERPRET=1``) against the same-dtype and float64 references on
irregular shapes; the autograd function against float64 finite differences. Route: the fused pass
against one pass per group and against each row run alone, in inference and training.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import DEVICES, TINY, host_output, make_host, randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, Route, Stack
from polyglot_adapters.kernels import dispatch, reference_rows
from polyglot_adapters.kernels.reference_rows import (
    gathered_matmul_grads_ref,
    gathered_matmul_ref,
    gathered_sparse_matmul_ref,
    gathered_sparse_values_grad_ref,
)
from polyglot_adapters.kernels.rows import gathered_linear, sparse_rows, stack_padded
from polyglot_adapters.methods.bottleneck import BottleneckLayer
from polyglot_adapters.methods.lora import LoraLayer
from polyglot_adapters.methods.sparse_ft import SparseFTConfig, SparseValuesLayer

CAN_RUN = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1"),
    ),
    DEVICES[1],
]
TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 1e-2, "atol": 1e-2},
    torch.bfloat16: {"rtol": 5e-2, "atol": 5e-2},
}
# (rows, tokens, K, N, adapters): irregular sizes, a LoRA-like shrink (N=5) and expand (K=3).
SHAPES = [(7, 13, 181, 37, 4), (5, 1, 3, 67, 3), (3, 19, 70, 5, 2)]
INDEX = [3, -1, 0, 3, 1, 2, 0]


def _inputs(shape: tuple[int, int, int, int, int], dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    rows, tokens, k, n_out, n = shape
    gen = torch.Generator().manual_seed(sum(shape))
    return {
        "x": torch.randn(rows, tokens, k, generator=gen).to(device, dtype),
        "weight": torch.randn(n, n_out, k, generator=gen).to(device, dtype) / k**0.5,
        "bias": torch.randn(n, n_out, generator=gen).to(device, dtype),
        "scale": torch.randn(n, generator=gen).to(device),
        "residual": torch.randn(rows, tokens, n_out, generator=gen).to(device, dtype),
        "index": torch.tensor([i % n if i >= 0 else -1 for i in INDEX[:rows]], device=device),
    }


@pytest.mark.parametrize("device", CAN_RUN)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_gathered_matmul_matches_the_references(device: str, shape: tuple, dtype: torch.dtype) -> None:
    from polyglot_adapters.kernels.triton_rows import gathered_matmul_triton

    t = _inputs(shape, dtype, device)
    wide = {k: v.double() if v.is_floating_point() else v for k, v in t.items()}
    dead = t["index"] == -1
    for names in (("bias", "scale", "residual"), ("scale",), ()):
        out = gathered_matmul_triton(t["x"], t["weight"], t["index"], **{k: t[k] for k in names})
        same = gathered_matmul_ref(t["x"], t["weight"], t["index"], **{k: t[k] for k in names})
        exact = gathered_matmul_ref(wide["x"], wide["weight"], t["index"], **{k: wide[k] for k in names})
        assert out.dtype == dtype and out.shape == (shape[0], shape[1], shape[3])
        torch.testing.assert_close(out, same, **TOL[dtype])
        torch.testing.assert_close(out.double(), exact, **TOL[dtype])
        # Rows without an adapter get no product: the residual unchanged, or zeros.
        assert torch.equal(out[dead], t["residual"][dead] if "residual" in names else torch.zeros_like(out[dead]))
    # A transposed view of a stack (the backward pass's weight) and a non-contiguous input.
    weight_t = t["weight"].transpose(1, 2).contiguous().transpose(1, 2)
    x_strided = t["x"].transpose(0, 1).contiguous().transpose(0, 1)
    out = gathered_matmul_triton(x_strided, weight_t, t["index"])
    torch.testing.assert_close(out.double(), gathered_matmul_ref(wide["x"], wide["weight"], t["index"]), **TOL[dtype])


def test_reference_equals_a_loop_over_rows_in_float64() -> None:
    t = _inputs(SHAPES[0], torch.float64, "cpu")
    for residual in (None, t["residual"]):
        out = gathered_matmul_ref(t["x"], t["weight"], t["index"], bias=t["bias"], scale=t["scale"], residual=residual)
        for row, a in enumerate(t["index"].tolist()):
            expected = torch.zeros_like(out[row]) if residual is None else residual[row]
            if a >= 0:
                expected = expected + t["scale"][a] * (t["x"][row] @ t["weight"][a].T + t["bias"][a])
            torch.testing.assert_close(out[row], expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    grad_w, grad_b = gathered_matmul_grads_ref(grad, t["x"], t["index"], 4, scale=t["scale"], bias=True)
    for a in range(4):
        rows = (t["index"] == a).nonzero().squeeze(1)
        g = grad[rows] * t["scale"][a]
        torch.testing.assert_close(grad_w[a], torch.einsum("btn,btk->nk", g, t["x"][rows]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_b[a], g.sum((0, 1)), rtol=1e-12, atol=1e-12)


def test_gathered_linear_gradients_pass_gradcheck() -> None:
    t = _inputs((4, 3, 6, 5, 3), torch.float64, "cpu")
    x, weight, bias, residual = (t[k].requires_grad_() for k in ("x", "weight", "bias", "residual"))
    index, scale = torch.tensor([2, -1, 0, 2]), t["scale"]

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return gathered_linear(args[0], args[1], index, bias=args[2], scale=scale, residual=args[3])

    assert torch.autograd.gradcheck(fn, (x, weight, bias, residual))


def _sparse(
    n: int, shape: tuple[int, int], dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` sparse ``(N, K)`` matrices of different entry counts, stacked and zero-padded, and their dense form."""
    gen = torch.Generator().manual_seed(shape[0])
    counts = [max(1, shape[0] * shape[1] // (3 + 2 * a)) for a in range(n)]
    rows, cols = torch.zeros(n, max(counts), dtype=torch.long), torch.zeros(n, max(counts), dtype=torch.long)
    values, dense = torch.zeros(n, max(counts)), torch.zeros(n, *shape)
    for a, count in enumerate(counts):
        positions = torch.randperm(shape[0] * shape[1], generator=gen)[:count].sort().values
        rows[a, :count], cols[a, :count] = positions // shape[1], positions % shape[1]
        values[a, :count] = torch.randn(count, generator=gen)
        dense[a].view(-1)[positions] = values[a, :count]
    return rows.to(device), cols.to(device), values.to(device, dtype), dense.to(device, dtype)


@pytest.mark.parametrize("device", CAN_RUN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_sparse_rows_match_the_references(device: str, dtype: torch.dtype) -> None:
    from polyglot_adapters.kernels.triton_rows import gathered_sparse_matmul_triton

    shape = (37, 53)  # (N, K)
    rows, cols, values, dense = _sparse(3, shape, dtype, device)
    t = _inputs((7, 19, shape[1], shape[0], 3), dtype, device)
    for residual in (None, t["residual"]):
        out = gathered_sparse_matmul_triton(t["x"], rows, cols, values, t["index"], shape[0], residual=residual)
        same = gathered_sparse_matmul_ref(
            t["x"].float(), rows, cols, values.float(), t["index"], shape[0], residual=residual
        )  # CPU has no half-precision scatter-add for every op, so the same-dtype check runs in float32 for fp16
        exact = gathered_matmul_ref(
            t["x"].double(), dense.double(), t["index"], residual=None if residual is None else residual.double()
        )
        assert out.dtype == dtype and out.shape == (7, 19, shape[0])
        torch.testing.assert_close(out.float(), same, **TOL[dtype])
        torch.testing.assert_close(out.double(), exact, **TOL[dtype])


def test_sparse_rows_reference_and_gradients_in_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (11, 13)
    rows, cols, values, dense = _sparse(3, shape, torch.float64, "cpu")
    t = _inputs((4, 5, shape[1], shape[0], 3), torch.float64, "cpu")
    index = torch.tensor([2, -1, 0, 2])
    expected = gathered_matmul_ref(t["x"], dense, index, residual=t["residual"])
    for block in (16, 1 << 22):  # single-row token blocks, then one block
        monkeypatch.setattr(reference_rows, "_SPARSE_BLOCK", block)
        got = gathered_sparse_matmul_ref(t["x"], rows, cols, values, index, shape[0], residual=t["residual"])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(got)
        dense_grad = gathered_matmul_grads_ref(grad, t["x"], index, 3)[0]  # (n, N, K)
        sampled = gathered_sparse_values_grad_ref(grad, t["x"], rows, cols, index)
        torch.testing.assert_close(sampled, dense_grad[torch.arange(3)[:, None], rows, cols])  # padding: at (0, 0)
    x, vals, residual = t["x"].requires_grad_(), values.clone().requires_grad_(), t["residual"].requires_grad_()

    def fn(*args: torch.Tensor) -> torch.Tensor:
        return sparse_rows(args[0], args[2], rows, cols, args[1], index)

    assert torch.autograd.gradcheck(fn, (x, vals, residual))


def test_stack_padded_zero_pads_and_passes_gradients_back() -> None:
    a, b = torch.randn(2, 5, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    stacked = stack_padded([a, b])
    assert stacked.shape == (2, 4, 5)
    assert torch.equal(stacked[0, :2], a) and torch.equal(stacked[1, :, :3], b)
    assert stacked[0, 2:].abs().sum() == 0 and stacked[1, :, 3:].abs().sum() == 0
    (stacked * torch.arange(40.0).view(2, 4, 5)).sum().backward()
    assert torch.equal(a.grad, torch.arange(10.0).view(2, 5)) and torch.equal(b.grad[0], torch.tensor([20.0, 21, 22]))


# ---------------------------------------------------------------- the fused Route path on a tiny host


def _routed_model() -> AdaptedModel:
    """Six adapters: LoRA of ranks 2 and 4 (q,v; one also on ffn_out), bottlenecks of 2 widths and 3 placements."""
    am = AdaptedModel(make_host("bert"))
    am.add_adapter("l2", LoraConfig(r=2, targets=("q", "v")))
    am.add_adapter("l4", LoraConfig(r=4, alpha=2, targets=("q", "v", "ffn_out")))
    am.add_adapter("b4", BottleneckConfig(positions=("ffn",), reduction_factor=4))
    am.add_adapter("b2", BottleneckConfig(positions=("ffn",), reduction_factor=2))
    am.add_adapter("p4", BottleneckConfig(placement="parallel", positions=("attn",), reduction_factor=4))
    am.add_adapter(
        "pf",
        BottleneckConfig(placement="pfeiffer", positions=("attn", "ffn"), reduction_factor=4, non_linearity="gelu"),
    )
    randomize(am)
    return am


NAMES = ("l2", "l4", "b4", "b2", "p4", "pf")
SPARSE_KEYS = [f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
ROW_IDS = torch.tensor([4, 0, 2, 5, 1, 3, 0, 2, 4, 1, 5])


def _ids(rows: int) -> torch.Tensor:
    return torch.randint(3, TINY["vocab_size"], (rows, 7), generator=torch.Generator().manual_seed(2))


def test_fused_route_equals_one_pass_per_group_and_each_row_alone() -> None:
    am, ids = _routed_model(), _ids(len(ROW_IDS))
    mapping = dict(enumerate(NAMES))
    calls = []
    for layer in am.modules():
        if isinstance(layer, LoraLayer | BottleneckLayer):
            layer.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        am.set_active(Route(ROW_IDS, mapping))
        fused = host_output(am, ids)
        assert not calls  # no layer's own forward ran: every site took the fused path
        am.set_active(Route(ROW_IDS, mapping, fuse=False))
        grouped = host_output(am, ids)
        assert calls
        torch.testing.assert_close(fused, grouped, rtol=1e-5, atol=1e-5)
        for row, gid in enumerate(ROW_IDS.tolist()):
            am.set_active(NAMES[gid])
            torch.testing.assert_close(fused[row : row + 1], host_output(am, ids[row : row + 1]), rtol=1e-5, atol=1e-5)
        am.set_active(None)
        bare = host_output(am, ids)
    assert (fused - bare).abs().amax((1, 2)).min() > 1e-3  # every row was adapted


def test_fused_route_skips_merged_adapters_and_falls_back_for_stacks() -> None:
    am, ids = _routed_model(), _ids(len(ROW_IDS))
    mapping: dict[int, str | Stack] = dict(enumerate(NAMES))
    with torch.no_grad():
        am.merge("l2")  # folded into W: every row sees it, and routing must not add it again
        am.set_active(Route(ROW_IDS, mapping))
        fused = host_output(am, ids)
        am.set_active(Route(ROW_IDS, mapping, fuse=False))
        torch.testing.assert_close(fused, host_output(am, ids), rtol=1e-5, atol=1e-5)
        am.unmerge("l2")
        mapping[1] = Stack("l4", "b4")  # not a single adapter: one pass per group
        am.set_active(Route(ROW_IDS, mapping))
        stacked = host_output(am, ids)
        am.set_active(Stack("l4", "b4"))
        rows = (ROW_IDS == 1).nonzero().squeeze(1)
        torch.testing.assert_close(stacked[rows], host_output(am, ids[rows]), rtol=1e-5, atol=1e-5)


def test_cached_stacks_follow_in_place_updates_of_the_adapters() -> None:
    am, ids = _routed_model(), _ids(len(ROW_IDS))
    route, grouped = Route(ROW_IDS, dict(enumerate(NAMES))), Route(ROW_IDS, dict(enumerate(NAMES)), fuse=False)
    with torch.no_grad():
        am.set_active(route)
        before = host_output(am, ids)
        assert torch.equal(host_output(am, ids), before)  # second call: stacks and row indices from the cache
        for name in ("l4", "b2"):
            for param in am.adapter_state_dict(name).values():
                param.mul_(2.0)  # what an optimizer step does: in place, version counter bumped
        after = host_output(am, ids)
        am.set_active(grouped)
        torch.testing.assert_close(after, host_output(am, ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)


def test_a_route_used_under_inference_mode_can_train_afterwards() -> None:
    am, ids = _routed_model(), _ids(len(ROW_IDS))
    am.set_active(Route(ROW_IDS, dict(enumerate(NAMES))))
    with torch.inference_mode():
        served = host_output(am, ids)  # caches row indices and stacks made as inference tensors
    am.train_adapters(*NAMES)
    trained = host_output(am, ids)
    trained.pow(2).mean().backward()
    torch.testing.assert_close(trained.detach(), served, rtol=0, atol=0)
    assert all(p.grad is not None for p in am.trainable_parameters().values())


def test_fused_route_trains_every_adapter_like_one_pass_per_group() -> None:
    ids = _ids(len(ROW_IDS))
    grads = []
    for fuse in (True, False):
        am = _routed_model()
        am.set_active(Route(ROW_IDS, dict(enumerate(NAMES)), fuse=fuse))
        am.train_adapters(*NAMES)
        host_output(am, ids).pow(2).mean().backward()
        grads.append({n: p.grad for n, p in am.trainable_parameters().items()})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, grad in grads[1].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-4, atol=1e-6)


def test_fused_lora_dropout_keeps_other_rows_and_is_off_in_eval() -> None:
    am = AdaptedModel(make_host("bert"))
    am.add_adapter("d", LoraConfig(r=2, dropout=0.5))
    am.add_adapter("e", LoraConfig(r=2))
    randomize(am)
    ids, route = _ids(4), Route([0, 1, 0, 1], {0: "d", 1: "e"})
    am.set_active(route)
    with torch.no_grad():
        evaluated = host_output(am.eval(), ids)
        am.train()
        trained = [host_output(am, ids) for _ in range(2)]
        am.eval()
        am.set_active(Route([0, 1, 0, 1], {0: "d", 1: "e"}, fuse=False))
        torch.testing.assert_close(evaluated, host_output(am, ids), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(trained[0][[1, 3]], evaluated[[1, 3]], rtol=1e-5, atol=1e-5)  # no dropout on "e"
    assert not torch.allclose(trained[0][[0, 2]], trained[1][[0, 2]])  # dropout drawn per call on "d" rows


def test_fused_route_over_sparse_diffs_equals_one_pass_per_group_and_trains_alike() -> None:
    ids = _ids(6)
    route_ids = torch.tensor([1, 0, 2, 2, 0, 1])
    outs, grads = [], []
    for fuse in (True, False):
        am = AdaptedModel(make_host("bert"))
        for a, density in enumerate((5, 40, 200)):  # diffs of different sizes: padded in the fused stack
            gen = torch.Generator().manual_seed(a)
            positions = {key: torch.randperm(16 * 16, generator=gen)[:density].sort().values for key in SPARSE_KEYS}
            am.add_adapter(f"s{a}", SparseFTConfig(targets=("q", "v")).with_mask(positions))
        am.train_adapters("s0", "s1", "s2")
        randomize(am, std=0.5)
        calls = []
        for layer in am.modules():
            if isinstance(layer, SparseValuesLayer):
                layer.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        am.set_active(Route(route_ids, {0: "s0", 1: "s1", 2: "s2"}, fuse=fuse))
        out = host_output(am, ids)
        assert bool(calls) != fuse  # the fused pass calls no layer's own forward
        out.pow(2).mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad for n, p in am.trainable_parameters().items()})
        with torch.no_grad():
            for row in (0, 2):
                am.set_active(f"s{int(route_ids[row])}")
                alone = host_output(am, ids[row : row + 1])
                torch.testing.assert_close(out[row : row + 1].detach(), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 12
    for name, grad in grads[1].items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[0][name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dispatch_uses_triton_on_cuda_and_the_fused_route_agrees_with_the_cpu(dtype: torch.dtype) -> None:
    t = _inputs((64, 32, 768, 8, 16), torch.float32, "cpu")
    t["index"] = torch.arange(64) % 16
    assert dispatch._triton_rows() is not None
    cuda = {k: v.cuda() for k, v in t.items()}
    cpu_out = dispatch.gathered_matmul(t["x"], t["weight"], t["index"], bias=t["bias"], scale=t["scale"])
    gpu_out = dispatch.gathered_matmul(
        cuda["x"].to(dtype), cuda["weight"].to(dtype), cuda["index"], bias=cuda["bias"].to(dtype), scale=cuda["scale"]
    )
    torch.testing.assert_close(gpu_out.float().cpu(), cpu_out, **TOL[dtype])


@pytest.mark.gpu
def test_fused_route_on_cuda_agrees_with_the_cpu_and_trains() -> None:
    am, ids = _routed_model(), _ids(len(ROW_IDS))
    am.set_active(Route(ROW_IDS, dict(enumerate(NAMES))))
    with torch.no_grad():
        expected = host_output(am, ids)
        am.to("cuda")
        got = host_output(am, ids.cuda())
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    am.train_adapters(*NAMES)
    host_output(am, ids.cuda()).pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in am.trainable_parameters().values())
