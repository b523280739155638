"""KG adapter objectives, scoring and evaluation on a slice of the CLDR MLKG and PyKEEN's Nations, with tiny BERTs.

The slice (African and European territories and regions, labels in en, sw, de, ja) comes from the
real CLDR build in a temporary cache; the tokenizer is character-level over its labels; the hosts
are tiny random BERTs built in-process.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from conftest import char_tokenizer, saved_language_adapter
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from polyglot_adapters import AdaptedModel
from polyglot_adapters.errors import ConfigError
from polyglot_adapters.kg import KGDataset, KGError, build_kg, fetch_cldr_core, load_kg
from polyglot_adapters.kg.adapters import (
    GATE_NAME,
    KGAdapterSettings,
    kg_examples,
    load_gate,
    load_kg_run,
    train_kg_adapters,
)
from polyglot_adapters.kg.alignment import csls, sinkhorn
from polyglot_adapters.kg.encode import encode_texts, pooled, tokenize_texts
from polyglot_adapters.kg.evaluate import (
    KGEScorer,
    NgramScorer,
    entity_alignment,
    link_prediction,
    realistic_ranks,
)
from polyglot_adapters.kg.ngram import ngram_similarity
from polyglot_adapters.kg.objectives import (
    ContrastiveCollate,
    ContrastiveLoss,
    Verbaliser,
    alignment_split,
    entity_examples,
    triple_examples,
)
from polyglot_adapters.kg.plot import alignment_plot
from polyglot_adapters.kg.scoring import TextKGE
from polyglot_adapters.kg.suite import evaluate_kg_adapters, results_markdown
from polyglot_adapters.kg.templates import TemplateError, check_templates, verbalise_entity, verbalise_triple
from polyglot_adapters.training import TrainConfig, train

LANGUAGES = ("en", "sw", "de", "ja")


@pytest.fixture(scope="module")
def cldr_slice(tmp_path_factory: pytest.TempPathFactory) -> KGDataset:
    """Territories of Africa and Europe with their continents, sub-regions and borders, labelled in 4 languages."""
    cache = tmp_path_factory.mktemp("kg")
    (cache / fetch_cldr_core(download=False).name).symlink_to(fetch_cldr_core(download=False))
    build_kg("cldr", cache_dir=cache)
    kg = load_kg("cldr", cache_dir=cache)
    regions = {"region:002", "region:150"}
    keep = {h for h, r, t in kg.triples() if r == "continent" and t in regions} | {
        t for h, r, t in kg.triples() if r in ("continent", "subregion") and h.startswith("territory:")
    }
    keep = {e for e in keep if all(lang in kg.entities[e] for lang in LANGUAGES)}
    relations = ("continent", "subregion", "shares_border_with")
    splits = {
        s: tuple((h, r, t) for h, r, t in kg.splits[s] if h in keep and t in keep and r in relations)
        for s in ("train", "valid", "test")
    }
    return KGDataset(
        name="cldr",
        entities={e: {lang: kg.entities[e][lang] for lang in LANGUAGES} for e in sorted(keep)},
        kinds={e: kg.kinds[e] for e in keep},
        relations=relations,
        splits=splits,
    )


def tiny_config(vocab_size: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=96,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


@pytest.fixture(scope="module")
def tokenizer(cldr_slice: KGDataset) -> PreTrainedTokenizerFast:
    texts = [label for labels in cldr_slice.entities.values() for label in labels.values()]
    texts += ["query: (), ___ .", *(r.replace("_", " ") for r in cldr_slice.relations)]
    texts += [verbalise_triple("en", r, "", "") for r in cldr_slice.relations]
    return char_tokenizer(texts)


def tiny_encoder(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(tiny_config(len(tokenizer))).eval()


# ------------------------------------------------------------------- metrics


def test_realistic_ranks_count_ties_half_and_ignore_nan() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.9, 0.1], [0.2, float("nan"), 0.1, 0.3]])
    ranks = realistic_ranks(scores, torch.tensor([0, 2]))
    assert ranks.tolist() == [1.5, 3.0]  # a tie with one other: 1 + 0.5; NaN (filtered) never counts
    with pytest.raises(ConfigError, match="NaN"):
        realistic_ranks(scores, torch.tensor([0, 1]))


class _Oracle:
    """Scores 1 for the right entity (alignment) or any true object (link prediction), else 0."""

    def align(self, kg, source, target, queries, candidates):
        return torch.tensor([[float(q == c) for c in candidates] for q in queries])

    def link(self, kg, language, queries, candidates):
        true = {(h, r, t) for h, r, t in kg.triples()}
        return torch.tensor([[float((h, r, c) in true) for c in candidates] for h, r in queries])


class _Constant:
    def align(self, kg, source, target, queries, candidates):
        return torch.zeros(len(queries), len(candidates))

    link = None


def test_perfect_scorer_gets_hits_at_1_and_constant_gets_the_middle(cldr_slice: KGDataset) -> None:
    entities = sorted(cldr_slice.entities)
    perfect = entity_alignment(_Oracle(), cldr_slice, "en", "ja", entities)
    assert perfect["hits@1"] == perfect["mrr"] == 1.0 and perfect["count"] == len(entities)
    flat = entity_alignment(_Constant(), cldr_slice, "en", "ja", entities)
    n = len(entities)
    assert flat["mrr"] == pytest.approx(1 / (1 + (n - 1) / 2))  # every rank is the middle
    assert flat["hits@1"] == 0.0


class _Hub:
    """Every query's own entity scores 0.6, except that one hub candidate scores 0.9 for every query.

    Nearest neighbour puts the hub first for everyone; a one-to-one inference gives it to its own
    entity (0.9 > 0.6 there too) and every other query back its own entity.
    """

    def __init__(self, hub: str) -> None:
        self.hub = hub

    def align(self, kg, source, target, queries, candidates):
        own = torch.tensor([[0.6 * float(q == c) for c in candidates] for q in queries])
        own[:, candidates.index(self.hub)] = 0.9
        return own


def test_global_inference_resolves_a_hub_that_nearest_neighbour_cannot(cldr_slice: KGDataset) -> None:
    entities = sorted(e for e, labels in cldr_slice.entities.items() if "en" in labels)  # sources = candidates
    scorer = _Hub(entities[0])
    nearest = entity_alignment(scorer, cldr_slice, "en", "en", entities)
    assert nearest["hits@1"] == pytest.approx(1 / len(entities))  # only the hub's own query is right
    for inference in ("csls", "sinkhorn"):
        fixed = entity_alignment(scorer, cldr_slice, "en", "en", entities, inference=inference)
        assert fixed["hits@1"] == 1.0 and fixed["inference"] == inference
    with pytest.raises(ConfigError, match="unknown alignment inference 'hungarian'"):
        entity_alignment(scorer, cldr_slice, "en", "en", entities, inference="hungarian")


def test_sinkhorn_rows_are_distributions_and_follow_the_assignment() -> None:
    scores = torch.tensor([[0.9, 0.8], [0.85, 0.1]])  # both rows prefer column 0; the assignment is 0->1, 1->0
    log_p = sinkhorn(scores)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(2), atol=1e-6)
    assert log_p.argmax(1).tolist() == [1, 0]
    assert torch.allclose(csls(scores, k=1), 2 * scores - torch.tensor([[0.9], [0.85]]) - torch.tensor([[0.9, 0.8]]))
    generator = torch.Generator().manual_seed(0)
    permutation = torch.randperm(50, generator=generator)
    noisy = torch.eye(50)[permutation] + 0.3 * torch.rand(50, 50, generator=generator)
    assert torch.equal(sinkhorn(noisy).argmax(1), permutation)  # a clear one-to-one matrix stays as it is
    with pytest.raises(ConfigError, match="tau > 0"):
        sinkhorn(scores, tau=0.0)
    with pytest.raises(ConfigError, match="NaN"):
        sinkhorn(torch.tensor([[float("nan")]]))
    with pytest.raises(ConfigError, match="k >= 1"):
        csls(scores, k=0)


def test_filtered_link_prediction_of_a_perfect_scorer_is_one(cldr_slice: KGDataset) -> None:
    metrics = link_prediction(_Oracle(), cldr_slice, "sw", split="test")
    assert metrics["count"] > 0 and metrics["mrr"] == 1.0 and metrics["hits@1"] == 1.0
    # unfiltered, the other true objects (a territory has several neighbours) tie with the gold one
    candidates = sorted(e for e, labels in cldr_slice.entities.items() if "sw" in labels)
    triples = cldr_slice.triples("test")
    scores = _Oracle().link(cldr_slice, "sw", [(h, r) for h, r, _ in triples], candidates)
    raw = realistic_ranks(scores, torch.tensor([candidates.index(t) for _, _, t in triples]))
    assert (raw > 1).any() and metrics["mrr"] > float((1 / raw).mean())


def test_name_overlap_baseline_ranks_identical_strings_first(cldr_slice: KGDataset) -> None:
    labels = ["France", "Niger", "Nigeria", "Guinea", "Guinea-Bissau"]
    similarity = ngram_similarity(labels, labels)
    assert torch.equal(similarity.argmax(1), torch.arange(len(labels)))
    assert torch.allclose(similarity.diagonal(), torch.ones(len(labels)))
    assert ngram_similarity(["フランス"], ["France"]).item() == 0.0  # different scripts share no n-gram
    same = entity_alignment(NgramScorer(), cldr_slice, "en", "en", sorted(cldr_slice.entities))
    assert same["hits@1"] == 1.0


# ---------------------------------------------------------------- templates


def test_templates_verbalise_and_missing_ones_name_language_and_relation() -> None:
    assert verbalise_triple("sw", "currency", "Ufaransa", "Yuro") == "Sarafu ya Ufaransa ni Yuro."
    assert verbalise_entity("de", "language", "Suaheli") == "Suaheli ist eine Sprache."
    with pytest.raises(TemplateError, match=r"relation 'currency' in language 'yo'"):
        verbalise_triple("yo", "currency", "Faranse", "Yúrò")
    with pytest.raises(TemplateError, match="'capital'"):
        check_templates(["en"], ["capital"])


def test_sentence_examples_refuse_a_language_without_templates(cldr_slice: KGDataset) -> None:
    with pytest.raises(TemplateError, match="'ja'"):
        triple_examples(cldr_slice, ["ja"], form="sentence")
    examples = triple_examples(cldr_slice, ["sw"], form="sentence")
    assert all("___" in ex.query and ex.positive.endswith(".") for ex in examples)


def test_typed_form_tags_the_kind_and_tells_apart_entities_sharing_a_label(cldr_slice: KGDataset) -> None:
    typed, bare = Verbaliser(cldr_slice, "typed"), Verbaliser(cldr_slice, "phrase")
    english = [e for e, labels in cldr_slice.entities.items() if "en" in labels]
    for e in english:
        assert typed.entity(e, "en") == f"{cldr_slice.kinds[e]}: {bare.entity(e, 'en')}"
    by_label = defaultdict(set)
    for e in english:
        by_label[bare.entity(e, "en")].add(e)
    for entities in by_label.values():  # same label, different kinds: distinct typed texts
        kinds = {cldr_slice.kinds[e] for e in entities}
        assert len({typed.entity(e, "en") for e in entities}) >= len(kinds)
    settings = KGAdapterSettings(alignment_languages=("sw",), typed_entities=True)
    examples = kg_examples(cldr_slice, "ep", settings)
    assert all(ex.query.startswith(f"{cldr_slice.kinds[ex.key]}: ") for ex in examples)
    assert all(text.startswith(f"{cldr_slice.kinds[ex.key]}: ") for ex in examples for _, text in ex.negatives)
    plain = kg_examples(cldr_slice, "ep", dataclasses.replace(settings, typed_entities=False))
    assert [ex.key for ex in plain] == [ex.key for ex in examples] and plain[0].query != examples[0].query
    tp = kg_examples(cldr_slice, "tp", dataclasses.replace(settings, triple_languages=("en",)))
    assert tp[0].query.startswith("(") and tp[0].positive.startswith(f"{cldr_slice.kinds[tp[0].key]}: ")


# ---------------------------------------------------------------- objectives


def test_examples_and_collate_keep_correct_answers_out_of_the_negatives(
    cldr_slice: KGDataset, tokenizer: PreTrainedTokenizerFast
) -> None:
    examples = triple_examples(cldr_slice, ["en"], pool_size=3)
    for ex in examples:
        assert ex.key in ex.answers and not {k for k, _ in ex.negatives} & ex.answers
        assert all(cldr_slice.kinds[k] == cldr_slice.kinds[ex.key] for k, _ in ex.negatives)
    borders = [ex for ex in examples if "shares border" in ex.query]
    query = borders[0].query
    same_query = [ex for ex in borders if ex.query == query]
    batch = ContrastiveCollate(tokenizer, hard_negatives=2)(same_query[:2] + examples[:2], [1, 2, 3, 4])
    size = batch["queries"]["input_ids"].shape[0]
    assert batch["candidates"]["input_ids"].shape[0] >= size
    assert batch["answers"][torch.arange(size), torch.arange(size)].all()
    if len(same_query) >= 2:  # two true objects of one query: each is a correct answer of the other row
        assert batch["answers"][0, 1] and batch["answers"][1, 0]
    again = ContrastiveCollate(tokenizer, hard_negatives=2)(same_query[:2] + examples[:2], [1, 2, 3, 4])
    assert torch.equal(batch["candidates"]["input_ids"], again["candidates"]["input_ids"])  # seeded


def test_alignment_split_is_stable_and_disjoint(cldr_slice: KGDataset) -> None:
    train_entities, test_entities = alignment_split(cldr_slice)
    assert not set(train_entities) & set(test_entities)
    assert set(train_entities) | set(test_entities) == set(cldr_slice.entities)
    assert alignment_split(cldr_slice) == (train_entities, test_entities)
    with pytest.raises(ConfigError):
        entity_examples(cldr_slice, [("en", "en")])


def test_pooled_embeddings_match_the_batched_encoder(tokenizer: PreTrainedTokenizerFast) -> None:
    model = tiny_encoder(tokenizer)
    texts = ["Ufaransa", "i-France ni nchi", "フランス"]
    batch = tokenize_texts(tokenizer, texts)
    with torch.no_grad():
        direct = pooled(model, batch)
    assert torch.allclose(direct, encode_texts(model, tokenizer, texts, batch_size=2), atol=1e-6)
    assert torch.allclose(direct.norm(dim=-1), torch.ones(3))
    with pytest.raises(ConfigError):
        tokenize_texts(tokenizer, [])


def test_entity_alignment_adapter_lowers_its_loss_and_leaves_the_base_alone(
    cldr_slice: KGDataset, tokenizer: PreTrainedTokenizerFast
) -> None:
    model = tiny_encoder(tokenizer)
    probe_ids = tokenize_texts(tokenizer, ["Ufaransa", "France", "Frankreich"])
    with torch.no_grad():
        base_output = pooled(model, probe_ids)
    am = AdaptedModel(model)
    am.add_adapter("ep", _ep_config())
    am.set_active("ep")
    am.train_adapters("ep")
    examples = entity_examples(cldr_slice, [("en", "sw")], pool_size=4)
    collate = ContrastiveCollate(tokenizer, hard_negatives=2)
    loss = ContrastiveLoss(0.1, symmetric=True)
    probe = collate(examples[:16], list(range(16)))
    with torch.no_grad():
        start = float(loss(am, probe))
    train(am, examples, collate, loss, TrainConfig(steps=30, lr=5e-3, batch_size=16), progress=False)
    am.eval()
    with torch.no_grad():
        end = float(loss(am, probe))
        adapted = pooled(am, probe_ids)
        am.set_active(None)
        assert torch.equal(pooled(am, probe_ids), base_output)  # the frozen base is untouched
    assert end < start - 0.1
    assert not torch.allclose(adapted, base_output)


def _ep_config():
    from polyglot_adapters.kg.adapters import kg_adapter_config

    return kg_adapter_config("ep", reduction_factor=2)


# ------------------------------------------------------------- PyKEEN heads


@pytest.fixture
def nations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KGDataset:
    monkeypatch.setenv("PYSTOW_HOME", str(tmp_path / "pystow"))
    return load_kg("nations", cache_dir=tmp_path / "kg")


@pytest.mark.parametrize("interaction", ["transe", "distmult", "rotate"])
def test_text_kge_scores_with_pykeen_interactions_and_trains(nations: KGDataset, interaction: str) -> None:
    texts = list(nations.entities) + [f"query: ({e}, {r})" for e in nations.entities for r in nations.relations[:3]]
    tok = char_tokenizer(texts + [r.replace("_", " ") for r in nations.relations])
    torch.manual_seed(0)
    am = AdaptedModel(BertModel(tiny_config(len(tok))).eval())
    am.add_adapter("tp", _ep_config())
    am.set_active("tp")
    am.train_adapters("tp")
    kge = TextKGE(am, len(nations.relations), interaction=interaction, loss="crossentropy")
    examples = triple_examples(nations, ["en"], pool_size=3)[:48]
    collate = ContrastiveCollate(tok, hard_negatives=1)
    batch = collate(examples[:8], list(range(8)))
    scores = kge(batch)
    assert scores.shape == (8, batch["candidates"]["input_ids"].shape[0]) and torch.isfinite(scores).all()
    with torch.no_grad():
        start = float(kge.loss_fn(kge, batch))
    train(kge, examples, collate, kge.loss_fn, TrainConfig(steps=25, lr=1e-2, batch_size=8), progress=False)
    kge.eval()
    with torch.no_grad():
        assert float(kge.loss_fn(kge, batch)) < start
    metrics = link_prediction(KGEScorer(kge, tok), nations, "en", split="test")
    assert metrics["count"] == len(nations.triples("test")) and 0 < metrics["mrr"] <= 1


def test_unknown_pykeen_names_are_one_line_errors(tokenizer: PreTrainedTokenizerFast) -> None:
    am = AdaptedModel(tiny_encoder(tokenizer))
    with pytest.raises(ConfigError, match="interaction 'transx'"):
        TextKGE(am, 3, interaction="transx")
    with pytest.raises(ConfigError, match="loss 'hinge2'"):
        TextKGE(am, 3, loss="hinge2")


# ---------------------------------------------------------------- whole runs


def test_train_evaluate_and_reload_a_kg_adapter_run(
    cldr_slice: KGDataset, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    settings = KGAdapterSettings(
        alignment_languages=("sw", "ja"),
        sentence_alignment_languages=("sw",),
        triple_languages=("en", "de"),
        sentence_triple_languages=("en",),
        steps=3,
        batch_size=8,
        fuse_steps=2,
    )
    result = train_kg_adapters(tiny_encoder(tokenizer), tokenizer, cldr_slice, settings, out_dir=tmp_path / "run")
    assert set(result.adapter_dirs) == {"ep", "tp", "es", "ts", GATE_NAME}
    assert (tmp_path / "run" / "report.json").is_file()
    reloaded, report = load_kg_run(tiny_encoder(tokenizer), tmp_path / "run")
    load_gate(reloaded, tmp_path / "run" / GATE_NAME / "adapter")
    ids = tokenize_texts(tokenizer, ["Ufaransa", "Ujerumani"])
    with torch.no_grad():
        assert torch.allclose(pooled(result.model, ids), pooled(reloaded, ids), atol=1e-6)
    results = evaluate_kg_adapters(
        reloaded,
        tokenizer,
        cldr_slice,
        report,
        run_dir=tmp_path / "run",
        alignment_languages=("sw",),
        link_languages=("en", "sw"),
    )
    assert set(results["alignment"]["sw"]) == {"name-overlap", "base", "ep", "es", "ep+es", "fused"}
    assert set(results["alignment_sinkhorn"]["sw"]) == set(results["alignment"]["sw"])
    assert {m["inference"] for m in results["alignment_sinkhorn"]["sw"].values()} == {"sinkhorn"}
    assert any(line.startswith("The same with sinkhorn inference") for line in results_markdown(results))
    assert results["entity_form"] == "phrase"
    typed_report = {**report, "settings": {**report["settings"], "typed_entities": True}}
    typed = evaluate_kg_adapters(
        reloaded, tokenizer, cldr_slice, typed_report, alignment_languages=("sw",), link_languages=("en",)
    )
    assert typed["entity_form"] == "typed" and "kind" in results_markdown(typed)[0]
    assert typed["alignment"]["sw"]["base"] != results["alignment"]["sw"]["base"]  # other texts, other scores
    assert set(results["link_prediction"]["sw"]) == {"base", "tp", "ts", "fused"}
    assert any("sw *" in line for line in results_markdown(results))  # sw labels were not used in triples
    png = alignment_plot(results)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4 : idat])
    assert len(zlib.decompress(png[idat + 4 : idat + 4 + length])) == height * (1 + 3 * width)
    with pytest.raises(KGError, match=r"no labels in \['xx'\]"):
        evaluate_kg_adapters(
            reloaded, tokenizer, cldr_slice, report, alignment_languages=("xx",), link_languages=("en",)
        )
    with pytest.raises(KGError, match=r"no labels in \['zz'\] \(requested for tp\)"):
        train_kg_adapters(
            tiny_encoder(tokenizer),
            tokenizer,
            cldr_slice,
            dataclasses.replace(settings, triple_languages=("en", "zz")),
            out_dir=tmp_path / "bad",
        )
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="other settings"):
        train_kg_adapters(
            tiny_encoder(tokenizer),
            tokenizer,
            cldr_slice,
            dataclasses.replace(settings, steps=4),
            out_dir=tmp_path / "run",
        )


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from polyglot_adapters.cli.main import main

    assert main(["train", "kg-adapters", "--objectives", "ep,xx", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "objectives" in err[0]
    assert main(["kg", "eval", "--run", str(tmp_path / "missing"), "--model", str(tmp_path / "none")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["kg", "eval", "--run", str(tmp_path / "missing"), "--global-inference", "hungarian"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--global-inference" in err[0] and "hungarian" in err[0]
    assert not (tmp_path / "r").exists()


def test_kg_adapters_stack_on_a_frozen_language_adapter(
    cldr_slice: KGDataset, tokenizer: PreTrainedTokenizerFast, tmp_path: Path
) -> None:
    from polyglot_adapters.composition import Stack
    from polyglot_adapters.kg.adapters import kg_composition

    saved = saved_language_adapter(tiny_encoder(tokenizer), tmp_path / "sw")
    settings = KGAdapterSettings(objectives=("tp",), triple_languages=("sw",), steps=3, batch_size=8)
    result = train_kg_adapters(
        tiny_encoder(tokenizer),
        tokenizer,
        cldr_slice,
        settings,
        out_dir=tmp_path / "run",
        language_adapter=tmp_path / "sw",
    )
    assert result.model.active == Stack("language", "tp")
    for key, value in result.model.adapter_state_dict("language").items():
        assert torch.equal(value, saved[key])  # the language adapter stays frozen
    assert kg_composition(["ep", "tp"], how="stack", language="sw") == Stack("sw", Stack("ep", "tp"))
    with pytest.raises(ConfigError):
        kg_composition(["ep"], how="concat")
