"""composable-sft diffs: read through the restricted unpickler only, applied with the source library's logits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_host

from polyglot_adapters import AdaptedModel, LoraConfig
from polyglot_adapters.convert import (
    ConversionError,
    SparseDiff,
    UnsafeArtifactError,
    convert,
    detect_format,
    read_foreign,
)
from polyglot_adapters.errors import BaseModelMismatchError, CorruptArtifactError

PARAMS = (
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.1.output.dense.bias",
    "bert.embeddings.word_embeddings.weight",
    "cls.predictions.transform.dense.weight",
)


def dense_diffs(seed: int = 0, density: float = 0.1) -> dict[str, torch.Tensor]:
    host, gen = make_host(), torch.Generator().manual_seed(seed)
    out = {}
    for name in PARAMS:
        shape = host.get_parameter(name).shape
        keep = torch.rand(shape, generator=gen) < density
        out[name] = torch.randn(shape, generator=gen) * 0.5 * keep
    return out


def encode(dense: torch.Tensor) -> dict:
    """composable-sft's on-disk encoding: column-major flat indices, delta-coded, the first a numpy integer."""
    coords = dense.to_sparse().coalesce().indices()  # (ndim, nnz)
    multipliers = np.cumprod([1, *dense.shape[:-1]], dtype=np.int64)
    flat = multipliers @ coords.numpy()
    order = np.argsort(flat, kind="stable")
    flat = flat[order]
    steps = [flat[0], *(flat[1:] - flat[:-1]).tolist()] if flat.size else []
    values = dense[tuple(coords)][torch.from_numpy(order)]
    return {"size": dense.shape, "index_steps": steps, "values": values}


def write_sft(directory: Path, diffs: dict, absolute: dict | None = None, name: str = "pytorch_diff.bin") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"diffs": {k: encode(v) for k, v in diffs.items()}, "abs": absolute or {}}, directory / name)
    return directory


def reference_logits(diffs: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """What composable-sft's ``SFT.apply`` does: ``param += diff`` for every named parameter."""
    host = make_host()
    with torch.no_grad():
        for name, diff in diffs.items():
            host.get_parameter(name).add_(diff)
        return host(input_ids=ids).logits


def test_diff_applies_with_the_source_librarys_logits(ids: torch.Tensor, tmp_path: Path) -> None:
    diffs = dense_diffs()
    src = write_sft(tmp_path / "sft", diffs)
    assert detect_format(src).format == "composable-sft"
    out = convert(src, tmp_path / "diff", host=make_host())
    assert sorted(p.name for p in out.iterdir()) == ["adapter.json", "adapter.safetensors"]
    diff = SparseDiff.read(out)
    assert diff.nnz == sum(int((d != 0).sum()) for d in diffs.values())
    host = make_host()
    with torch.no_grad():
        pristine = host(input_ids=ids).logits
        before = {n: p.clone() for n, p in host.named_parameters()}
        revert = diff.apply(host)
        got = host(input_ids=ids).logits
        revert()
        assert all(torch.equal(p, before[n]) for n, p in host.named_parameters())
        assert torch.equal(host(input_ids=ids).logits, pristine)
    assert (got - reference_logits(diffs, ids)).abs().max().item() <= 1e-5
    assert (got - pristine).abs().max().item() > 1e-3


def test_older_sparse_tensor_layout_and_adapted_models(ids: torch.Tensor, tmp_path: Path) -> None:
    diffs = dense_diffs(seed=1)
    src = tmp_path / "old"
    src.mkdir()
    torch.save({"body": {k: v.to_sparse().coalesce() for k, v in diffs.items()}}, src / "pytorch_diff.bin")
    diff = read_foreign(src, make_host())
    am = AdaptedModel(make_host())  # the diff stacks under adapters: it edits the wrapped base weights
    am.add_adapter("lora", LoraConfig())
    revert = diff.apply(am)
    with torch.no_grad():
        got = am(input_ids=ids).logits
    revert()
    assert (got - reference_logits(diffs, ids)).abs().max().item() <= 1e-5


def test_malicious_pickle_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    src = tmp_path / "evil"
    src.mkdir()
    torch.save({"diffs": {"x": Payload()}, "abs": {}}, src / "pytorch_diff.bin")
    with pytest.raises(UnsafeArtifactError, match="refused to unpickle.*system"):
        convert(src, tmp_path / "out", host=make_host())
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_bad_diffs_are_refused(tmp_path: Path) -> None:
    diffs = dense_diffs(seed=2)
    name = PARAMS[0]
    good = encode(diffs[name])
    cases = [
        ({**good, "index_steps": [*good["index_steps"][:-1], 10**6]}, CorruptArtifactError, "out of range"),
        (
            {**good, "index_steps": [good["index_steps"][0], 0, *good["index_steps"][2:]]},
            CorruptArtifactError,
            "repeated",
        ),
        ({**good, "values": good["values"].clone().fill_(float("nan"))}, CorruptArtifactError, "finite"),
        ({**good, "values": good["values"][:-1]}, CorruptArtifactError, "one value per index"),
        ({**good, "size": torch.Size([16, 17])}, ConversionError, "in the base model"),
    ]
    for i, (entry, error, fragment) in enumerate(cases):
        src = tmp_path / f"bad{i}"
        src.mkdir()
        torch.save({"diffs": {name: entry}, "abs": {}}, src / "pytorch_diff.bin")
        with pytest.raises(error, match=fragment):
            convert(src, tmp_path / f"out{i}", host=make_host())
        assert not (tmp_path / f"out{i}").exists()
    head = write_sft(tmp_path / "head", {}, absolute={"classifier.weight": torch.zeros(2, 2)})
    with pytest.raises(ConversionError, match="absolute values"):
        convert(head, tmp_path / "o", host=make_host())
    unknown = write_sft(tmp_path / "unknown", {"bert.pooler.dense.weight": torch.zeros(16, 16)})
    with pytest.raises(ConversionError, match="not in the base model"):
        convert(unknown, tmp_path / "o", host=make_host())
    with pytest.raises(ConversionError, match="no PEFT LoRA equivalent"):
        convert(write_sft(tmp_path / "ok", diffs), tmp_path / "o", host=make_host(), to="peft")
    assert not (tmp_path / "o").exists()


def test_detected_by_content_and_checked_against_the_base(tmp_path: Path) -> None:
    src = write_sft(tmp_path / "renamed", dense_diffs(), name="weights.dat")
    assert detect_format(src).format == "composable-sft"
    assert detect_format(src / "weights.dat").format == "composable-sft"
    diff = read_foreign(src, make_host())
    with pytest.raises(BaseModelMismatchError):
        diff.apply(make_host("roberta"))
    not_torch = tmp_path / "json-named-bin"
    not_torch.mkdir()
    (not_torch / "pytorch_diff.bin").write_text('{"diffs": {}}')
    with pytest.raises(ConversionError, match="not a recognised checkpoint"):
        detect_format(not_torch)
