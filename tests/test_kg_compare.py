"""The PyKEEN comparison: budget modes (same epochs, same training seconds) on Nations with a tiny in-process BERT."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import char_tokenizer
from test_kg_objectives import tiny_config
from transformers import BertModel, PreTrainedTokenizerFast

from polyglot_adapters.errors import ConfigError
from polyglot_adapters.kg import KGDataset, load_kg
from polyglot_adapters.kg.compare import BUDGETS, compare_with_pykeen, pykeen_baseline

OURS = "text-transe (tp adapter)"
BASELINES = ("pykeen TransE", "pykeen RotatE")


@pytest.fixture
def nations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KGDataset:
    monkeypatch.setenv("PYSTOW_HOME", str(tmp_path / "pystow"))
    return load_kg("nations", cache_dir=tmp_path / "kg")


def tiny_base(kg: KGDataset) -> tuple[BertModel, PreTrainedTokenizerFast]:
    texts = [label for labels in kg.entities.values() for label in labels.values()]
    texts += ["query: (), ___ .", *(r.replace("_", " ") for r in kg.relations)]
    tok = char_tokenizer(texts)
    torch.manual_seed(0)
    return BertModel(tiny_config(len(tok))).eval(), tok


def test_time_budget_gives_pykeen_our_training_seconds(nations: KGDataset) -> None:
    model, tok = tiny_base(nations)
    results = compare_with_pykeen(model, tok, nations, epochs=1, budget="time", batch_size=64)
    ours = results[OURS]
    assert ours["epochs"] == 1 and ours["seconds"] > 0 and 0 < ours["mrr"] <= 1
    for name in BASELINES:
        run = results[name]
        assert run["budget_seconds"] == pytest.approx(ours["seconds"])
        assert run["epochs"] >= 1 and 0 < run["mrr"] <= 1 and run["eval_seconds"] > 0
        # It stops after the epoch ending nearest the allowance: off by at most about half an epoch.
        epoch_seconds = run["seconds"] / run["epochs"]
        assert abs(run["seconds"] - ours["seconds"]) <= 0.6 * epoch_seconds + 0.05 * ours["seconds"], run


def test_epoch_budget_records_the_same_epochs(nations: KGDataset) -> None:
    run = pykeen_baseline("nations", "TransE", epochs=2, batch_size=256)
    assert run["epochs"] == 2 and "budget_seconds" not in run and run["seconds"] > 0


def test_bad_budgets_are_one_line_errors_before_training(nations: KGDataset) -> None:
    assert BUDGETS == ("epochs", "time")
    model, tok = tiny_base(nations)
    with pytest.raises(ConfigError, match="budget 'wallclock' is not one of epochs, time"):
        compare_with_pykeen(model, tok, nations, epochs=1, budget="wallclock")
    with pytest.raises(ConfigError, match="epochs must be at least 1"):
        compare_with_pykeen(model, tok, nations, epochs=0)
    with pytest.raises(ConfigError, match="exactly one of epochs and train_seconds"):
        pykeen_baseline("nations", "TransE", epochs=1, train_seconds=1.0)
    with pytest.raises(ConfigError, match="exactly one of epochs and train_seconds"):
        pykeen_baseline("nations", "TransE")
    with pytest.raises(ConfigError, match="must be positive"):
        pykeen_baseline("nations", "TransE", train_seconds=0.0)


def test_recipe_prints_epochs_and_seconds_and_writes_the_budget(
    nations: KGDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location(
        "compare_pykeen", Path(__file__).resolve().parents[1] / "kg" / "compare_pykeen.py"
    )
    assert spec is not None and spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    monkeypatch.setattr(recipe, "load_kg", lambda name: nations)
    monkeypatch.setattr(recipe, "load_base", lambda name: tiny_base(nations))
    out = tmp_path / "nations.json"
    assert recipe.main(["--kg", "nations", "--epochs", "1", "--budget", "time", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "budget: ours 1 epochs, same seconds" in table and "epochs" in table.splitlines()[1]
    doc = json.loads(out.read_text())
    assert doc["budget"] == "time" and set(doc["results"]) == {OURS, *BASELINES}
    assert all(run["epochs"] >= 1 and run["seconds"] > 0 for run in doc["results"].values())
    with pytest.raises(SystemExit):
        recipe.main(["--budget", "wallclock"])
