"""The shared training loop: learning, freezing, exact resume after SIGKILL, data-parallel equivalence."""

from __future__ import annotations

import json
import math
import os
import shutil
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
from polyglot_adapters.training import TrainConfig, read_checkpoint, train, write_checkpoint
from polyglot_adapters.training import loop as loop_module

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
    # A session of its own: a kill of its group reaches the launcher and its helpers.
    return subprocess.Popen(
        command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finish(proc: subprocess.Popen) -> str:
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        kill(proc)
    assert proc.returncode == 0, err[-3000:]
    return out


def kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def kill_after_checkpoint(proc: subprocess.Popen, out: Path, step: int, ranks: int = 1) -> None:
    """Waits until ``out/checkpoint`` holds ``step`` and every worker stalls, then SIGKILLs them all.

    The workers are killed by the ids they recorded, then the launcher: torchrun starts its
    workers in sessions of their own, where a kill of the launcher's group does not reach them.
    """
    state, stalled = out / "checkpoint" / "state.json", out / "stalled"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            pids = list(stalled.glob("*.pid")) if stalled.is_dir() else []
            if len(pids) == ranks and state.exists() and json.loads(state.read_text())["step"] == step:
                break
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            time.sleep(0.1)
        else:
            pytest.fail(f"the worker did not stall after a checkpoint at step {step}")
    finally:
        for pid_file in stalled.glob("*.pid") if stalled.is_dir() else []:
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
        kill(proc)
    shutil.rmtree(stalled)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "final").exists()


def adapters(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for name in ("lang", "task"):
        for key, value in load_file(out / "final" / name / "adapter.safetensors").items():
            tensors[f"{name}/{key}"] = value
    return tensors


def logged_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """An uninterrupted single-process run of the worker (12 steps, batch 8, checkpoints every 3)."""
    out = tmp_path_factory.mktemp("baseline")
    assert "resumed_from=0" in finish(run_worker(out))
    return adapters(out)


def test_resume_after_sigkill_is_bit_exact(baseline: dict[str, torch.Tensor], tmp_path: Path) -> None:
    proc = run_worker(tmp_path, stall_at=6)
    kill_after_checkpoint(proc, tmp_path, 6)
    (tmp_path / ".checkpoint.tmp-leftover").mkdir()  # as a kill during a checkpoint write leaves it
    out = finish(run_worker(tmp_path))
    assert "resumed_from=6" in out
    resumed = adapters(tmp_path)
    assert resumed.keys() == baseline.keys()
    for key, value in baseline.items():
        assert torch.equal(resumed[key], value), key
    assert logged_steps(tmp_path) == list(range(1, 13))  # records past the checkpoint were dropped, not doubled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "final", "metrics.jsonl"]


def test_two_processes_killed_and_resumed_equal_one_process(baseline: dict[str, torch.Tensor], tmp_path: Path) -> None:
    kill_after_checkpoint(run_worker(tmp_path, torchrun=2, stall_at=6), tmp_path, 6, ranks=2)
    assert read_checkpoint(tmp_path / "checkpoint")[1]["world_size"] == 2
    assert "resumed_from=6" in finish(run_worker(tmp_path, torchrun=2))
    parallel = adapters(tmp_path)
    for key, value in baseline.items():
        torch.testing.assert_close(parallel[key], value, rtol=1e-5, atol=1e-5)


def test_learning_changes_only_the_adapters() -> None:
    am = build()
    before = {n: p.detach().clone() for n, p in am.model.named_parameters()}
    modes = [m.training for m in am.modules()]
    trainable = set(am.trainable_parameters())
    assert trainable and all(".adapters." in n for n in trainable)
    config = TrainConfig(steps=30, lr=1e-2, batch_size=8, log_every=100)
    data = dataset()
    first = loss_fn(am, collate(data[:8], list(range(8)))).item()
    torch.manual_seed(7)
    expected_draw = torch.rand(3)
    torch.manual_seed(7)
    result = train(am, data, collate, loss_fn, config, progress=False)
    assert torch.equal(torch.rand(3), expected_draw)  # the caller's RNG is untouched
    assert [m.training for m in am.modules()] == modes and not am.model.training  # modes restored
    assert result.last_loss < first - 0.5
    for name, param in am.model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), name
        else:
            assert torch.equal(param, before[name]), name


def test_accumulation_equals_a_larger_batch() -> None:
    results = []
    for batch, accumulation in ((8, 1), (8, 2), (8, 4)):  # 1 x 8, 2 x 4, 4 x 2 examples
        am = build()
        config = TrainConfig(steps=4, lr=1e-2, batch_size=batch, grad_accumulation=accumulation)
        train(am, dataset(), collate, loss_fn, config, progress=False)
        results.append(am.trainable_parameters())
    for other in results[1:]:
        for name, value in results[0].items():
            torch.testing.assert_close(other[name], value, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains() -> None:
    am = build()
    config = TrainConfig(steps=20, lr=1e-2, batch_size=8, precision="bf16")
    first = loss_fn(am, collate(dataset()[:8], list(range(8)))).item()
    result = train(am, dataset(), collate, loss_fn, config, progress=False)
    assert math.isfinite(result.last_loss) and result.last_loss < first
    assert all(p.dtype == torch.float32 for p in am.trainable_parameters().values())


def test_best_checkpoint_and_metrics_log(tmp_path: Path) -> None:
    am = build()
    data = dataset()
    held_out = collate(data[:8], list(range(8)))
    saved = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        assert not model.training and not torch.is_grad_enabled()
        return {"valid_loss": loss_fn(model, held_out).item(), "neg": -loss_fn(model, held_out).item()}

    def save(model: torch.nn.Module, directory: Path) -> None:
        saved.append(directory)
        model.save_adapter("lang", directory)

    config = TrainConfig(steps=6, lr=1e-2, batch_size=8, eval_every=2, best_metric="valid_loss", log_every=1)
    result = train(am, data, collate, loss_fn, config, out_dir=tmp_path, eval_fn=evaluate, save_fn=save)
    assert result.best is not None and result.best["step"] in (2, 4, 6)
    assert saved and set(saved) == {tmp_path / "best"} and (tmp_path / "best" / "adapter.json").is_file()
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["step"] == result.best["step"] and best["value"] == result.best["valid_loss"]
    assert best["metric"] == "valid_loss" and best["mode"] == "min"
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5, 6]
    assert all(r["examples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0 for r in train_lines)
    assert [r["step"] for r in lines if "valid_loss" in r] == [2, 4, 6]
    assert read_checkpoint(tmp_path / "checkpoint")[1]["best"] == result.best
    # A finished run resumes at its end: nothing trains, nothing is logged twice.
    again = train(build(), data, collate, loss_fn, config, out_dir=tmp_path, eval_fn=evaluate, save_fn=save)
    assert again.resumed_from == 6 and again.best == result.best and math.isnan(again.last_loss)
    assert logged_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConfigError, match="best_metric 'accuracy'"):
        train(build(), data, collate, loss_fn, TrainConfig(steps=1, best_metric="accuracy"), eval_fn=evaluate)


def test_schedules() -> None:
    linear = TrainConfig(steps=10, lr=1.0, warmup_steps=2)
    assert [round(linear.lr_at(s), 3) for s in (0, 1, 2, 6, 9)] == [0.5, 1.0, 1.0, 0.5, 0.125]
    cosine = TrainConfig(steps=10, lr=1.0, schedule="cosine")
    assert cosine.lr_at(0) == 1.0 and abs(cosine.lr_at(5) - 0.5) < 1e-9 and cosine.lr_at(9) < 0.03
    warm_cosine = TrainConfig(steps=12, lr=2.0, warmup_steps=4, schedule="cosine")
    assert [warm_cosine.lr_at(s) for s in (0, 3)] == [0.5, 2.0] and abs(warm_cosine.lr_at(8) - 1.0) < 1e-9
    constant = TrainConfig(steps=10, lr=0.1, warmup_steps=5, schedule="constant")
    assert [round(constant.lr_at(s), 6) for s in (0, 4, 9)] == [0.02, 0.1, 0.1]


def test_the_loop_uses_the_schedule() -> None:
    am = build()
    seen = []
    original = torch.optim.AdamW.step

    def spy(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    config = TrainConfig(steps=5, lr=1.0, warmup_steps=2, schedule="cosine", batch_size=4)
    torch.optim.AdamW.step = spy
    try:
        train(am, dataset(), collate, loss_fn, config, progress=False)
    finally:
        torch.optim.AdamW.step = original
    assert seen == [config.lr_at(s) for s in range(5)]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 0},
        {"steps": 2.5},
        {"steps": True},
        {"steps": 5, "lr": 0},
        {"steps": 5, "lr": float("nan")},
        {"steps": 5, "weight_decay": -0.1},
        {"steps": 5, "weight_decay": "0.1"},
        {"steps": 5, "max_grad_norm": 0},
        {"steps": 5, "batch_size": 6, "grad_accumulation": 4},
        {"steps": 5, "schedule": "step"},
        {"steps": 5, "precision": "fp16"},
        {"steps": 5, "best_mode": "lowest"},
        {"steps": 5, "best_metric": ""},
        {"steps": 5, "seed": -1},
        {"steps": 5, "log_every": 0},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_config_json_round_trip() -> None:
    config = TrainConfig(steps=7, lr=3e-4, warmup_steps=2, schedule="cosine", max_grad_norm=None, best_metric="acc")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ConfigError, match="unknown training config keys"):
        TrainConfig.from_dict({**config.to_dict(), "epochs": 3})
    with pytest.raises(ConfigError):
        TrainConfig.from_dict({"lr": 0.1})  # steps missing
    with pytest.raises(ConfigError):
        TrainConfig.from_dict([1, 2])


def test_batch_must_divide_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_module._World, "from_env", classmethod(lambda cls, device: cls(0, 3)))
    with pytest.raises(ConfigError, match="not divisible by 3 processes"):
        train(build(), dataset(), collate, loss_fn, TrainConfig(steps=1, batch_size=8))


def test_bad_checkpoints_are_library_errors(tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch_size=8, save_every=1)
    train(build(), dataset(), collate, loss_fn, config, out_dir=tmp_path, progress=False)
    checkpoint = tmp_path / "checkpoint"
    tensors, meta = read_checkpoint(checkpoint)
    meta.pop("schema"), meta.pop("version"), meta.pop("state_sha256")

    def resume() -> None:
        train(build(), dataset(), collate, loss_fn, config, out_dir=tmp_path, progress=False)

    with pytest.raises(ConfigError, match="another training config"):
        train(build(), dataset(), collate, loss_fn, TrainConfig(steps=3, batch_size=8), out_dir=tmp_path)
    other = build()
    other.add_adapter("extra", build().adapters["lang"])
    other.train_adapters("lang", "task", "extra")
    with pytest.raises(ConfigError, match="other parameters"):
        train(other, dataset(), collate, loss_fn, config, out_dir=tmp_path)

    state = checkpoint / "state.safetensors"
    intact = state.read_bytes()
    state.write_bytes(intact[:100])
    with pytest.raises(CorruptArtifactError, match="checksum"):
        resume()
    assert state.read_bytes() == intact[:100]  # left for inspection, not overwritten by a fresh start
    (checkpoint / "state.json").write_text("{not json")
    with pytest.raises(CorruptArtifactError, match="unreadable checkpoint"):
        resume()
    for path in checkpoint.iterdir():
        path.unlink()
    with pytest.raises(CorruptArtifactError, match="unreadable checkpoint"):
        resume()
    # Consistent checksums but inconsistent contents (a bug or a hand edit) are caught too.
    name = next(k for k in tensors if k.startswith("exp_avg/"))
    write_checkpoint(checkpoint, {**tensors, name: torch.zeros(3)}, meta)
    with pytest.raises(CorruptArtifactError, match=f"tensor {name} is"):
        resume()
    write_checkpoint(checkpoint, {k: v for k, v in tensors.items() if not k.startswith("exp_avg_sq/")}, meta)
    with pytest.raises(CorruptArtifactError, match="exp_avg_sq"):
        resume()
    write_checkpoint(checkpoint, tensors, {**meta, "step": "2"})
    with pytest.raises(CorruptArtifactError, match="step"):
        resume()
    write_checkpoint(checkpoint, tensors, meta)
    assert train(build(), dataset(), collate, loss_fn, config, out_dir=tmp_path).resumed_from == 2

    with pytest.raises(ConfigError, match="no trainable parameters"):
        frozen = build()
        frozen.requires_grad_(False)
        train(frozen, dataset(), collate, loss_fn, config)
    with pytest.raises(ConfigError, match="empty"):
        train(build(), [], collate, loss_fn, config)


def test_a_kill_during_the_swap_resumes_from_the_previous_checkpoint(tmp_path: Path) -> None:
    config = TrainConfig(steps=4, lr=1e-2, batch_size=8, save_every=2)
    reference = build()
    train(reference, dataset(), collate, loss_fn, config, progress=False)
    calls = []

    def crash_at_step_3(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loss_fn(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(build(), dataset(), collate, crash_at_step_3, config, out_dir=tmp_path, progress=False)
    assert read_checkpoint(tmp_path / "checkpoint")[1]["step"] == 2
    # The state between the two renames: the old checkpoint moved aside, the new one not yet in place.
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    am = build()
    result = train(am, dataset(), collate, loss_fn, config, out_dir=tmp_path, progress=False)
    assert result.resumed_from == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "metrics.jsonl"]
    for name, value in reference.trainable_parameters().items():
        assert torch.equal(am.trainable_parameters()[name], value), name


def test_out_dir_in_the_config_and_a_moved_run_directory(tmp_path: Path) -> None:
    first = tmp_path / "run"
    config = TrainConfig(steps=2, batch_size=8, save_every=1, out_dir=str(first))
    train(build(), dataset(), collate, loss_fn, config, progress=False)
    assert read_checkpoint(first / "checkpoint")[1]["step"] == 2
    moved = tmp_path / "moved"
    first.rename(moved)  # out_dir is recorded but not part of the resume check
    again = TrainConfig.from_json(config.to_json())
    assert again == config
    assert train(build(), dataset(), collate, loss_fn, again, out_dir=moved, progress=False).resumed_from == 2
    assert not first.exists()  # the keyword argument overrides the config's out_dir


def _record_batches(config: TrainConfig, lengths: list[int] | None) -> list[list[int]]:
    """Trains a one-parameter model on the indices of 100 examples; returns every batch's indices, in order."""
    model = torch.nn.Linear(1, 1)
    batches: list[list[int]] = []

    def record(examples: list[int], seeds: list[int]) -> torch.Tensor:
        batches.append(list(examples))
        return torch.tensor(examples, dtype=torch.float32)[:, None]

    train(
        model,
        list(range(100)),
        record,
        lambda m, x: m(x).pow(2).mean(),
        config,
        progress=False,
        lengths=lengths,
    )
    return batches


def test_group_by_length_keeps_epochs_whole_and_batches_even() -> None:
    lengths = torch.randint(1, 1000, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    # 100 examples in batches of 8: 6 epochs in 75 steps, with batches straddling the epoch boundaries
    grouped = _record_batches(TrainConfig(steps=75, batch_size=8, group_by_length=True), lengths)
    plain = _record_batches(TrainConfig(steps=75, batch_size=8), lengths)
    for batches in (grouped, plain):
        flat = [i for batch in batches for i in batch]
        for epoch in range(6):  # every example exactly once per epoch
            assert sorted(flat[epoch * 100 : (epoch + 1) * 100]) == list(range(100))

    def spread(batches: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert spread(grouped) < 0.25 * spread(plain)
    assert grouped != plain and grouped == _record_batches(
        TrainConfig(steps=75, batch_size=8, group_by_length=True), lengths
    )
    # one epoch of full batches: batch order is shuffled, not longest first
    first_epoch = [max(lengths[i] for i in b) for b in grouped[:12]]
    assert first_epoch != sorted(first_epoch, reverse=True)


def test_group_by_length_needs_one_length_per_example() -> None:
    config = TrainConfig(steps=1, batch_size=8, group_by_length=True)
    with pytest.raises(ConfigError, match="one length per example"):
        _record_batches(config, None)
    with pytest.raises(ConfigError, match="one length per example"):
        train(
            torch.nn.Linear(1, 1),
            list(range(10)),
            lambda e, s: e,
            lambda m, b: m.weight.sum(),
            config,
            progress=False,
            lengths=[1, 2],
        )


def test_a_checkpoint_from_before_a_config_field_existed_resumes(tmp_path: Path) -> None:
    config = TrainConfig(steps=4, lr=1e-2, batch_size=8, save_every=2)
    first = build()
    train(first, dataset(), collate, loss_fn, TrainConfig(**{**config.to_dict(), "steps": 2}), out_dir=tmp_path)
    tensors, meta = read_checkpoint(tmp_path / "checkpoint")
    older = {k: v for k, v in meta["config"].items() if k != "group_by_length"}  # written before the field
    write_checkpoint(tmp_path / "checkpoint", tensors, {**meta, "config": {**older, "steps": 4}})
    assert train(build(), dataset(), collate, loss_fn, config, out_dir=tmp_path).resumed_from == 2
    changed = {**older, "steps": 4, "group_by_length": True}
    write_checkpoint(tmp_path / "checkpoint", tensors, {**meta, "config": changed})
    with pytest.raises(ConfigError, match=r"differs in \['group_by_length'\]"):
        train(build(), dataset(), collate, loss_fn, config, out_dir=tmp_path)
