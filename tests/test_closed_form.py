"""Closed-form checks of each method against its formula."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from conftest import host_output, make_host, randomize
from torch import nn
from torch.nn import functional as F

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig
from polyglot_adapters.asr.model import conformer_transducer_tiny
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.methods.bottleneck import InvertibleCoupling

Q = "bert.encoder.layer.0.attention.self.query"
FFN_OUT = "bert.encoder.layer.1.output.dense"


def test_lora_equals_formula() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("l", LoraConfig(r=4, alpha=12))
    am.set_active("l")
    am.train_adapters("l")
    randomize(am)
    site = am.model.get_submodule(Q)
    layer = site.adapters["l"]
    x = torch.randn(3, 5, 16)
    weight, bias = site.base_layer.weight, site.base_layer.bias
    expected = x @ weight.T + bias + (12 / 4) * x @ layer.lora_A.T @ layer.lora_B.T
    torch.testing.assert_close(site(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 3.0 * layer.lora_B @ layer.lora_A)


def test_lora_merge_folds_exactly_and_unmerge_is_bit_exact() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("l", LoraConfig())
    am.set_active("l")
    am.train_adapters("l")
    randomize(am)
    site = am.model.get_submodule(Q)
    original = site.base_layer.weight.detach().clone()
    am.merge("l")
    torch.testing.assert_close(site.base_layer.weight, original + site.adapters["l"].delta_weight())
    am.unmerge("l")
    assert torch.equal(site.base_layer.weight, original)


def test_two_merged_loras_unmerge_in_any_order() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("a", LoraConfig(r=2))
    am.add_adapter("b", LoraConfig(r=3))
    am.train_adapters("a", "b")
    randomize(am)
    site = am.model.get_submodule(Q)
    original = site.base_layer.weight.detach().clone()
    am.merge("a")
    only_a = site.base_layer.weight.detach().clone()
    am.merge("b")
    am.unmerge("b")
    assert torch.equal(site.base_layer.weight, only_a)
    am.merge("b")
    am.unmerge("a")
    am.unmerge("b")
    assert torch.equal(site.base_layer.weight, original)


def _active_random(config: BottleneckConfig) -> AdaptedModel:
    """A tiny BERT host with one randomised, active bottleneck adapter ``b``."""
    am = AdaptedModel(make_host())
    am.add_adapter("b", config)
    am.set_active("b")
    am.train_adapters("b")
    randomize(am)
    return am


def _run_capturing(am: AdaptedModel, taps: dict[str, tuple[nn.Module, Callable[..., torch.Tensor]]]) -> dict:
    """Runs the host once; returns, per name, ``pick(args, out)`` of the named module's forward."""
    captured = {}
    for name, (module, pick) in taps.items():
        module.register_forward_hook(
            lambda m, args, out, name=name, pick=pick: captured.update({name: pick(args, out)})
        )
    am.model(input_ids=torch.randint(0, 50, (2, 6)))
    return captured


def test_series_bottleneck_formula() -> None:
    am = _active_random(BottleneckConfig(reduction_factor=4, non_linearity="gelu", scaling=0.5))
    site = am.model.get_submodule(FFN_OUT)
    layer = site.adapters["b"]
    assert layer.bn_down.shape == (4, 16) and layer.bn_up.shape == (16, 4)
    x = torch.randn(2, 3, 32)
    h = site.base_layer(x)
    expected = h + 0.5 * (F.gelu(h @ layer.bn_down.T + layer.bn_down_bias) @ layer.bn_up.T + layer.bn_up_bias)
    torch.testing.assert_close(site(x), expected)


@torch.no_grad()
def test_parallel_bottleneck_reads_the_sublayer_input() -> None:
    am = _active_random(BottleneckConfig.parallel())
    block = am.model.bert.encoder.layer[0]
    captured = _run_capturing(
        am,
        {
            "x": (block.intermediate, lambda args, out: args[0]),
            "y": (block.output.dense, lambda args, out: out),
        },
    )
    site = block.output.dense
    layer = site.adapters["b"]
    x = captured["x"]
    base_y = site.base_layer(block.intermediate.intermediate_act_fn(block.intermediate.dense.base_layer(x)))
    expected = base_y + 4.0 * (F.relu(x @ layer.bn_down.T + layer.bn_down_bias) @ layer.bn_up.T + layer.bn_up_bias)
    torch.testing.assert_close(captured["y"], expected)


@torch.no_grad()
def test_pfeiffer_bottleneck_reads_the_base_layernorm_of_the_residual_sum() -> None:
    am = _active_random(BottleneckConfig.pfeiffer(reduction_factor=4))
    block = am.model.bert.encoder.layer[1]
    captured = _run_capturing(
        am,
        {
            "block_out": (block.output, lambda args, out: out),
            "ffn_in": (block.output, lambda args, out: args[1]),
            "x": (block.output.dense, lambda args, out: args[0]),
        },
    )
    site, norm = block.output.dense, block.output.LayerNorm
    layer = site.adapters["b"]
    h, residual = site.base_layer(captured["x"]), captured["ffn_in"]
    normed = norm(h + residual)
    branch = F.relu(normed @ layer.bn_down.T + layer.bn_down_bias) @ layer.bn_up.T + layer.bn_up_bias
    # AdapterHub seq_bn: LN(h + residual + up(act(down(LN(h + residual))))).
    torch.testing.assert_close(captured["block_out"], norm(h + branch + residual))
    assert "LayerNorm" not in "".join(am.adapter_state_dict("b"))


def test_pfeiffer_placement_needs_a_post_layernorm_host() -> None:
    am = AdaptedModel(conformer_transducer_tiny(), interface="conformer-transducer")
    with pytest.raises(ConfigError, match="no post-residual LayerNorm"):
        am.add_adapter("pf", BottleneckConfig.pfeiffer())
    assert not am.adapters


def test_invertible_adapter_inverts_exactly() -> None:
    coupling = InvertibleCoupling(features=17, reduction=2.0, act="relu")
    randomize(coupling)
    x = torch.randn(3, 4, 17, dtype=torch.float32)
    y = coupling(x, x, None)
    assert not torch.allclose(y, x)
    torch.testing.assert_close(coupling.inverse(y), x, rtol=1e-5, atol=1e-5)


def test_language_adapter_wraps_embeddings_and_head_with_shared_parameters() -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("sw", BottleneckConfig.language())
    emb = am.model.bert.embeddings
    head = am.model.cls.predictions
    assert "sw" in emb.adapters and "sw" not in head.adapters and head.layer("sw").coupling is emb.adapters["sw"]
    names = am.adapter_state_dict("sw")
    assert any(k.startswith("embeddings.bn_inv_") for k in names)
    assert not any(k.startswith("cls.") for k in names)


def test_zero_init_bottleneck_is_identity_on_every_preset(ids: torch.Tensor) -> None:
    pristine = host_output(make_host(), ids)
    for name, config in {
        "language": BottleneckConfig.language(),
        "task": BottleneckConfig.task(),
        "knowledge": BottleneckConfig.knowledge(),
        "entity_alignment": BottleneckConfig.entity_alignment(),
        "houlsby": BottleneckConfig.houlsby(),
        "parallel": BottleneckConfig.parallel(),
        "pfeiffer": BottleneckConfig.pfeiffer(),
    }.items():
        am = AdaptedModel(make_host())
        am.add_adapter(name, config)
        am.set_active(name)
        with torch.no_grad():
            assert torch.equal(host_output(am, ids), pristine), name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"placement": "diagonal"},
        {"positions": ()},
        {"positions": ("ffn", "ffn")},
        {"reduction_factor": 0},
        {"non_linearity": "softsign"},
        {"layers": (-1,)},
        {"invertible": "yes"},
    ],
)
def test_bottleneck_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BottleneckConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"r": 0}, {"r": 2.5}, {"dropout": 1.0}, {"targets": ()}, {"layers": ("0",)}, {"alpha": "big"}]
)
def test_lora_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        LoraConfig(**kwargs)


def test_configs_round_trip_through_json() -> None:
    import json

    from polyglot_adapters import config_from_dict

    for config in (BottleneckConfig.language(), BottleneckConfig(layers=(0, 1)), LoraConfig(targets=("q", r"x\.y"))):
        assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_targets_and_positions_that_do_not_exist_are_config_errors() -> None:
    am = AdaptedModel(make_host())
    with pytest.raises(ConfigError, match="matches no linear layer"):
        am.add_adapter("x", LoraConfig(targets=("nope",)))
    with pytest.raises(ConfigError, match="not a sub-layer"):
        am.add_adapter("y", BottleneckConfig(positions=("cross",)))
    with pytest.raises(ConfigError, match="do not exist"):
        am.add_adapter("z", LoraConfig(layers=(7,)))
    assert am.adapters == {}
