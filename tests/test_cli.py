"""The ``polyglot-adapters`` command line: in-process through ``main([...])`` and once as a real process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import make_host, randomize

import polyglot_adapters
from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig
from polyglot_adapters.cli.main import main
from polyglot_adapters.io import CONFIG_NAME, WEIGHTS_NAME

DIFF_LINE = re.compile(r"^reloaded into a fresh copy of the base: max \|difference\| of logits = 0$", re.M)


@pytest.fixture(params=["language", "lora"])
def saved(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, AdaptedModel, str]:
    config = BottleneckConfig.language() if request.param == "language" else LoraConfig(r=4, targets=("q", "v"))
    am = AdaptedModel(make_host())
    am.add_adapter("sw", config)
    am.train_adapters("sw")
    randomize(am)
    return am.save_adapter("sw", tmp_path / "sw"), am, "sw"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


def table(out: str) -> dict[str, str]:
    rows = {}
    for line in out.splitlines():
        key, _, value = line.partition("  ")
        rows[key] = value.strip()
    return rows


# ------------------------------------------------------------------------------------------ help, version
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, flag)
    assert code == 0
    assert "Usage: polyglot-adapters" in out
    assert "info" in out and "demo" in out
    assert err == ""


@pytest.mark.parametrize("command", ["info", "demo"])
def test_command_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert f"Usage: polyglot-adapters {command}" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"polyglot-adapters, version {polyglot_adapters.__version__}"
    assert out.split()[-1] == polyglot_adapters.__version__
    assert err == ""


@pytest.mark.parametrize("argv", [["no-such-command"], ["info"], ["demo", "--steps", "0"], ["info", "--bogus", "x"]])
def test_usage_errors_exit_2_without_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in out + err
    assert "Error:" in err


# ------------------------------------------------------------------------------------------ info
def test_info_table(saved, capsys: pytest.CaptureFixture[str]) -> None:
    directory, am, name = saved
    code, out, err = run_cli(capsys, "info", directory)
    assert code == 0, err
    assert err == ""
    rows = table(out)
    config = am.adapters[name]
    assert rows["name"] == name
    assert rows["method"] == config.method
    assert rows["parameters"] == str(am.num_parameters(name))
    assert rows["tensors"] == str(len(am.adapter_state_dict(name)))
    assert rows["dtype"] == "float32"
    assert rows["schema_version"] == "1"
    assert rows["file_bytes"] == str((directory / WEIGHTS_NAME).stat().st_size)
    for field, value in am.base_fingerprint.items():
        shown = f"({len(value)} entries)" if isinstance(value, dict) else value  # the weight probe: JSON has it
        assert f"{field}={shown}" in rows["base"]
    for field, value in config.to_dict().items():
        if field != "method":
            assert f"{field}=" in rows["config"]
            assert str(list(value) if isinstance(value, tuple) else value) in rows["config"]


def test_info_json(saved, capsys: pytest.CaptureFixture[str]) -> None:
    directory, am, name = saved
    code, out, err = run_cli(capsys, "info", "--json", directory)
    assert code == 0, err
    summary = json.loads(out)
    config = am.adapters[name].to_dict()
    assert summary["name"] == name
    assert summary["method"] == config.pop("method")
    assert summary["config"] == json.loads(json.dumps(config))
    assert summary["parameters"] == am.num_parameters(name)
    assert summary["tensors"] == len(am.adapter_state_dict(name))
    assert summary["base"] == am.base_fingerprint
    assert summary["schema_version"] == 1
    assert summary["file_bytes"] == (directory / WEIGHTS_NAME).stat().st_size


def _truncate(directory: Path) -> Path:
    path = directory / WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:100])
    return path


def _flip(directory: Path) -> Path:
    path = directory / WEIGHTS_NAME
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _garble_json(directory: Path) -> Path:
    path = directory / CONFIG_NAME
    path.write_text(path.read_text()[:-20])
    return path


def _edit(key: str, value) -> Callable[[Path], Path]:
    def mutate(directory: Path) -> Path:
        path = directory / CONFIG_NAME
        doc = json.loads(path.read_text())
        node = doc
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
        path.write_text(json.dumps(doc))
        return path

    return mutate


def _remove(name: str) -> Callable[[Path], Path]:
    def mutate(directory: Path) -> Path:
        (directory / name).unlink()
        return directory / name

    return mutate


def _missing_dir(directory: Path) -> Path:
    return directory.parent / "does-not-exist"


def _a_file(directory: Path) -> Path:
    return directory / CONFIG_NAME


BROKEN = {
    "missing-dir": _missing_dir,
    "a-file-not-a-dir": _a_file,
    "truncated-weights": _truncate,
    "flipped-weights": _flip,
    "garbled-json": _garble_json,
    "missing-json": _remove(CONFIG_NAME),
    "missing-weights": _remove(WEIGHTS_NAME),
    "schema-version-99": _edit("schema_version", 99),
    "unknown-schema": _edit("schema", "other/adapter"),
    "unknown-config-key": _edit("config.colour", "blue"),
    "negative-reduction": _edit("config.reduction_factor", -1),
}


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_info_on_a_broken_adapter_is_one_error_line(case: str, as_json: bool, tmp_path: Path, capsys) -> None:
    am = AdaptedModel(make_host())
    am.add_adapter("a", BottleneckConfig.language())
    directory = am.save_adapter("a", tmp_path / "a")
    named = BROKEN[case](directory)
    target = named if case in ("missing-dir", "a-file-not-a-dir") else directory
    code, out, err = run_cli(capsys, "info", *(["--json"] if as_json else []), target)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, str(named))


# ------------------------------------------------------------------------------------------ demo
def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "demo"
    code, out, err = run_cli(capsys, "demo", "--smoke", "--steps", "5", "--out", out_dir)
    assert code == 0, err
    assert "Traceback" not in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["lang", "task"]
    for name in ("lang", "task"):
        assert sorted(p.name for p in (out_dir / name).iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert DIFF_LINE.search(out), out
    assert re.search(r"^step +5/5 +loss \d", out, re.M), out
    # The saved demo adapters are ordinary adapters: ``info`` reads them.
    code, out, _ = run_cli(capsys, "info", "--json", out_dir / "lang")
    assert code == 0
    assert json.loads(out)["method"] == "bottleneck"
    code, out, _ = run_cli(capsys, "info", "--json", out_dir / "task")
    assert code == 0
    assert json.loads(out)["method"] == "lora"


# ------------------------------------------------------------------------------------------ real process
def _process(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "polyglot_adapters.cli.main", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_subprocess_version_and_error_exit(tmp_path: Path) -> None:
    done = _process("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"polyglot-adapters, version {polyglot_adapters.__version__}"

    am = AdaptedModel(make_host())
    am.add_adapter("a", LoraConfig(r=2))
    directory = am.save_adapter("a", tmp_path / "a")
    _truncate(directory)
    done = _process("info", directory)
    assert done.returncode == 1
    assert done.stdout == ""
    assert_one_line_error(done.stderr, str(directory / WEIGHTS_NAME))


def test_installed_entry_point(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "polyglot-adapters"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    done = subprocess.run([str(script), "info", tmp_path / "nowhere"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert_one_line_error(done.stderr, str(tmp_path / "nowhere"))
