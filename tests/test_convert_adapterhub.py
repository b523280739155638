"""AdapterHub bottlenecks built by ``adapters`` 1.3.0 (in its own venv: it pins transformers 4.57) convert exactly.

``make install`` creates that venv (``.venv-adapters``); this test runs its Python on
``adapterhub_fixture.py`` to build the checkpoints and their logits, then converts them here and
compares (max abs diff <= 1e-5, float32). In CI (``CI`` set) a missing venv fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForMaskedLM

from polyglot_adapters import AdaptedModel, Stack
from polyglot_adapters.cli.main import main
from polyglot_adapters.convert import ConversionError, convert, detect_format, read_foreign
from polyglot_adapters.merging import average_checkpoints

pytestmark = pytest.mark.slow

TOL = 1e-5
ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(os.environ.get("POLYGLOT_ADAPTERS_ADAPTERHUB_PYTHON", ROOT / ".venv-adapters" / "bin" / "python"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not PYTHON.is_file():
        message = f"{PYTHON} is missing: run `make install` (it creates the adapters 1.3.0 venv)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("adapterhub")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(PYTHON), str(Path(__file__).with_name("adapterhub_fixture.py")), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def reference(hub: Path) -> dict[str, torch.Tensor]:
    return load_file(hub / "logits.safetensors")


def base(hub: Path) -> BertForMaskedLM:
    return BertForMaskedLM.from_pretrained(hub / "base").eval()


def logits_of(hub: Path, directory: Path, ids: torch.Tensor) -> torch.Tensor:
    am = AdaptedModel(base(hub))
    am.set_active(am.load_adapter(directory))
    am.eval()
    with torch.no_grad():
        return am(input_ids=ids).logits


def test_base_is_the_same_model_in_both_stacks(hub: Path, reference: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        got = base(hub)(input_ids=reference["ids"]).logits
    assert (got - reference["base"]).abs().max().item() <= TOL


@pytest.mark.parametrize(
    "name", ["houlsby", "parallel", "custom", "pfeiffer", "pfeiffer2", "pfeiffer_both", "madx", "houlsby_inv"]
)
def test_bottlenecks_convert_with_the_same_logits(name: str, hub: Path, reference, tmp_path: Path) -> None:
    assert detect_format(hub / name).format == "adapters"
    out = convert(hub / name, tmp_path / name, host=base(hub), source_format="adapters")
    got = logits_of(hub, out, reference["ids"])
    assert (got - reference[name]).abs().max().item() <= TOL
    assert (got - reference["base"]).abs().max().item() > 1e-3


def test_pfeiffer_seq_bn_reads_the_base_layernorm(hub: Path, tmp_path: Path) -> None:
    saved = read_foreign(hub / "pfeiffer", base(hub))
    assert saved.config.placement == "pfeiffer" and saved.config.positions == ("ffn",)


def test_madx_language_adapter_inverts_before_the_output_embedding(hub: Path) -> None:
    config = read_foreign(hub / "madx", base(hub)).config
    assert (config.placement, config.invertible, config.inverse_at) == ("pfeiffer", True, "decoder")
    am = AdaptedModel(base(hub))
    am.add_adapter("madx", config)
    assert am.model.cls.predictions.transform.layer("madx").coupling is am.model.bert.embeddings.adapters["madx"]


@pytest.mark.parametrize(("first", "key"), [("pfeiffer", "stack"), ("madx", "madx_stack")])
def test_madx_stack_matches_adapterhub_stack(first: str, key: str, hub: Path, reference, tmp_path: Path) -> None:
    am = AdaptedModel(base(hub))
    for name in (first, "pfeiffer2"):
        am.load_adapter(convert(hub / name, tmp_path / name, host=base(hub)))
    am.set_active(Stack(first, "pfeiffer2"))
    am.eval()
    with torch.no_grad():
        got = am(input_ids=reference["ids"]).logits
    assert (got - reference[key]).abs().max().item() <= TOL
    assert (got - reference[first]).abs().max().item() > 1e-3


def test_average_matches_adapterhub_average_adapter(hub: Path, reference, tmp_path: Path) -> None:
    parts = [read_foreign(hub / n, base(hub)) for n in ("houlsby", "houlsby2")]
    out = average_checkpoints(parts, weights=[0.3, 0.7], name="avg").save(tmp_path / "avg")
    assert (logits_of(hub, out, reference["ids"]) - reference["avg"]).abs().max().item() <= TOL


@pytest.mark.parametrize(
    ("name", "fragment"), [("pfeiffer_ln_residual", "residual_before_ln=False"), ("glow", "'glow' invertible")]
)
def test_configs_without_an_exact_equivalent_are_refused(name: str, fragment: str, hub: Path, tmp_path) -> None:
    source = hub / name
    if name == "glow":  # adapters 1.3.0 cannot run a GLOW coupling on this host: edit a NICE one's config
        source = tmp_path / "glow-src"
        shutil.copytree(hub / "madx", source)
        doc = json.loads((source / "adapter_config.json").read_text())
        doc["config"]["inv_adapter"] = "glow"
        (source / "adapter_config.json").write_text(json.dumps(doc))
    with pytest.raises(ConversionError, match=fragment):
        convert(source, tmp_path / name, host=base(hub))
    assert not (tmp_path / name).exists()


def test_cli_convert(hub: Path, reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert", str(hub / "parallel"), str(tmp_path / "p"), "--base", str(hub / "base")])
    assert code == 0, capsys.readouterr().err
    assert (logits_of(hub, tmp_path / "p", reference["ids"]) - reference["parallel"]).abs().max().item() <= TOL
    capsys.readouterr()
    code = main(["convert", "--from", "peft", str(hub / "parallel"), str(tmp_path / "q"), "--base", str(hub / "base")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and "not peft" in err
    assert not (tmp_path / "q").exists()
