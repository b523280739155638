"""Adapters follow the host's dtype and device; save/load keeps the dtype exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, host_output, make_host, randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig, Gate, LoraConfig, Route, Stack


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_dtype_and_device(dtype: torch.dtype, device: str, tmp_path) -> None:
    ids = torch.randint(3, 50, (4, 9), device=device)
    am = AdaptedModel(make_host().to(device=device, dtype=dtype))
    am.add_adapter("b", BottleneckConfig.language())
    am.add_adapter("l", LoraConfig())
    assert all(p.dtype == dtype and p.device.type == device for p in am.adapter_state_dict("b").values())
    am.train_adapters("b", "l")
    randomize(am)
    am.set_active(Route([0, 1, 1, 0], {0: Stack("b", "l"), 1: Gate("b", "l")}))
    out = host_output(am, ids)
    assert out.dtype == dtype and out.device.type == device
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for n, p in am.trainable_parameters().items() if ".gates." not in n)
    am.save_adapter("b", tmp_path / "b")
    other = AdaptedModel(make_host().to(device=device, dtype=dtype))
    other.load_adapter(tmp_path / "b")
    for key, value in other.adapter_state_dict("b").items():
        assert torch.equal(value, am.adapter_state_dict("b")[key])
    am.set_active("l")
    with torch.no_grad():
        unmerged = host_output(am, ids)
        am.merge("l")
        merged = host_output(am, ids)
    tol = {torch.bfloat16: 0.1, torch.float32: 1e-4, torch.float64: 1e-10}[dtype]
    torch.testing.assert_close(merged, unmerged, rtol=tol, atol=tol)
