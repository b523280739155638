"""The shared training loop: learning, freezing, exact resume after SIGKILL, data-parallel equivalence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_worker import build, collate, dataset, loss_fn

from polyglot_adapters.errors import ConfigError, CorruptArtifactError
from polyglot_adapters.training import TrainConfig, train

WORKER = Path(__file__).with_name("train_worker.py")
ENV = {**os.environ, "PYTHONPATH": str(WORKER.parent), "OMP_NUM_THREADS": "1"}


def run_worker(out: Path, *args: str, torchrun: int = 0, stall_at: int = 0) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), str(out), *args]
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={torchrun}",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
            *command[1:],
        ]
    if stall_at:
        command.append(f"--stall-at={stall_at}")
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def adapters(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in ("lang", "task"):
        for key, value in load_file(out / "final" / name / "adapter.safetensors").items():
            tensors[f"{name}/{key}"] = value
    return tensors


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("baseline")
    finish(run_worker(out))
    return adapters(out)


def test_resume_after_sigkill_is_bit_exact(baseline: dict[str, torch.Tensor], tmp_path: Path) -> None:
    proc = run_worker(tmp_path, stall_at=6)
    state = tmp_path / "checkpoint" / "state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["step"] == 6:
            break
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("the worker wrote no checkpoint at step 6")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "final").exists()
    out = finish(run_worker(tmp_path))
    assert "resumed_from=6" in out
    resumed = adapters(tmp_path)
    assert resumed.keys() == baseline.keys()
    for key, value in baseline.items():
        assert torch.equal(resumed[key], value), key


def test_two_processes_equal_one_with_the_same_global_batch(baseline: dict[str, torch.Tensor], tmp_path: Path) -> None:
    finish(run_worker(tmp_path, torchrun=2))
    parallel = adapters(tmp_path)
    for key, value in baseline.items():
        # Adam normalises each update, so float summation-order differences grow a little.
        torch.testing.assert_close(parallel[key], value, rtol=1e-4, atol=1e-5)


def test_learning_changes_only_the_adapters() -> None:
    am = build()
    frozen = {n: p.detach().clone() for n, p in am.model.named_parameters() if not p.requires_grad}
    config = TrainConfig(steps=30, lr=1e-2, batch_size=8, log_every=100)
    data = dataset()
    first = loss_fn(am, collate(data[:8], list(range(8)))).item()
    result = train(am, data, collate, loss_fn, config, progress=False)
    assert result.last_loss < first - 0.5
    for name, param in am.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


def test_accumulation_equals_a_larger_batch() -> None:
    results = []
    for batch, accumulation in ((8, 1), (8, 2), (8, 4)):
        am = build()
        train(am, dataset(), collate, loss_fn, TrainConfig(steps=4, batch_size=batch, grad_accumulation=accumulation))
        results.append(am.trainable_parameters())
    for other in results[1:]:
        for name, value in results[0].items():
            torch.testing.assert_close(other[name], value, rtol=1e-5, atol=1e-6)


def test_best_checkpoint_and_metrics_log(tmp_path: Path) -> None:
    am = build()
    data = dataset()
    held_out = collate(data[:8], list(range(8)))
    saved = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return {"valid_loss": loss_fn(model, held_out).item()}

    def save(model: torch.nn.Module, directory: Path) -> None:
        saved.append(directory)
        model.save_adapter("lang", directory)

    config = TrainConfig(steps=6, lr=1e-2, batch_size=8, eval_every=2, best_metric="valid_loss", log_every=1)
    result = train(am, data, collate, loss_fn, config, out_dir=tmp_path, eval_fn=evaluate, save_fn=save)
    assert result.best is not None and result.best["step"] in (2, 4, 6)
    assert saved and (tmp_path / "best" / "adapter.json").is_file()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert sum("valid_loss" in r for r in lines) == 3


def test_schedules() -> None:
    linear = TrainConfig(steps=10, lr=1.0, warmup_steps=2)
    assert [round(linear.lr_at(s), 3) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]
    cosine = TrainConfig(steps=10, lr=1.0, schedule="cosine")
    assert cosine.lr_at(0) == 1.0 and abs(cosine.lr_at(5) - 0.5) < 1e-9
    assert TrainConfig(steps=10, schedule="constant").lr_at(9) == TrainConfig(steps=10).lr


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"steps": 5, "lr": 0},
        {"steps": 5, "batch_size": 6, "grad_accumulation": 4},
        {"steps": 5, "schedule": "step"},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_bad_checkpoints_are_library_errors(tmp_path: Path) -> None:
    am = build()
    config = TrainConfig(steps=2, batch_size=8, save_every=1)
    train(am, dataset(), collate, loss_fn, config, out_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="another training config"):
        train(build(), dataset(), collate, loss_fn, TrainConfig(steps=3, batch_size=8), out_dir=tmp_path)
    state = tmp_path / "checkpoint" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CorruptArtifactError, match="checksum"):
        train(build(), dataset(), collate, loss_fn, config, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        frozen = build()
        frozen.requires_grad_(False)
        train(frozen, dataset(), collate, loss_fn, config)
