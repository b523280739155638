"""Code: token types from tokenize + ast, the corpus, subword alignment, TTC adapters, code search, CLI, bad input."""

from __future__ import annotations

import io
import json
import shutil
import sysconfig
import tokenize
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as save_file_bytes

from polyglot_adapters import AdaptedModel, Gate, Stack
from polyglot_adapters.cli.main import main
from polyglot_adapters.code import NO_TYPE, TOKEN_TYPES, SourceError, label_source, typed_tokens
from polyglot_adapters.code.corpus import CodeFile, extract_functions, load_code_corpus, split_of
from polyglot_adapters.code.encoder import code_encoder, load_code_base, pretrain_code_base, train_code_tokenizer
from polyglot_adapters.code.report import compare_runs, compare_seeds, read_ranks
from polyglot_adapters.code.search import (
    CodeSearchEval,
    SearchEncoder,
    encode_pairs,
    gate_mixture,
    search_metrics,
    train_code_search,
)
from polyglot_adapters.code.token_types import lex
from polyglot_adapters.code.ttc import (
    TokenTypeTagger,
    align_labels,
    label_windows,
    load_tagger_head,
    token_type_metrics,
    train_ner_adapter,
)
from polyglot_adapters.errors import BaseModelMismatchError, ConfigError, CorruptArtifactError, MissingArtifactError
from polyglot_adapters.io import read_adapter
from polyglot_adapters.training import TrainConfig

STDLIB = Path(sysconfig.get_paths()["stdlib"])

SAMPLE = '''"""Module docstring."""
import os.path as osp
from collections import OrderedDict  # a comment

LIMIT = 0x10

@functools.lru_cache(maxsize=None)
def area(radius: float, *, scale=2) -> float:
    """Area of a circle."""
    total = radius * LIMIT + len("ab")
    print(f"r={radius} {total.real}")
    return osp.join(total).upper()


class Circle(Base):
    def __init__(self, r):
        self.r = r
        é = lambda q: q + r
'''


def typed(source: str) -> set[tuple[int, str, str]]:
    """``(line, text, type)`` of every token run of a source."""
    return {(line, text, kind) for line, _, kind, text in typed_tokens(label_source(source))}


def test_every_token_type_is_found_where_the_ast_puts_it():
    found = typed(SAMPLE)
    expected = {
        (1, '"""Module docstring."""', "docstring"),
        (2, "import", "keyword"),
        (2, "os", "import"),
        (2, "osp", "import"),
        (3, "OrderedDict", "import"),
        (3, "# a comment", "comment"),
        (5, "LIMIT", "global_variable"),
        (5, "0x10", "number"),
        (5, "=", "operator"),
        (7, "@", "decorator"),
        (7, "functools", "decorator"),
        (7, "maxsize", "decorator"),
        (8, "area", "function_name"),
        (8, "radius", "parameter"),
        (8, "scale", "parameter"),
        (8, "float", "builtin"),
        (9, '"""Area of a circle."""', "docstring"),
        (10, "total", "local_variable"),
        (10, "LIMIT", "global_variable"),
        (10, "len", "builtin"),
        (10, '"ab"', "string"),
        (11, "print", "builtin"),
        (11, 'f"r={', "fstring"),  # the f-string's literal parts ...
        (11, "radius", "local_variable"),  # ... and the expressions inside it keep their roles
        (11, "real", "attribute"),
        (12, "join", "call"),
        (12, "upper", "call"),
        (12, "osp", "global_variable"),
        (15, "Circle", "class_name"),
        (15, "Base", "global_variable"),
        (17, "self", "local_variable"),
        (17, "r", "attribute"),
        (17, "r", "local_variable"),
        (18, "é", "local_variable"),  # a non-ASCII name: AST columns are UTF-8 bytes
        (18, "lambda", "keyword"),
        (18, "q", "parameter"),
        (18, "q", "local_variable"),
        (18, "r", "local_variable"),  # a closure's free name is the enclosing function's local
    }
    assert expected - found == set()
    assert {kind for _, _, kind in found} == set(TOKEN_TYPES)  # the sample exercises all 17 types


def test_lexer_gives_the_same_tokens_as_tokenize_on_the_standard_library():
    kinds = {tokenize.NAME: "name", tokenize.OP: "op", tokenize.STRING: "string", tokenize.NUMBER: "number"}
    kinds[tokenize.COMMENT] = "comment"
    for name in ("argparse.py", "email/_header_value_parser.py", "tarfile.py", "json/decoder.py", "locale.py"):
        text = label_source((STDLIB / name).read_bytes()).text
        starts = [0]
        for line in io.StringIO(text):
            starts.append(starts[-1] + len(line))
        starts.append(starts[-1])
        reference = [
            (kinds[t.type], starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1])
            for t in tokenize.generate_tokens(io.StringIO(text).readline)
            if t.type in kinds
        ]
        assert [token[:3] for token in lex(text)] == reference, name


@pytest.mark.parametrize(
    ("data", "reason", "where"),
    [
        (b"def f(:\n    pass\n", "syntax", "bad.py:1:"),
        (b"if x:\n\ty = 1\n        z = 2\n", "syntax", "bad.py:3:"),  # tabs and spaces
        (b"print 'python 2'\n", "syntax", "bad.py:1:"),
        (b"x = 1\ny = '\xff\xfe'\n", "undecodable", "bad.py:2:"),
        (b"# -*- coding: klingon -*-\nx = 1\n", "undecodable", "bad.py:1:"),
        (b"", "empty", "bad.py:"),
        (b"\n\n   \n", "empty", "bad.py:"),
    ],
)
def test_bad_sources_raise_one_line_errors_with_a_reason(data, reason, where):
    with pytest.raises(SourceError) as info:
        label_source(data, name="bad.py")
    assert info.value.reason == reason
    assert str(info.value).startswith(where) and "\n" not in str(info.value)


def test_latin1_declared_source_and_bom_decode():
    labelled = label_source(b"# -*- coding: latin-1 -*-\nname = '\xe9t\xe9'\n")
    assert "'été'" in labelled.text
    assert label_source(b"\xef\xbb\xbfx = 1\n").text == "x = 1\n"


def small_tree(tmp_path: Path) -> Path:
    """A corpus root: real standard-library packages (every split) plus files that must be skipped, counted."""
    root = tmp_path / "src"
    packages = ("json", "html", "http")
    assert {split_of(p) for p in packages} == {"train", "valid", "test"}  # the split function is stable
    for package in packages:
        shutil.copytree(STDLIB / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "broken.py").write_bytes(b"def f(:\n")
    (root / "latin.py").write_bytes(b"x = '\xe9'\n")
    (root / "empty.py").write_bytes(b"")
    (root / "copy_of_decoder.py").write_bytes((STDLIB / "json" / "decoder.py").read_bytes())
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("x = 1\n")
    return root


def test_corpus_skips_and_counts_bad_files_and_splits_by_module(tmp_path):
    corpus = load_code_corpus(stdlib=False, roots=[small_tree(tmp_path)])
    stats = corpus.statistics()
    assert stats["skipped"] == {"duplicate": 1, "empty": 1, "syntax": 1, "undecodable": 1}
    assert not any(f.path.startswith("tests/") for f in corpus.files)
    for file in corpus.files:  # a package's files share one split
        assert file.split == split_of(file.module.split(".")[0])
    assert {split_of(f"m{i}") for i in range(100)} == {"train", "valid", "test"}
    with pytest.raises(ConfigError, match="unknown split"):
        corpus.split("dev")
    with pytest.raises(ConfigError, match="not installed"):
        load_code_corpus(stdlib=False, packages=["no_such_package_xyz"])


def test_functions_lose_their_docstrings_and_keep_the_first_paragraph_as_query():
    source = (
        'class A:\n    def run(self, x):\n        """Run the thing now.\n\n        More words.\n        """\n'
        "        return x\n"
    )
    (function,) = extract_functions(CodeFile(path="a.py", module="a", split="train", text=source))
    assert function.name == "A.run"
    assert function.query == "Run the thing now."
    assert function.code == "def run(self, x):\n    return x"


@pytest.fixture(scope="module")
def tokenizer():
    texts = [(STDLIB / name).read_text(encoding="utf-8") for name in ("json/decoder.py", "json/encoder.py", "ast.py")]
    return train_code_tokenizer(texts, vocab_size=600)


def test_all_subword_alignment_and_overlapping_windows_score_each_token_once(tokenizer):
    labelled = label_source((STDLIB / "json" / "scanner.py").read_bytes())
    ids, labels = align_labels(labelled, tokenizer)
    assert len(ids) == len(labels) and tokenizer.decode(ids) == labelled.text  # byte-level BPE keeps every char
    offsets = tokenizer(labelled.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for (start, end), label in zip(offsets, labels, strict=True):  # a plain loop as the reference
        typed = [int(x) for x in labelled.labels[start:end] if x != NO_TYPE]
        assert label == (typed[0] if typed else -100), labelled.text[start:end]
        if not labelled.text[start:end].strip() and label != -100:  # blanks are labelled only inside a token
            assert TOKEN_TYPES[label] in ("docstring", "string", "fstring", "comment")
    assert labels.count(-100) > 0
    pieces = tokenizer.convert_ids_to_tokens(ids)
    def_index = pieces.index("def")
    assert TOKEN_TYPES[labels[def_index]] == "keyword"
    windows = label_windows(ids, labels, cls=0, sep=2, max_length=40, overlap=8, score_once=True)
    assert all(len(w) <= 40 for w, _ in windows) and len(windows) > 3
    scored = [lab for _, window_labels in windows for lab in window_labels.tolist()[1:-1] if lab != -100]
    assert sorted(scored) == sorted(lab for lab in labels if lab != -100)  # every label once, none twice
    with pytest.raises(ConfigError):
        label_windows(ids, labels, cls=0, sep=2, max_length=10, overlap=8, score_once=True)


def test_metrics_closed_form():
    gold = torch.tensor([0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2])
    metrics = token_type_metrics(predicted, gold, names=("a", "b", "c"))
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)
    vectors = torch.nn.functional.normalize(torch.randn(7, 5), dim=-1)
    assert search_metrics(vectors, vectors)["mrr"] == pytest.approx(1.0)
    assert search_metrics(vectors, -vectors)["mrr"] < 1.0


def test_pretrain_ner_adapter_and_code_search_end_to_end(tmp_path, tokenizer):
    corpus = load_code_corpus(stdlib=False, roots=[small_tree(tmp_path)])
    model = code_encoder(tokenizer, preset="tiny", max_positions=64)
    quick = TrainConfig(steps=2, lr=1e-3, batch_size=4, eval_every=1)
    report = pretrain_code_base(
        model, tokenizer, corpus, out_dir=tmp_path / "base", train_config=quick, max_length=32, eval_windows=4
    )
    assert report["steps"] == 2
    assert set(report["after"]) == {"valid_loss", "valid_accuracy", "test_loss", "test_accuracy"}
    host, loaded_tokenizer = load_code_base(tmp_path / "base" / "model")
    assert host.config.model_type == "roberta" and len(loaded_tokenizer) == len(tokenizer)

    result = train_ner_adapter(
        host,
        loaded_tokenizer,
        corpus,
        out_dir=tmp_path / "ner",
        train_config=quick,
        max_length=32,
        overlap=4,
        eval_files=3,
    )
    written = sorted(p.name for p in (tmp_path / "ner" / "adapter").iterdir())
    assert written == ["adapter.json", "adapter.safetensors", "head.json", "head.safetensors"]
    report = json.loads((tmp_path / "ner" / "report.json").read_text())
    assert 0 <= report["test"]["accuracy"] <= 1 and report["test"]["tokens"] > 0
    assert report["adapter_parameters"] > 0 and report["percent_of_encoder"] < 25
    assert set(report["test"]["per_type"]) <= set(TOKEN_TYPES)

    # the saved adapter + head reproduce the trained tagger's predictions on a fresh copy of the base
    fresh, _ = load_code_base(tmp_path / "base" / "model")
    am = AdaptedModel(fresh)
    am.load_adapter(tmp_path / "ner" / "adapter", name="ner")
    am.set_active("ner")
    tagger = TokenTypeTagger(am)
    load_tagger_head(tagger, tmp_path / "ner" / "adapter")
    ids = torch.randint(5, len(tokenizer), (2, 20))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(tagger.eval()(ids, mask), result.tagger.eval()(ids, mask))

    # a head for another base, and a truncated head, are refused
    other = TokenTypeTagger(AdaptedModel(code_encoder(tokenizer, preset="small", max_positions=64)))
    with pytest.raises(BaseModelMismatchError):
        load_tagger_head(other, tmp_path / "ner" / "adapter")
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "ner" / "adapter", broken)
    (broken / "head.safetensors").write_bytes((broken / "head.safetensors").read_bytes()[:-7])
    with pytest.raises(CorruptArtifactError, match="checksum"):
        load_tagger_head(tagger, broken)

    def search(setup: str, name: str, **options: object) -> dict[str, object]:
        return train_code_search(
            load_code_base(tmp_path / "base" / "model")[0],
            tokenizer,
            corpus,
            setup=setup,
            out_dir=tmp_path / "search" / name,
            ner_adapter=tmp_path / "ner" / "adapter",
            train_config=quick,
            code_length=32,
            query_length=16,
            **options,
        )

    searched = {setup: search(setup, setup) for setup in ("ner+task", "full")}
    assert searched["full"]["percent_of_full"] == pytest.approx(100.0)
    assert 0 < searched["ner+task"]["percent_of_full"] < 25
    assert 0 < searched["ner+task"]["test"]["mrr"] <= 1
    assert (tmp_path / "search" / "ner+task" / "adapters" / "task" / "adapter.json").is_file()
    code_side_only = search("ner+task", "ner-code", ner_sides="code", ner_layers=(0,), tune_ner=True)
    assert code_side_only["ner_sides"] == "code" and searched["ner+task"]["ner_sides"] == "both"
    assert code_side_only["ner_layers"] == [0] and searched["ner+task"]["ner_layers"] is None
    assert code_side_only["tune_ner"] and not searched["ner+task"]["tune_ner"]
    tuned, frozen = (
        read_adapter(tmp_path / "search" / "ner-code" / "adapters" / "ner")[1],
        read_adapter(tmp_path / "ner" / "adapter")[1],
    )
    assert tuned and all(not torch.equal(value, frozen[key]) for key, value in tuned.items())  # trained from TTC
    assert code_side_only["trainable_parameters"] == searched["ner+task"]["trainable_parameters"] + sum(
        t.numel() for t in tuned.values()
    )

    gated = search("gate", "gate", ner_prior=0.2)
    assert gated["ner_prior"] == 0.2 and code_side_only["ner_prior"] is None
    best = st_load((tmp_path / "search" / "gate" / "best" / "trainable.safetensors").read_bytes())
    biases = [value for key, value in best.items() if key.endswith("gates.mix.gate_bias")]
    assert biases  # two small Adam steps from log(0.2, 0.8): the gate starts from the prior
    for bias in biases:
        torch.testing.assert_close(bias.softmax(-1), torch.tensor([0.2, 0.8]), rtol=0, atol=0.01)
    assert set(gated["gate_mixture"]) == {"query", "code"}  # the NER branch is on both sides by default
    for side in gated["gate_mixture"].values():
        assert len(side["sites"]) == len(biases)
        torch.testing.assert_close(torch.tensor(side["mean"]), torch.tensor([0.2, 0.8]), rtol=0, atol=0.02)
    assert code_side_only["gate_mixture"] is None
    host = load_code_base(tmp_path / "base" / "model")[0]
    for setup, prior in (("gate", 1.0), ("gate", 0.0), ("ner+task", 0.5)):
        with pytest.raises(ConfigError, match="ner_prior"):
            train_code_search(
                host, tokenizer, corpus, setup=setup, out_dir=tmp_path / "x", ner_adapter=tmp_path, ner_prior=prior
            )

    # per-query ranks: the report's MRR, and a paired bootstrap of two runs' difference
    stack_dir, full_dir = tmp_path / "search" / "ner+task", tmp_path / "search" / "full"
    ranks, digest = read_ranks(stack_dir)
    assert digest == searched["ner+task"]["digests"]["test"] == searched["full"]["digests"]["test"]
    assert (1 / ranks.double()).mean().item() == pytest.approx(searched["ner+task"]["test"]["mrr"])
    paired = compare_runs(stack_dir, full_dir, replicates=500)
    expected = searched["full"]["test"]["mrr"] - searched["ner+task"]["test"]["mrr"]
    assert paired["difference"] == pytest.approx(expected) and paired["queries"] == len(ranks)
    assert paired["low"] <= paired["difference"] <= paired["high"]
    same = compare_runs(stack_dir, stack_dir, split="valid", replicates=50)
    assert same["difference"] == same["low"] == same["high"] == same["second_better"] == 0
    other = tmp_path / "search" / "other"
    other.mkdir()
    st_bytes = save_file_bytes({"test": ranks}, {"test_digest": "0" * 64})
    (other / "ranks.safetensors").write_bytes(st_bytes)
    with pytest.raises(ConfigError, match="different test functions"):
        compare_runs(stack_dir, other)
    with pytest.raises(CorruptArtifactError, match="no 'valid' ranks"):
        compare_runs(other, stack_dir, split="valid")
    with pytest.raises(MissingArtifactError, match="no per-query ranks"):
        compare_runs(stack_dir, tmp_path)
    assert main(["code", "compare", str(stack_dir), str(full_dir), "--replicates", "100"]) == 0
    seeds = compare_seeds([(stack_dir, full_dir), (full_dir, stack_dir)], replicates=200)
    assert [row["difference"] for row in seeds["pairs"]] == pytest.approx([expected, -expected])
    assert seeds["difference"] == pytest.approx(0) and seeds["low"] == seeds["high"] == pytest.approx(0)
    assert seeds["seed_sd"] == pytest.approx(abs(expected) * 2**0.5)  # sd of (d, -d)
    assert seeds["seed_low"] < 0 < seeds["seed_high"] or expected == 0
    assert compare_runs(stack_dir, full_dir, replicates=500) == paired  # one pair is compare_runs, bit for bit
    one = compare_seeds([(stack_dir, full_dir)], replicates=500)
    assert one["seed_sd"] is one["seed_low"] is None
    with pytest.raises(ConfigError, match="no runs to compare"):
        compare_seeds([])
    with pytest.raises(ConfigError, match="different test functions"):
        compare_seeds([(stack_dir, full_dir), (stack_dir, other)])
    assert main(["code", "compare", str(stack_dir), str(full_dir), str(stack_dir), "--replicates", "10"]) == 2
    assert main(["code", "compare", str(stack_dir), str(full_dir), str(full_dir), str(stack_dir)]) == 0

    # with ner_sides="code", queries are encoded by the task adapter alone and code by the stack
    am = AdaptedModel(load_code_base(tmp_path / "base" / "model")[0])
    am.load_adapter(tmp_path / "ner" / "adapter", name="ner")
    am.load_adapter(tmp_path / "search" / "ner+task" / "adapters" / "task", name="task")
    am.set_active(Stack("ner", "task"))
    encoder = SearchEncoder(am, query_composition="task")
    with torch.no_grad():
        query, code = encoder(ids, mask, side="query"), encoder(ids, mask)
        assert am.active == Stack("ner", "task")  # restored after the query side
        am.set_active("task")
        alone = SearchEncoder(am)(ids, mask)
    torch.testing.assert_close(query, alone)
    assert not torch.allclose(query, code)
    # the gate's mixture over held-out tokens: its prior before training, padding left out
    am.set_active(Gate("ner", "task", name="mix", prior=(0.3, 0.7)))
    pairs = encode_pairs(corpus.functions("test"), tokenizer, query_length=16, code_length=32)
    held_out = [(query, code[: 12 + 5 * (i % 5)]) for i, (query, code) in enumerate(pairs)]  # unequal lengths
    padded = CodeSearchEval(held_out, tokenizer.pad_token_id, prefix="test")
    unpadded = CodeSearchEval(held_out, tokenizer.pad_token_id, prefix="test", batch_size=1)
    mixture = gate_mixture(encoder, padded, gate="mix")
    assert len(mixture["sites"]) == len(biases)
    for weights in mixture["sites"].values():
        assert weights == pytest.approx([0.3, 0.7])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in am.model.named_parameters():
            if name.endswith("gates.mix.gate_weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 5)
    mixture = gate_mixture(encoder, padded, gate="mix")
    assert max(abs(weights[0] - 0.3) for weights in mixture["sites"].values()) > 0.01  # now token-dependent
    for key, weights in gate_mixture(encoder, unpadded, gate="mix")["sites"].items():
        assert mixture["sites"][key] == pytest.approx(weights, abs=1e-5)
    with pytest.raises(ConfigError, match="does not read the gate"):
        gate_mixture(encoder, padded, gate="mix", side="query")
    with pytest.raises(ConfigError, match="no site holds a gate named 'other'"):
        gate_mixture(encoder, padded, gate="other")
    with pytest.raises(ConfigError, match="ner_sides"):
        train_code_search(host, tokenizer, corpus, setup="task", out_dir=tmp_path / "x", ner_sides="query")
    with pytest.raises(ConfigError, match="needs ner_adapter"):
        train_code_search(host, tokenizer, corpus, setup="gate", out_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="unknown code-search setup"):
        train_code_search(host, tokenizer, corpus, setup="lora", out_dir=tmp_path / "x")


def test_cli_label_prints_types_and_fails_in_one_line_on_bad_files(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text(SAMPLE, encoding="utf-8")
    assert main(["code", "label", str(good)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "8:4\tfunction_name\tarea" in lines and "2:0\tkeyword\timport" in lines
    assert main(["code", "label", "--json", str(good)]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    assert first == {"line": 1, "column": 0, "type": "docstring", "text": '"""Module docstring."""'}
    bad = tmp_path / "bad.py"
    bad.write_bytes(b"def f(:\n")
    assert main(["code", "label", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:1: does not parse") and err.count("\n") == 1
    assert main(["code", "label", str(tmp_path / "missing.py")]) != 0
