"""LAMA-style probing: cloze tokenisation, batched scoring against the one-candidate-per-forward loop, metrics, CLI.

The KG is a slice of the real CLDR build (temporary cache; every relation, entities labelled in
en, de and sw); the tokenizer is character-level over its labels and the shipped templates; the
masked LMs are tiny random BERTs built in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import char_tokenizer, text_mlm
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from polyglot_adapters import AdaptedModel, Average, Gate, Stack
from polyglot_adapters.cli.main import main
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.kg import KGDataset, build_kg, fetch_cldr_core, load_kg
from polyglot_adapters.kg.cloze import split_by_spans
from polyglot_adapters.methods.bottleneck import BottleneckConfig
from polyglot_adapters.methods.p_adapter import PAdapterConfig, p_adapter_layers
from polyglot_adapters.probing import (
    Fact,
    PAdapterSettings,
    ProbeError,
    ProbeSettings,
    bootstrap_macro,
    build_queries,
    candidate_sets,
    candidate_table,
    compose,
    fact_groups,
    fact_metrics,
    fact_split,
    format_table,
    known_objects,
    load_templates,
    probe_chart,
    probe_facts,
    probe_language,
    probe_run,
    prompt_examples,
    score_naive,
    score_queries,
    train_p_adapter,
)
from polyglot_adapters.probing.engine import query_row
from polyglot_adapters.probing.p_adapters import PromptCollate, PromptLoss

LANGUAGES = ("en", "de", "sw")


@pytest.fixture(scope="module")
def kg(tmp_path_factory: pytest.TempPathFactory) -> KGDataset:
    """Up to 12 training and 4 test triples per relation whose entities are labelled in en, de and sw."""
    cache = tmp_path_factory.mktemp("kg")
    (cache / fetch_cldr_core(download=False).name).symlink_to(fetch_cldr_core(download=False))
    build_kg("cldr", cache_dir=cache)
    full = load_kg("cldr", cache_dir=cache)

    def labelled(e: str) -> bool:
        return all(lang in full.entities[e] for lang in LANGUAGES)

    splits = {}
    for split, cap in (("train", 12), ("valid", 2), ("test", 4)):
        kept: list[tuple[str, str, str]] = []
        for relation in full.relations:
            rows = [t for t in full.splits[split] if t[1] == relation and labelled(t[0]) and labelled(t[2])]
            kept += rows[:cap]
        splits[split] = tuple(sorted(kept))
    entities = {e for triples in splits.values() for h, _, t in triples for e in (h, t)}
    return KGDataset(
        name="cldr",
        entities={e: {lang: full.entities[e][lang] for lang in LANGUAGES} for e in sorted(entities)},
        kinds={e: full.kinds[e] for e in entities},
        relations=full.relations,
        splits=splits,
    )


@pytest.fixture(scope="module")
def tokenizer(kg: KGDataset) -> PreTrainedTokenizerFast:
    texts = [label for labels in kg.entities.values() for label in labels.values()]
    texts += [t.text for t in load_templates(list(LANGUAGES))]
    return char_tokenizer(texts)


def tiny_mlm(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> BertForMaskedLM:
    return text_mlm(len(tokenizer), seed=seed)


# ------------------------------------------------------------------- tokenisation


def test_split_by_spans_gives_the_entity_tokens_in_context(tokenizer: PreTrainedTokenizerFast) -> None:
    text = "Sarafu ya Ufaransa ni Yuro."
    pieces = split_by_spans(tokenizer, text, [(10, 18), (22, 26)])
    assert [tokenizer.decode(p) for p in pieces] == ["Sarafu ya", "Ufaransa", "ni", "Yuro", "##."]
    assert sum(pieces, []) == tokenizer(text, add_special_tokens=False)["input_ids"]
    for bad in ([(5, 3)], [(0, 8), (4, 10)], [(0, 100)]):
        with pytest.raises(Exception, match="spans must be sorted"):
            split_by_spans(tokenizer, text, bad)


def test_candidate_table_groups_by_length() -> None:
    table = candidate_table([[7, 8], [9], [8, 7], [5, 6, 7]])
    assert table.vocab.tolist() == [5, 6, 7, 8, 9]
    assert sorted(table.groups) == [1, 2, 3]
    members, positions = table.groups[2]
    assert members.tolist() == [0, 2] and positions.tolist() == [[2, 3], [3, 2]]
    with pytest.raises(ProbeError, match="empty"):
        candidate_table([])


# ------------------------------------------------------------------- scoring


def _queries(kg: KGDataset, tokenizer: PreTrainedTokenizerFast, language: str, per_relation: int = 2):
    relations = list(kg.relations)
    facts = probe_facts(kg, language, relations, per_relation=per_relation)
    templates = load_templates([language], relations, ("natural", "heldout"))
    candidates = candidate_sets(kg, language, relations)
    queries, tables = build_queries(
        tokenizer, facts, templates, lambda e: kg.entities[e][language], candidates, relations
    )
    return facts, templates, candidates, queries, tables


def test_query_rows_put_one_mask_per_candidate_token_and_keep_the_subject(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast
) -> None:
    facts, templates, candidates, queries, tables = _queries(kg, tokenizer, "en", per_relation=1)
    frame = (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id, 1)
    for fact, query in zip([f for f in facts for t in templates if t.relation == f.relation], queries, strict=True):
        ids, keep, start = query_row(query, 3, 2, frame)
        assert ids[0] == frame[0] and ids[-1] == frame[1] and ids[1:3] == [1, 1]
        assert ids[start : start + 3] == [frame[3]] * 3 and frame[3] not in ids[:start] + ids[start + 3 :]
        subject = tokenizer(kg.entities[fact.subject]["en"], add_special_tokens=False)["input_ids"]
        kept = [ids[k] for k in keep if k not in (0, len(ids) - 1) and not start <= k < start + 3]
        assert kept == subject


@pytest.mark.parametrize("variant", ["none", "rewrite", "prefix"])
def test_batched_scores_equal_one_candidate_per_forward(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast, variant: str
) -> None:
    _, _, _, queries, tables = _queries(kg, tokenizer, "sw", per_relation=1)
    queries = queries[::3]
    model: torch.nn.Module = tiny_mlm(tokenizer)
    slots = 0
    if variant != "none":
        model = AdaptedModel(model)
        config = PAdapterConfig.rewrite() if variant == "rewrite" else PAdapterConfig.prefix(3)
        slots = 0 if variant == "rewrite" else 3
        model.add_adapter("pa", config)
        model.add_adapter("kg", BottleneckConfig.knowledge())
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.split(".")[-1].startswith(("pa_", "bn_")):
                    p.add_(0.1 * torch.randn_like(p))  # away from the identity initialisation
        model.set_active(Stack("pa", "kg"))
        model.eval()
    fast = score_queries(model, tokenizer, queries, tables, slots=slots, batch_size=7)
    slow = score_naive(model, tokenizer, queries, tables, slots=slots)
    for a, b in zip(fast, slow, strict=True):
        assert a.shape == b.shape and torch.isfinite(a).all()
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_bf16_scores_track_fp32_with_the_head_in_float32(kg: KGDataset, tokenizer: PreTrainedTokenizerFast) -> None:
    _, _, _, queries, tables = _queries(kg, tokenizer, "en", per_relation=1)
    model = tiny_mlm(tokenizer).eval()
    exact = score_queries(model, tokenizer, queries, tables, batch_size=16)
    regrouped = score_queries(model, tokenizer, queries, tables, batch_size=5)
    fast = score_queries(model, tokenizer, queries, tables, batch_size=16, precision="bf16")

    def gap(scores: list[torch.Tensor]) -> float:
        return float(max((a - b).abs().max() for a, b in zip(exact, scores, strict=True)))

    # The encoder ran in bfloat16: its scores move by far more than float32's batching noise.
    assert 10 * gap(regrouped) < gap(fast) < 0.1 and all(s.dtype == torch.float32 for s in fast)
    assert sum(int(a.argmax() == b.argmax()) for a, b in zip(exact, fast, strict=True)) >= 0.9 * len(exact)
    with pytest.raises(ProbeError, match="unknown precision 'fp16'"):
        score_queries(model, tokenizer, queries, tables, precision="fp16")
    with pytest.raises(ProbeError, match="unknown precision"):
        ProbeSettings(precision="int8")


# ------------------------------------------------------------------- metrics


def test_fact_metrics_filter_other_true_objects_and_measure_consistency() -> None:
    facts = [Fact("s1", "r", "b", "train"), Fact("s2", "r", "a", "train")]
    candidates = {"r": ["a", "b", "c"]}
    known = {("s1", "r"): {"a", "b"}, ("s2", "r"): {"a"}}
    scores = [
        [torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.9, 0.5, 0.1])],  # 'a' is also true for s1: filtered
        [torch.tensor([0.1, 0.9, 0.5]), torch.tensor([0.9, 0.1, 0.5])],  # ranks 3 and 1, top-1s disagree
    ]
    values, top = fact_metrics(facts, scores, candidates, known)
    assert values["p@1"].tolist() == [1.0, 0.5]
    assert values["mrr"].tolist() == pytest.approx([1.0, (1 / 3 + 1) / 2])
    assert values["consistency"].tolist() == [1.0, 0.0]
    assert top == [["a", "a"], ["b", "a"]]


def test_bootstrap_interval_brackets_the_macro_mean() -> None:
    values = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    relations = ["a"] * 4 + ["b"] * 4
    mean, low, high = bootstrap_macro(values, relations, replicates=500)
    assert mean == pytest.approx((0.75 + 0.25) / 2) and low <= mean <= high and high - low > 0.1
    same = bootstrap_macro(torch.ones(6, dtype=torch.float64), ["a"] * 3 + ["b"] * 3)
    assert same == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------- probe and CLI


def test_probe_language_reports_macro_metrics(kg: KGDataset, tokenizer: PreTrainedTokenizerFast) -> None:
    result = probe_language(tiny_mlm(tokenizer), tokenizer, kg, "de", ProbeSettings(per_relation=2, replicates=50))
    assert result["facts"] == 2 * len(kg.relations) and result["templates_per_fact"] >= 5
    for name in ("p@1", "p@10", "mrr", "consistency"):
        metric = result["metrics"][name]
        assert 0.0 <= metric["low"] <= metric["value"] <= metric["high"] <= 1.0
    assert set(result["relations"]) == set(kg.relations)
    table = format_table({"base": {"de": result}})
    assert table.splitlines()[1].split()[:3] == ["de", "base", "16"]
    assert probe_chart({"base": {"de": result}})[:8] == b"\x89PNG\r\n\x1a\n"


def test_probe_errors_are_clear(kg: KGDataset, tokenizer: PreTrainedTokenizerFast) -> None:
    model = tiny_mlm(tokenizer)
    with pytest.raises(ProbeError, match="unknown relation"):
        probe_language(model, tokenizer, kg, "en", ProbeSettings(relations=("capital",)))
    with pytest.raises(ProbeError, match="unknown prompt set"):
        ProbeSettings(prompts="some")
    with pytest.raises(ProbeError, match="no entity .* labelled in 'zz'"):
        probe_facts(kg, "zz", list(kg.relations))
    empty = KGDataset(
        name="cldr",
        entities={"a": {"en": "A"}, "b": {"de": "B"}},
        kinds={"a": "territory", "b": "currency"},
        relations=("currency",),
        splits={"train": (("a", "currency", "b"),), "valid": (), "test": ()},
    )
    with pytest.raises(ProbeError, match="no candidate object labelled in 'en'"):
        candidate_sets(empty, "en", ["currency"])
    assert known_objects(empty) == {("a", "currency"): {"b"}}


def test_probe_cli_writes_json_table_and_chart(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    model_dir = tmp_path / "model"
    tiny_mlm(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    am = AdaptedModel(tiny_mlm(tokenizer))
    am.add_adapter("kg", BottleneckConfig.knowledge())
    am.save_adapter("kg", tmp_path / "kg")
    monkeypatch.setattr("polyglot_adapters.probing.run.load_kg", lambda name: kg)
    out = tmp_path / "out"
    args = ["probe", "--model", str(model_dir), "--adapters", str(tmp_path / "kg"), "--languages", "en,sw"]
    assert main([*args, "--per-relation", "1", "--out", str(out)]) == 0
    report = json.loads((out / "probe.json").read_text())
    assert set(report["results"]) == {"base", "+kg"} and set(report["results"]["+kg"]) == {"en", "sw"}
    # A fresh bottleneck adapter is the identity: the same scores with and without it.
    assert report["results"]["+kg"]["en"]["metrics"] == report["results"]["base"]["en"]["metrics"]
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG" and "consistency" in (out / "probe.md").read_text()
    capsys.readouterr()
    assert main([*args[:5], "--languages", "en,xx"]) == 1
    assert "xx" in capsys.readouterr().err
    assert main([*args[:5], "--relations", "capital"]) == 1
    assert "unknown relation" in capsys.readouterr().err
    other = AdaptedModel(
        BertForMaskedLM(
            BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        )
    )
    other.add_adapter("kg", BottleneckConfig.knowledge())
    other.save_adapter("kg", tmp_path / "other")
    assert main(["probe", "--model", str(model_dir), "--adapters", str(tmp_path / "other"), "--languages", "en"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------- P-Adapter training


@pytest.mark.parametrize(
    ("variant", "precision", "consistency"),
    [
        ("rewrite", "fp32", 0.0),
        ("moe", "fp32", 0.0),
        ("rewrite", "bf16", 0.0),
        ("prefix", "bf16", 0.0),
        ("moe", "bf16", 0.0),
        ("rewrite", "fp32", 1.0),
    ],
)
def test_train_p_adapter_lowers_the_prompt_loss_and_saves(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast, tmp_path: Path, variant: str, precision: str, consistency: float
) -> None:
    settings = PAdapterSettings(
        variant=variant,
        languages=("en", "de"),
        steps=40,
        batch_size=8 if consistency else 16,
        lr=1e-2,
        hidden=16,
        consistency_weight=consistency,
        precision=precision,
    )
    relations = list(kg.relations)
    facts = {lang: fact_split(probe_facts(kg, lang, relations), 0.5)[0] for lang in settings.languages}
    examples, vocabs = prompt_examples(tokenizer, kg, facts, relations, slots=settings.slots)
    collate = PromptCollate(tokenizer.pad_token_id)
    groups = fact_groups(examples)[::3]  # every relation and language
    batch = collate(groups, list(range(len(groups))))
    loss = PromptLoss(vocabs)
    model = AdaptedModel(tiny_mlm(tokenizer))
    model.add_adapter("kg", BottleneckConfig.knowledge())
    model.set_active("kg")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = train_p_adapter(model, tokenizer, kg, settings, out_dir=tmp_path, progress=False)
    assert report["examples"] == len(examples) and 0 < report["trainable_percent"] < 100
    assert (tmp_path / "pa" / "adapter.safetensors").is_file() and (tmp_path / "report.json").is_file()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)  # base and kg frozen
    assert model.num_parameters("pa") == report["trainable_parameters"] > 0
    assert json.loads((tmp_path / "report.json").read_text())["settings"]["precision"] == precision
    model.eval()
    with torch.no_grad():
        after = float(loss(model, batch))
        routed = [layer.router_logits for layer in p_adapter_layers(model) if layer.variant == "moe"]
        assert all(r.shape == (len(batch["relations"]), len(kg.relations)) for r in routed)
        model.set_active("kg")
        before = float(loss(model, batch))
    if variant == "rewrite":  # a fresh rewrite adapter is the identity: the loss without it is the starting loss
        assert after < before
    # The held-out facts of the split never train the adapter.
    held = {(f.subject, f.relation, f.object) for f in fact_split(probe_facts(kg, "en", relations), 0.5)[1]}
    assert not held & {(f.subject, f.relation, f.object) for f in facts["en"]}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"variant": "lstm"}, "unknown P-Adapter variant"),
        ({"held_out_fraction": 1.0}, "held_out_fraction"),
        ({"steps": 0}, "steps and batch_size"),
        ({"consistency_weight": -0.5}, "consistency_weight must be >= 0"),
        ({"precision": "fp16"}, "precision must be one of"),
    ],
)
def test_p_adapter_settings_refuse_bad_values(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PAdapterSettings(**bad)


def test_prompt_batches_hold_whole_facts_and_pair_their_paraphrases(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast
) -> None:
    relations = list(kg.relations)
    facts = {lang: probe_facts(kg, lang, relations)[:20] for lang in ("en", "de")}
    examples, _ = prompt_examples(tokenizer, kg, facts, relations)
    groups = fact_groups(examples)
    assert len(groups) == 40 and [e for g in groups for e in g] == examples
    assert all(len({(e.fact, e.relation, e.target) for e in g}) == 1 and len(g) == 2 for g in groups)  # 2 paraphrases
    batch = PromptCollate(tokenizer.pad_token_id)(groups[:5], list(range(5)))
    rows, cols = batch["mask_row"], batch["mask_col"]
    assert batch["input_ids"].shape[0] == 10 and len(rows) == sum(len(e.target) for g in groups[:5] for e in g)
    a, b = batch["pair_a"], batch["pair_b"]
    assert len(a) == len(b) == len(rows) // 2 > 0
    assert torch.equal(rows[a] // 2, rows[b] // 2) and bool((rows[a] < rows[b]).all())  # the same fact, two rows
    assert torch.equal(batch["mask_target"][a], batch["mask_target"][b])
    # The j-th mask of one paraphrase pairs with the j-th mask of the other.
    first = torch.stack([cols[rows == r].min() for r in range(10)])  # each row's first mask column
    assert torch.equal(cols[a] - first[rows[a]], cols[b] - first[rows[b]])
    # Rows as items (no consistency term): the same rows, no pairs.
    rows_only = PromptCollate(tokenizer.pad_token_id)([(e,) for g in groups[:5] for e in g], list(range(10)))
    assert torch.equal(rows_only["input_ids"], batch["input_ids"]) and rows_only["pair_a"].numel() == 0


def test_the_consistency_term_is_the_symmetric_kl_between_paraphrases(
    kg: KGDataset, tokenizer: PreTrainedTokenizerFast
) -> None:
    relations = list(kg.relations)
    facts = {"en": probe_facts(kg, "en", relations)[:12]}
    examples, vocabs = prompt_examples(tokenizer, kg, facts, relations)
    groups = fact_groups(examples)
    torch.manual_seed(0)
    model = tiny_mlm(tokenizer).eval()
    collate = PromptCollate(tokenizer.pad_token_id)
    batch = collate(groups, list(range(len(groups))))
    with torch.no_grad():
        plain = float(PromptLoss(vocabs)(model, batch))
        weighted = float(PromptLoss(vocabs, consistency_weight=2.0)(model, batch))
        hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        at = hidden[batch["mask_row"], batch["mask_col"]]
        relation_of = batch["relations"][batch["mask_row"]]
        kl = []
        for i, j in zip(batch["pair_a"].tolist(), batch["pair_b"].tolist(), strict=True):
            vocab = vocabs[int(relation_of[i])]
            p, q = (model.cls(at[k][None])[0, vocab].float().log_softmax(-1) for k in (i, j))
            kl.append(
                0.5
                * (
                    torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum")
                    + torch.nn.functional.kl_div(p, q, log_target=True, reduction="sum")
                )
            )
    expected = 2.0 * float(torch.stack(kl).mean())
    assert expected > 1e-4  # the two paraphrases disagree at random init
    assert weighted - plain == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # Two identical rows per fact (the same paraphrase twice) add nothing.
    twins = [(g[0], g[0]) for g in groups]
    batch = collate(twins, list(range(len(twins))))
    with torch.no_grad():
        assert float(PromptLoss(vocabs, consistency_weight=5.0)(model, batch)) == pytest.approx(
            float(PromptLoss(vocabs)(model, batch)), abs=1e-6
        )


def test_compositions_of_probed_adapters() -> None:
    assert compose(["kg"], "gate") == "kg"
    assert compose(["lang", "kg"], "stack") == Stack("lang", "kg")
    assert isinstance(compose(["lang", "kg"], "average"), Average)
    assert isinstance(compose(["lang", "kg"], "gate"), Gate)
    with pytest.raises(ProbeError, match="unknown composition"):
        compose(["lang", "kg"], "sum")
    with pytest.raises(ProbeError, match="needs --compose gate"):
        probe_run(adapters=["a", "b"], how="stack", gate="g")
