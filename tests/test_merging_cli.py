"""The merge, merge per-language and convert commands: results, one-line errors, nothing written on error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_host, randomize
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig
from polyglot_adapters.cli.main import main
from polyglot_adapters.io import read_meta


def save(tmp_path: Path, name: str, config, seed: int) -> Path:
    am = AdaptedModel(make_host())
    am.add_adapter(name, config)
    am.train_adapters(name)
    randomize(am, seed=seed)
    return am.save_adapter(name, tmp_path / name)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_commands(capsys) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "merge" in out and "convert" in out
    code, out, _ = run(capsys, "merge", "--help")
    assert code == 0 and "per-language" in out


def test_merge_average_and_per_language(tmp_path: Path, capsys) -> None:
    a = save(tmp_path, "a", LoraConfig(r=2), seed=1)
    b = save(tmp_path, "b", LoraConfig(r=4), seed=2)
    code, out, err = run(
        capsys, "merge", "--method", "ties", a, b, "--out", tmp_path / "m", "--weights", "0.5,0.5",
        "--density", "0.5", "--rank", "max",
    )  # fmt: skip
    assert code == 0, err
    meta = read_meta(tmp_path / "m")
    assert meta["method"] == "lora" and meta["config"]["r"] == 4 and meta["merge"]["how"] == "ties"
    code, out, err = run(capsys, "info", tmp_path / "m", "--json")
    assert code == 0 and json.loads(out)["method"] == "lora"
    c1, c2 = save(tmp_path, "c1", BottleneckConfig(), seed=3), save(tmp_path, "c2", BottleneckConfig(), seed=4)
    code, _, err = run(
        capsys,
        "merge",
        "adapters",
        "--method",
        "checkpoint-average",
        c1,
        c2,
        "--out",
        tmp_path / "avg",
        "--ema",
        "0.5",
    )
    assert code == 0, err
    assert read_meta(tmp_path / "avg")["merge"]["weights"] == [0.5, 0.5]
    log = tmp_path / "metrics.jsonl"
    log.write_text(
        json.dumps({"language": "sw", "checkpoint": "c1", "dev_loss": 2.0})
        + "\n"
        + json.dumps({"language": "sw", "checkpoint": "c2", "dev_loss": 1.0})
        + "\n"
    )
    code, out, err = run(
        capsys, "merge", "per-language", "--metrics", log, "--out", tmp_path / "all", "--metric", "dev_loss"
    )
    assert code == 0, err
    assert "sw: dev_loss=1" in out and (tmp_path / "all" / "bundle.safetensors").is_file()


def test_convert_round_trip_through_the_cli(tmp_path: Path, capsys) -> None:
    make_host().save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(make_host(), PeftLoraConfig(r=2, target_modules=["query", "value"]))
    peft_model.save_pretrained(tmp_path / "peft")
    code, out, err = run(
        capsys, "convert", tmp_path / "peft", tmp_path / "ours", "--base", tmp_path / "base", "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {"from": "peft", "to": "polyglot", "out": str(tmp_path / "ours")}
    assert read_meta(tmp_path / "ours")["config"]["targets"] == ["q", "v"]
    code, out, err = run(
        capsys, "convert", tmp_path / "ours", tmp_path / "back", "--to", "peft", "--base", tmp_path / "base"
    )
    assert code == 0, err
    assert (tmp_path / "back" / "adapter_model.safetensors").is_file()


def test_errors_are_one_line_and_write_nothing(tmp_path: Path, capsys) -> None:
    a = save(tmp_path, "a", LoraConfig(r=2), seed=1)
    b = save(tmp_path, "b", LoraConfig(r=4), seed=2)
    bn = save(tmp_path, "bn", BottleneckConfig(), seed=3)
    make_host().save_pretrained(tmp_path / "base")
    cases = [
        (["merge", a, b, "--out", tmp_path / "x"], "ranks differ"),
        (["merge", a, bn, "--out", tmp_path / "x"], "different methods"),
        (
            ["merge", "--method", "checkpoint-average", a, a, "--out", tmp_path / "x", "--weights", "0.7,0.7"],
            "sum to 1",
        ),
        (["merge", "--method", "dare", a, a, "--out", tmp_path / "x", "--density", "1.5"], "density"),
        (
            ["merge", "per-language", "--metrics", tmp_path / "none.jsonl", "--out", tmp_path / "x", "--metric", "m"],
            "no such",
        ),
        (["convert", tmp_path / "base", tmp_path / "x", "--base", tmp_path / "base"], "not a recognised checkpoint"),
        (["convert", a, tmp_path / "x", "--base", tmp_path / "nowhere"], "no config.json"),
    ]
    for argv, fragment in cases:
        code, _, err = run(capsys, *argv)
        lines = err.splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
        assert not (tmp_path / "x").exists()
    code, _, err = run(capsys, "merge", a, a, "--out", tmp_path / "x", "--rank", "big")
    assert code == 2 and "--rank" in err and not (tmp_path / "x").exists()
