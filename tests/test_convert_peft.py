"""PEFT LoRA checkpoints built by PEFT 0.21 convert both ways with the same logits (max abs diff <= 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_host, randomize
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from transformers import BertConfig, BertForMaskedLM

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig
from polyglot_adapters.convert import ConversionError, convert, detect_format, host_from_config

TOL = 1e-5


def peft_checkpoint(path: Path, seed: int = 0, kind: str = "bert-mlm", **options) -> tuple[Path, torch.nn.Module]:
    model = get_peft_model(make_host(kind), PeftLoraConfig(**{"r": 4, "lora_alpha": 8, **options}))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    model.save_pretrained(path)
    return path, model.eval()


def our_logits(directory: Path, ids: torch.Tensor, kind: str = "bert-mlm") -> torch.Tensor:
    am = AdaptedModel(make_host(kind))
    am.set_active(am.load_adapter(directory))
    am.eval()  # LoRA dropout off
    with torch.no_grad():
        out = am(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


OPTIONS = {
    "qv": {"target_modules": ["query", "value"]},
    "all-linear-rslora": {
        "target_modules": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
        "use_rslora": True,
        "lora_dropout": 0.1,
    },
    "one-layer": {"target_modules": ["query", "value"], "layers_to_transform": [1], "r": 3, "lora_alpha": 5},
}


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_import_gives_peft_logits(case: str, ids: torch.Tensor, tmp_path: Path) -> None:
    src, peft_model = peft_checkpoint(tmp_path / "peft", **OPTIONS[case])
    assert detect_format(src).format == "peft"
    out = convert(src, tmp_path / "ours", host=make_host())
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    got = our_logits(out, ids)
    assert (got - expected).abs().max().item() <= TOL
    with torch.no_grad():
        assert (got - make_host()(input_ids=ids).logits).abs().max().item() > 1e-3


@pytest.mark.parametrize("kind", ["bert-mlm", "bert"])
def test_export_loads_in_peft_with_our_logits(kind: str, ids: torch.Tensor, tmp_path: Path) -> None:
    am = AdaptedModel(make_host(kind))
    am.add_adapter("qa", LoraConfig(r=3, alpha=6, targets=("q", "k", "ffn_out"), layers=(0,)))
    am.train_adapters("qa")
    randomize(am, seed=4)
    src = am.save_adapter("qa", tmp_path / "qa")
    dst = convert(src, tmp_path / "peft", host=make_host(kind), to="peft")
    assert detect_format(dst).format == "peft"
    peft_model = PeftModel.from_pretrained(make_host(kind), dst).eval()
    with torch.no_grad():
        out = peft_model(input_ids=ids)
        expected = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert (our_logits(src, ids, kind) - expected).abs().max().item() <= TOL
    # ... and back again, through the files only.
    again = convert(dst, tmp_path / "again", host=make_host(kind))
    assert (our_logits(again, ids, kind) - expected).abs().max().item() <= TOL


def test_base_from_a_config_directory(ids: torch.Tensor, tmp_path: Path) -> None:
    make_host().save_pretrained(tmp_path / "base")
    host = host_from_config(tmp_path / "base")
    assert next(host.parameters()).device.type == "meta"
    src, peft_model = peft_checkpoint(tmp_path / "peft", target_modules=["query", "value"])
    out = convert(src, tmp_path / "ours", host=host)
    with torch.no_grad():
        assert (our_logits(out, ids) - peft_model(input_ids=ids).logits).abs().max().item() <= TOL


def test_unsupported_peft_checkpoints_are_refused(tmp_path: Path) -> None:
    cases = {
        "dora": ({"target_modules": ["query"], "use_dora": True}, "use_dora"),
        "bias": ({"target_modules": ["query"], "bias": "lora_only"}, "bias"),
        "saved": ({"target_modules": ["query"], "modules_to_save": ["cls"]}, "modules_to_save"),
        "head": ({"target_modules": ["dense"]}, "transform.dense"),
    }
    for name, (options, fragment) in cases.items():
        src, _ = peft_checkpoint(tmp_path / name, **options)
        with pytest.raises(ConversionError, match=fragment):
            convert(src, tmp_path / f"{name}-out", host=make_host())
        assert not (tmp_path / f"{name}-out").exists()
    src, _ = peft_checkpoint(tmp_path / "qv", target_modules=["query", "value"])
    with pytest.raises(ConversionError, match="linear layers of the base model"):
        convert(src, tmp_path / "wrong-base", host=BertForMaskedLM(BertConfig(**{**TINY, "num_hidden_layers": 1})))
    with pytest.raises(ConversionError, match="not adapters"):
        convert(src, tmp_path / "x", host=make_host(), source_format="adapters")
    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    doc = json.loads((src / "adapter_config.json").read_text())
    (ia3 / "adapter_config.json").write_text(json.dumps({**doc, "peft_type": "IA3"}))
    (ia3 / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ConversionError, match="not LoRA"):
        convert(ia3, tmp_path / "y", host=make_host())
    am = AdaptedModel(make_host())
    am.add_adapter("bn", BottleneckConfig())
    bn = am.save_adapter("bn", tmp_path / "bn")
    with pytest.raises(ConversionError, match="no PEFT LoRA equivalent"):
        convert(bn, tmp_path / "z", host=make_host(), to="peft")
    assert not any((tmp_path / d).exists() for d in ("x", "y", "z", "wrong-base"))


def test_format_comes_from_contents_not_names(tmp_path: Path) -> None:
    src, _ = peft_checkpoint(tmp_path / "peft", target_modules=["query"])
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "settings.json").write_bytes((src / "adapter_config.json").read_bytes())
    (renamed / "weights.bin").write_bytes((src / "adapter_model.safetensors").read_bytes())
    assert detect_format(renamed).format == "peft"
    (renamed / "hub.json").write_text(json.dumps({"config": {"reduction_factor": 2}, "version": "adapters.1.3.0"}))
    with pytest.raises(ConversionError, match="several formats"):
        detect_format(renamed)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "adapter_config.json").write_text("{}")
    (fake / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConversionError, match="not a recognised checkpoint"):
        detect_format(fake)
