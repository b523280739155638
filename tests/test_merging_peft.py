"""Merges agree with PEFT 0.21's own ``add_weighted_adapter`` on the same adapters (logits within 1e-5, float32)."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
import torch
from conftest import make_host
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from peft.utils import merge_utils

from polyglot_adapters import AdaptedModel
from polyglot_adapters.convert import read_foreign
from polyglot_adapters.merging import merge_adapters

TOL = 1e-5


def _peft_adapter(path: Path, r: int, alpha: float, seed: int) -> Path:
    model = get_peft_model(make_host(), PeftLoraConfig(r=r, lora_alpha=alpha, target_modules=["query", "value"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("peft")
    return [
        _peft_adapter(root / "a", r=2, alpha=4.0, seed=1),
        _peft_adapter(root / "b", r=4, alpha=4.0, seed=2),
        _peft_adapter(root / "c", r=4, alpha=8.0, seed=3),
    ]


def _peft_logits(sources: list[Path], ids: torch.Tensor, weights: list[float], **kwargs) -> tuple[torch.Tensor, list]:
    """PEFT's merge; also returns the global RNG state at PEFT's first DARE draw (if any)."""
    model = PeftModel.from_pretrained(make_host(), sources[0], adapter_name="s0")
    for i, src in enumerate(sources[1:], start=1):
        model.load_adapter(src, adapter_name=f"s{i}")
    states = []
    original = merge_utils.random_pruning

    def spy(tensor: torch.Tensor, density: float, rescale: bool) -> torch.Tensor:
        if not states:
            states.append(torch.get_rng_state())
        return original(tensor, density, rescale)

    merge_utils.random_pruning = spy
    try:
        model.add_weighted_adapter([f"s{i}" for i in range(len(sources))], weights, "merged", **kwargs)
    finally:
        merge_utils.random_pruning = original
    model.set_adapter("merged")
    with torch.no_grad():
        return model(input_ids=ids).logits, states


def _our_logits(merged, ids: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    am = AdaptedModel(make_host())
    name = am.load_adapter(merged.save(tmp_path / "merged"))
    am.set_active(name)
    with torch.no_grad():
        return am(input_ids=ids).logits


CASES = [
    # (ours, PEFT's combination_type, rank, density, sign method)
    ("linear", "cat", "sum", 1.0, "total"),
    ("linear", "svd", 3, 1.0, "total"),
    ("ties", "ties_svd", 16, 0.5, "total"),
    ("ties", "ties_svd", 5, 0.3, "frequency"),
    ("dare", "dare_linear_svd", 16, 0.5, "total"),
    ("dare_ties", "dare_ties_svd", 16, 0.6, "frequency"),
]


@pytest.mark.parametrize(("how", "peft_type", "rank", "density", "sign"), CASES, ids=[c[1] for c in CASES])
def test_same_logits_as_peft(how, peft_type, rank, density, sign, sources, ids, tmp_path) -> None:
    weights = [0.5, -0.3, 0.9]
    kwargs = {"combination_type": peft_type, "majority_sign_method": sign}
    if peft_type != "cat":
        kwargs["svd_rank"] = rank
    if density < 1:
        kwargs["density"] = density
    expected, states = _peft_logits(sources, ids, weights, **kwargs)
    generator = torch.Generator()
    if states:  # replay PEFT's random stream: the masks are then the same draws
        generator.set_state(states[0])
    adapters = [read_foreign(src, make_host()) for src in sources]
    merged = merge_adapters(
        adapters, how=how, weights=weights, density=density, sign_method=sign, rank=rank, generator=generator
    )
    got = _our_logits(merged, ids, tmp_path)
    assert peft.__version__ == "0.21.0"
    assert (got - expected).abs().max().item() <= TOL
    # The merge does something: it differs from the bare host.
    with torch.no_grad():
        bare = make_host()(input_ids=ids).logits
    assert (got - bare).abs().max().item() > 1e-3
