"""Per-language best-checkpoint selection from a metrics log, merged into one bundle file and loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_host, randomize

from polyglot_adapters import AdaptedModel, BottleneckConfig, LoraConfig, Route
from polyglot_adapters.errors import BaseModelMismatchError, CorruptArtifactError, PolyglotAdaptersError
from polyglot_adapters.merging import MergeError, load_bundle, merge_per_language, read_bundle, select_best
from polyglot_adapters.merging.per_language import BUNDLE_WEIGHTS

LANGS = ("sw", "am", "yo")
STEPS = (100, 200, 300)
# valid_wer per step and language; the best (lowest): sw at 200, am at 100, yo at 300
WER = {
    100: {"sw": 0.5, "am": 0.2, "yo": 0.9},
    200: {"sw": 0.3, "am": 0.4, "yo": 0.8},
    300: {"sw": 0.4, "am": 0.3, "yo": 0.1},
}
BEST = {"sw": 200, "am": 100, "yo": 300}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory: one saved adapter per language and step (sw uses LoRA, the others bottlenecks)."""
    root = tmp_path_factory.mktemp("run")
    for s, step in enumerate(STEPS):
        for i, lang in enumerate(LANGS):
            am = AdaptedModel(make_host())
            am.add_adapter(lang, LoraConfig(r=2) if lang == "sw" else BottleneckConfig.language(reduction_factor=4))
            am.train_adapters(lang)
            randomize(am, seed=10 * s + i)
            am.save_adapter(lang, root / f"step-{step}" / lang)
    wide = [
        {"step": 50, "train_loss": 1.0},  # a training line: no dev metric
        *({"step": step, **{f"valid_wer/{k}": v for k, v in WER[step].items()}} for step in STEPS),
    ]
    (root / "wide.jsonl").write_text("".join(json.dumps(r) + "\n" for r in wide))
    long = [
        {"language": lang, "checkpoint": f"step-{step}/{lang}", "step": step, "valid_wer": WER[step][lang]}
        for step in STEPS
        for lang in LANGS
    ]
    (root / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))
    return root


def test_selection_from_both_log_shapes(run: Path) -> None:
    wide = select_best(run / "wide.jsonl", metric="valid_wer", checkpoints="step-{step}/{language}")
    long = select_best(run / "long.jsonl", metric="valid_wer")
    for chosen in (wide, long):
        assert {lang: sel.step for lang, sel in chosen.items()} == BEST
        assert all(sel.checkpoint == run / f"step-{BEST[lang]}" / lang for lang, sel in chosen.items())
    best_max = select_best(run / "long.jsonl", metric="valid_wer", mode="max")
    assert best_max["sw"].step == 100


def test_bundle_holds_every_language_and_reloads_exactly(run: Path, ids: torch.Tensor, tmp_path: Path) -> None:
    out = tmp_path / "all"
    merge_per_language(run / "wide.jsonl", out, metric="valid_wer", checkpoints="step-{step}/{language}")
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "bundle.safetensors"]
    doc, adapters = read_bundle(out)
    assert sorted(adapters) == sorted(LANGS) and doc["adapters"]["am"]["step"] == 100
    am = AdaptedModel(make_host())
    assert sorted(load_bundle(am, out)) == sorted(LANGS)
    lang_ids = torch.tensor([0, 1, 2, 0])
    am.set_active(Route(lang_ids, dict(enumerate(LANGS))))
    with torch.no_grad():
        routed = am(input_ids=ids).logits
    for row, lang in zip(range(4), [LANGS[i] for i in lang_ids], strict=True):
        ref = AdaptedModel(make_host())
        ref.load_adapter(run / f"step-{BEST[lang]}" / lang, name=lang)
        ref.set_active(lang)
        with torch.no_grad():
            expected = ref(input_ids=ids[row : row + 1]).logits
        # The routed batch runs fused per-row products: same values up to float32 summation order.
        assert (routed[row : row + 1] - expected).abs().max().item() <= 1e-5


def test_bad_logs_and_bundles(run: Path, tmp_path: Path) -> None:
    log = tmp_path / "bad.jsonl"
    for text, fragment in [
        ('{"language": "sw", "checkpoint": "x", "valid_wer": NaN}\n', "finite"),
        ('{"step": 1, "valid_wer/sw": 0.1}\n', "template"),
        ("not json\n", "not a JSON line"),
        ('{"language": "s w", "checkpoint": "x", "valid_wer": 0.1}\n', "language must be"),
        ('{"step": 1, "loss": 0.1}\n', "no line has metric"),
    ]:
        log.write_text(text)
        with pytest.raises(MergeError, match=fragment):
            select_best(log, metric="valid_wer")
    out = tmp_path / "bundle"
    merge_per_language(run / "long.jsonl", out, metric="valid_wer")
    other = AdaptedModel(make_host("roberta"))
    with pytest.raises(BaseModelMismatchError):
        load_bundle(other, out)
    am = AdaptedModel(make_host())
    with pytest.raises(PolyglotAdaptersError, match="no adapter for"):
        load_bundle(am, out, languages=["zu"])
    blob = bytearray((out / BUNDLE_WEIGHTS).read_bytes())
    blob[-1] ^= 1
    (out / BUNDLE_WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        load_bundle(am, out)
    assert am.adapters == {}
    # A log pointing at a missing checkpoint writes nothing.
    log.write_text('{"language": "sw", "checkpoint": "nowhere/sw", "valid_wer": 0.1}\n')
    with pytest.raises(PolyglotAdaptersError):
        merge_per_language(log, tmp_path / "never", metric="valid_wer")
    assert not (tmp_path / "never").exists()
