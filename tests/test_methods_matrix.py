"""The registry-driven matrix: every method through add -> forward -> save -> load -> merge -> unload."""

from __future__ import annotations

import pytest
import torch
from conftest import host_output, make_host, randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, get_method, registered_methods
from polyglot_adapters.errors import NotMergeableError
from polyglot_adapters.methods.p_adapter import PAdapterConfig
from polyglot_adapters.methods.sparse_ft import SparseFTConfig


def _random_positions(sizes: dict[str, int], density: float, seed: int) -> dict[str, torch.Tensor]:
    """Sorted random flat positions per site key (a stand-in for an LT-SFT selection)."""
    gen = torch.Generator().manual_seed(seed)
    return {key: torch.randperm(n, generator=gen)[: int(n * density)].sort().values for key, n in sizes.items()}


# One or more example configs per registered method; the meta-test below fails when a method
# is registered without an entry here.
EXAMPLES = {
    "bottleneck": [
        BottleneckConfig(),
        BottleneckConfig.language(),
        BottleneckConfig.houlsby(reduction_factor=4),
        BottleneckConfig.parallel(),
        BottleneckConfig(placement="parallel", positions=("attn", "ffn"), non_linearity="gelu", layers=(1,)),
        BottleneckConfig(
            placement="pfeiffer",
            positions=("attn", "ffn"),
            non_linearity="tanh",
            invertible=True,
            inverse_at="decoder",
        ),
    ],
    "lora": [
        LoraConfig(),
        LoraConfig(r=3, alpha=5, targets=("q", "k", "v", "o", "ffn_in", "ffn_out")),
        LoraConfig(r=2, targets=(r"encoder\.layer\.0\.attention\.self\.(query|key)",)),
    ],
    "sparse_ft": [
        SparseFTConfig(targets=("q", "v"), layers=(1,)),
        SparseFTConfig(targets=("q", "v", "ffn_out"), density=0.1).with_mask(
            _random_positions(
                {
                    "encoder.layer.0.attention.self.query": 16 * 16,
                    "encoder.layer.1.attention.self.value": 16 * 16,
                    "encoder.layer.1.output.dense": 16 * 32,
                },
                density=0.1,
                seed=0,
            )
        ),
    ],
    # Only the rewrite variant is the identity when fresh; the slot variants are tested in test_p_adapter.py.
    "p_adapter": [PAdapterConfig.rewrite(hidden=8), PAdapterConfig(hidden=3)],
}

CASES = [(method, i, cfg) for method, cfgs in EXAMPLES.items() for i, cfg in enumerate(cfgs)]
HOST_KINDS = ["bert-mlm", "bert", "xlm-roberta", "roberta"]


def test_every_registered_method_is_in_the_matrix() -> None:
    missing = sorted(set(registered_methods()) - set(EXAMPLES))
    assert not missing, f"registered methods without matrix examples: {missing}"
    for method, cfgs in EXAMPLES.items():
        assert cfgs and all(get_method(method).config_cls is type(c) for c in cfgs)


@pytest.mark.parametrize("kind", HOST_KINDS)
@pytest.mark.parametrize(("method", "index", "config"), CASES, ids=[f"{m}-{i}" for m, i, _ in CASES])
def test_life_cycle(kind: str, method: str, index: int, config, ids: torch.Tensor, tmp_path) -> None:
    pristine = host_output(make_host(kind), ids).detach()
    am = AdaptedModel(make_host(kind))
    am.add_adapter("a", config)
    am.set_active("a")

    # A fresh adapter is the identity.
    with torch.no_grad():
        assert torch.equal(host_output(am, ids), pristine)

    # Only the adapter trains; random weights change the output.
    trainable = am.train_adapters("a")
    assert trainable and all(".adapters.a." in n for n in trainable)
    assert sum(am.trainable_parameters()[n].numel() for n in trainable) == am.num_parameters("a")
    prefix = get_method(method).prefix
    assert all(n.rsplit(".", 1)[-1].startswith(prefix) for n in trainable)
    randomize(am, seed=index)
    with torch.no_grad():
        adapted = host_output(am, ids)
    assert not torch.allclose(adapted, pristine)

    # Save -> load into a fresh host gives identical outputs.
    am.save_adapter("a", tmp_path / "a")
    other = AdaptedModel(make_host(kind))
    assert other.load_adapter(tmp_path / "a") == "a"
    other.set_active("a")
    with torch.no_grad():
        assert torch.equal(host_output(other, ids), adapted)

    # Merge: exact up to float rounding when mergeable; refused without side effects otherwise.
    if get_method(method).mergeable:
        am.merge("a")
        with torch.no_grad():
            torch.testing.assert_close(host_output(am, ids), adapted, rtol=1e-5, atol=1e-5)
        am.unmerge("a")
    else:
        with pytest.raises(NotMergeableError):
            am.merge("a")
    with torch.no_grad():
        assert torch.equal(host_output(am, ids), adapted)

    # Unload restores the original modules: bit-identical outputs, no wrappers left.
    host = am.unload()
    with torch.no_grad():
        assert torch.equal(host_output(host, ids), pristine)
    assert not any("base_layer" in n or "adapters" in n for n, _ in host.named_parameters())
    assert all(p.requires_grad for p in host.parameters())
