"""Training freezes the host; interfaces are found by preset or given as data (generic hosts)."""

from __future__ import annotations

import pytest
import torch
import torchaudio
from conftest import host_output, make_host, randomize
from torch.nn import functional as F

from polyglot_adapters import (
    PRESETS,
    AdaptedModel,
    BottleneckConfig,
    HostInterface,
    LoraConfig,
    Parallel,
    Route,
    Stack,
    Sublayer,
)
from polyglot_adapters.errors import ConfigError, InterfaceError, NotMergeableError


def test_frozen_base_gets_no_gradient_and_does_not_change(ids: torch.Tensor) -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("sw", BottleneckConfig.language())
    am.add_adapter("l", LoraConfig())
    am.set_active(Stack("sw", "l"))
    names = am.train_adapters("sw", "l")
    base = {n: p.detach().clone() for n, p in am.model.named_parameters() if n not in names}
    adapter_before = {n: p.detach().clone() for n, p in am.trainable_parameters().items()}
    optimizer = torch.optim.AdamW(am.trainable_parameters().values(), lr=1e-2)
    am.train()
    for _ in range(3):
        loss = F.cross_entropy(host_output(am, ids).flatten(0, 1), ids.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, param in am.model.named_parameters():
        if name in base:
            assert param.grad is None, name
            assert torch.equal(param, base[name]), name
    changed = [n for n, p in am.trainable_parameters().items() if not torch.equal(p, adapter_before[n])]
    assert changed and set(changed) <= set(names)


def test_train_adapters_with_head() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("t", BottleneckConfig.task())
    names = am.train_adapters("t", head=True)
    assert any(n.startswith("cls.predictions.transform") for n in names)
    assert any(".adapters.t." in n for n in names)
    assert not any(n.startswith("bert.encoder") and ".adapters." not in n for n in names)


def test_merged_adapter_cannot_train() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("l", LoraConfig())
    am.merge("l")
    with pytest.raises(NotMergeableError, match="unmerge"):
        am.train_adapters("l")


def test_bad_adapter_names_and_configs() -> None:
    am = AdaptedModel(make_host())
    for bad in ("", "a.b", 3):
        with pytest.raises(ConfigError):
            am.add_adapter(bad, LoraConfig())
    with pytest.raises(ConfigError, match="AdapterConfig"):
        am.add_adapter("x", {"method": "lora"})
    am.add_adapter("x", LoraConfig())
    with pytest.raises(ConfigError, match="already exists"):
        am.add_adapter("x", LoraConfig())


@pytest.mark.parametrize(
    ("kind", "preset"), [("bert", "bert"), ("xlm-roberta", "xlm-roberta"), ("roberta", "roberta")]
)
def test_presets_are_found_by_model_type(kind: str, preset: str) -> None:
    assert AdaptedModel(make_host(kind)).interface is PRESETS[preset]


def test_unknown_host_needs_an_interface() -> None:
    with pytest.raises(InterfaceError, match="no interface preset"):
        AdaptedModel(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    with pytest.raises(InterfaceError, match="unknown interface preset"):
        AdaptedModel(make_host(), interface="gpt9")
    broken = HostInterface(name="x", model_types=(), blocks=r"nowhere\.\d+", linears={}, sublayers={})
    with pytest.raises(InterfaceError, match="block pattern"):
        AdaptedModel(make_host(), interface=broken)


def test_fingerprint_is_shared_by_a_backbone_and_its_task_model() -> None:
    mlm = make_host("bert-mlm")
    mlm.bert.load_state_dict(make_host("bert").state_dict(), strict=False)  # the same backbone weights
    assert AdaptedModel(make_host("bert")).base_fingerprint == AdaptedModel(mlm).base_fingerprint
    assert AdaptedModel(make_host("bert")).base_fingerprint != AdaptedModel(make_host("roberta")).base_fingerprint


# A generic host described only by data: torchaudio's Conformer, whose blocks see (T, B, D).
CONFORMER = HostInterface(
    name="conformer",
    model_types=(),
    blocks=r"conformer_layers\.\d+",
    linears={"ffn1_in": "ffn1.sequential.1", "ffn1_out": "ffn1.sequential.4", "ffn2_out": "ffn2.sequential.4"},
    sublayers={
        "ffn1": Sublayer(input="ffn1.sequential.1", output="ffn1.sequential.4"),
        "ffn2": Sublayer(input="ffn2.sequential.1", output="ffn2.sequential.4"),
    },
    batch_dim=1,
)


def conformer() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchaudio.models.Conformer(
        input_dim=16, num_heads=2, ffn_dim=32, num_layers=2, depthwise_conv_kernel_size=3
    ).eval()


def test_generic_interface_on_a_conformer() -> None:
    feats, lengths = torch.randn(3, 11, 16), torch.tensor([11, 11, 6])  # each subset keeps T = 11
    with torch.no_grad():
        pristine, _ = conformer()(feats, lengths)
    am = AdaptedModel(conformer(), interface=CONFORMER)
    am.add_adapter("sw", BottleneckConfig(placement="parallel", positions=("ffn1", "ffn2"), reduction_factor=4))
    am.add_adapter("am", LoraConfig(r=2, targets=("ffn1_in", "ffn2_out")))
    am.set_active(Route([0, 1, 0], {0: "sw", 1: "am"}))
    with torch.no_grad():
        assert torch.equal(am(feats, lengths)[0], pristine)
    am.train_adapters("sw", "am")
    randomize(am)
    with torch.no_grad():
        routed, out_lengths = am(feats, lengths)
        assert torch.equal(out_lengths, lengths)
        am.set_active("sw")
        sw_rows = am(feats[[0, 2]], lengths[[0, 2]])[0]
        am.set_active("am")
        am_rows = am(feats[[1]], lengths[[1]])[0]
        am.set_active(Parallel("sw", "am"))
        parallel, _ = am(feats, lengths)
    torch.testing.assert_close(routed[[0, 2]], sw_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed[[1]], am_rows, rtol=1e-5, atol=1e-5)
    assert parallel.shape[0] == 6
    torch.testing.assert_close(parallel[[0, 2]], sw_rows, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parallel[[4]], am_rows, rtol=1e-5, atol=1e-5)
    host = am.unload()
    with torch.no_grad():
        assert torch.equal(host(feats, lengths)[0], pristine)
