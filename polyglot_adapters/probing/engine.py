"""Scoring every typed candidate of many cloze queries with a masked LM, batched by candidate length.

**Multi-token objects.** A candidate of ``L`` tokens is scored by filling the object slot with
``L`` mask tokens and averaging, over the ``L`` masks, the log-probability of the candidate's
``i``-th token at the ``i``-th mask (independent masks, length-normalised). All candidates of
the same length share one forward pass, so a query costs one forward per distinct candidate
length, never one per candidate. The log-probabilities are normalised over the relation's
*candidate vocabulary* (every token of every candidate of the template): typed querying, and
the 250k-way softmax is never computed (``decode_tokens`` multiplies only those decoder rows).

**Tokenisation in context.** A candidate's tokens are those it gets inside the template's
sentence (``▁Euro`` after a space, ``ユー ロ`` inside Japanese), from one tokenisation of the
template filled with a fixed reference subject; the query's context tokens come from the
template filled with the fact's subject and a fixed reference object. Both are independent of
the gold answer.

**Continuous prompts.** With ``slots=P`` every row gets ``P`` placeholder tokens after its first
token (for prefix, P-Tuning and mixture-of-experts P-Adapters), and the P-Adapter context
(:func:`polyglot_adapters.methods.p_adapter.prompt_inputs`) receives which positions to keep
(the subject's tokens, the masks and the frame tokens), the attention mask and each row's relation.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..kg.cloze import split_by_spans
from ..kg.encode import backbone, frame_ids
from ..methods.p_adapter import p_adapter_layers, prompt_inputs
from ..model import AdaptedModel
from ..models.mlm import decode_tokens
from .facts import Fact, ProbeError

__all__ = [
    "PRECISIONS",
    "CandidateTable",
    "Query",
    "build_queries",
    "candidate_table",
    "encode_rows",
    "head_host",
    "pad_rows",
    "probe_frame",
    "query_row",
    "score_naive",
    "score_queries",
]


PRECISIONS = ("fp32", "bf16")
"""Encoder precisions of a probe: float32, or bfloat16 autocast (the head always in its own dtype)."""


@dataclasses.dataclass(frozen=True)
class Query:
    """One fact asked through one template, tokenised around the object slot (no special tokens).

    Attributes:
        left: Token ids before the object slot.
        right: Token ids after it.
        keep_left: Positions in ``left`` that hold the subject.
        keep_right: Positions in ``right`` that hold the subject.
        table: Index of the candidate table (one per template) scored for this query.
        relation: Index of the fact's relation (for per-relation prompts).
    """

    left: tuple[int, ...]
    right: tuple[int, ...]
    keep_left: tuple[int, ...]
    keep_right: tuple[int, ...]
    table: int
    relation: int


@dataclasses.dataclass(frozen=True)
class CandidateTable:
    """The candidates of one template, tokenised in its context, grouped by length.

    Attributes:
        tokens: Per candidate, its token ids.
        vocab: ``(K,)`` the sorted distinct ids of all candidates (the softmax's support).
        groups: Length ``L`` -> ``(candidates (C_L,), positions (C_L, L))``: which candidates have
            ``L`` tokens and their tokens' positions in ``vocab``.
    """

    tokens: tuple[tuple[int, ...], ...]
    vocab: torch.Tensor
    groups: dict[int, tuple[torch.Tensor, torch.Tensor]]


def candidate_table(tokens: Sequence[Sequence[int]]) -> CandidateTable:
    """Builds a :class:`CandidateTable` from each candidate's token ids.

    Raises:
        ProbeError: If there is no candidate or a candidate has no token.
    """
    if not tokens:
        raise ProbeError("the candidate set is empty")
    if any(len(t) == 0 for t in tokens):
        raise ProbeError("a candidate label has no token")
    vocab = torch.tensor(sorted({i for t in tokens for i in t}), dtype=torch.long)
    where = {int(v): k for k, v in enumerate(vocab)}
    by_length: dict[int, list[int]] = defaultdict(list)
    for c, t in enumerate(tokens):
        by_length[len(t)].append(c)
    groups = {
        length: (
            torch.tensor(members, dtype=torch.long),
            torch.tensor([[where[i] for i in tokens[c]] for c in members], dtype=torch.long),
        )
        for length, members in sorted(by_length.items())
    }
    return CandidateTable(tuple(tuple(t) for t in tokens), vocab, groups)


def _pieces(tokenizer: Any, template: Any, subject: str, obj: str) -> tuple[list[list[int]], bool]:
    """The filled template's token pieces and whether the subject comes first."""
    text, s_span, o_span = template.fill(subject, obj)
    subject_first = s_span[0] < o_span[0]
    return split_by_spans(tokenizer, text, sorted([s_span, o_span])), subject_first


def build_queries(
    tokenizer: Any,
    facts: Sequence[Fact],
    templates: Sequence[Any],
    labels: Callable[[str], str],
    candidates: dict[str, list[str]],
    relations: Sequence[str],
) -> tuple[list[Query], list[CandidateTable]]:
    """Tokenises every (fact, template of its relation) query and every template's candidates.

    Args:
        tokenizer: A fast tokenizer.
        facts: The facts.
        templates: Probe templates (``relation``, ``fill(subject, obj)``); each fact is asked
            with every template of its relation, in the given order.
        labels: Entity id -> label in the probed language.
        candidates: Relation -> candidate entity ids.
        relations: Relation names; a query's ``relation`` indexes this list.

    Returns:
        The queries (fact-major, templates in order) and one candidate table per template.

    Raises:
        ProbeError: If a fact's relation has no template or no candidates.
    """
    by_relation: dict[str, list[int]] = defaultdict(list)
    for t, template in enumerate(templates):
        by_relation[template.relation].append(t)
    tables: list[CandidateTable] = []
    references: list[tuple[str, str]] = []
    for template in templates:
        if template.relation not in candidates:
            raise ProbeError(f"no candidate set for relation {template.relation!r}")
        reference_object = labels(candidates[template.relation][0])
        # Any subject will do: only the template's own text touches the object slot.
        reference_subject = reference_object
        tokens = []
        for entity in candidates[template.relation]:
            pieces, subject_first = _pieces(tokenizer, template, reference_subject, labels(entity))
            tokens.append(pieces[3] if subject_first else pieces[1])
        tables.append(candidate_table(tokens))
        references.append((reference_subject, reference_object))
    queries = []
    for fact in facts:
        if not by_relation.get(fact.relation):
            raise ProbeError(f"no template for relation {fact.relation!r}")
        for t in by_relation[fact.relation]:
            pieces, subject_first = _pieces(tokenizer, templates[t], labels(fact.subject), references[t][1])
            if subject_first:
                left, right = pieces[0] + pieces[1] + pieces[2], pieces[4]
                keep_left, keep_right = tuple(range(len(pieces[0]), len(pieces[0]) + len(pieces[1]))), ()
            else:
                left, right = pieces[0], pieces[2] + pieces[3] + pieces[4]
                keep_left, keep_right = (), tuple(range(len(pieces[2]), len(pieces[2]) + len(pieces[3])))
            queries.append(Query(tuple(left), tuple(right), keep_left, keep_right, t, relations.index(fact.relation)))
    return queries, tables


def probe_frame(tokenizer: Any) -> tuple[int, int, int, int, int]:
    """``(first, last, pad, mask, slot)`` token ids of probe rows (frame from :func:`~..kg.encode.frame_ids`).

    Raises:
        ProbeError: If the tokenizer has no mask token (or no frame tokens: ``ConfigError``).
    """
    if tokenizer.mask_token_id is None:
        raise ProbeError("the tokenizer needs a mask token to probe")
    first, last, pad = frame_ids(tokenizer)
    slot = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else pad
    return first, last, pad, tokenizer.mask_token_id, slot


def query_row(query: Query, length: int, slots: int, frame: tuple[int, ...]) -> tuple[list[int], list[int], int]:
    """One row: ``[first] slots left [mask]*length right [last]``.

    Returns:
        The ids, the positions a rewriting prompt must keep (frame, subject, masks) and the
        first mask's position.
    """
    first, last, _, mask, slot = frame
    start = 1 + slots + len(query.left)
    ids = [first, *([slot] * slots), *query.left, *([mask] * length), *query.right, last]
    keep = [0, *(1 + slots + i for i in query.keep_left), *range(start, start + length)]
    keep += [start + length + i for i in query.keep_right] + [len(ids) - 1]
    return ids, keep, start


def pad_rows(ids: Sequence[Sequence[int]], keeps: Sequence[Sequence[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-pads rows: ``input_ids``, ``attention_mask`` (int64) and ``keep`` (bool), each ``(B, T)``."""
    width = max(len(r) for r in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)  # (B, T)
    attention = torch.zeros((len(ids), width), dtype=torch.long)  # (B, T)
    keep = torch.zeros((len(ids), width), dtype=torch.bool)  # (B, T)
    for b, (row, kept) in enumerate(zip(ids, keeps, strict=True)):
        input_ids[b, : len(row)] = torch.tensor(row)
        attention[b, : len(row)] = 1
        keep[b, list(kept)] = True
    return {"input_ids": input_ids, "attention_mask": attention, "keep": keep}


def encode_rows(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: torch.Tensor,
    relations: torch.Tensor,
) -> torch.Tensor:
    """Final hidden states ``(B, T, H)`` of padded rows, with adapters and the prompt context active.

    Args:
        model: A masked LM or an ``AdaptedModel`` around one.
        input_ids: ``(B, T)``.
        attention_mask: ``(B, T)``, 1 for real tokens.
        keep: ``(B, T)`` bool, positions a rewriting P-Adapter leaves unchanged.
        relations: ``(B,)`` relation index per row (for per-relation prompts).
    """
    context = (
        prompt_inputs(model, keep=keep, attention_mask=attention_mask, relations=relations)
        if p_adapter_layers(model)
        else contextlib.nullcontext()
    )
    with context:
        return backbone(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _forward(
    model: nn.Module, ids: list[list[int]], keeps: list[list[int]], relations: list[int], pad: int
) -> torch.Tensor:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in pad_rows(ids, keeps, pad).items()}
    rel = torch.tensor(relations, dtype=torch.long, device=device)
    return encode_rows(model, batch["input_ids"], batch["attention_mask"], batch["keep"], rel)


def head_host(model: nn.Module) -> nn.Module:
    """The masked-LM model inside ``model`` (which may be an ``AdaptedModel``).

    Raises:
        ProbeError: If it has no masked-LM head.
    """
    host = model.model if isinstance(model, AdaptedModel) else model
    if not (hasattr(host, "cls") or hasattr(host, "lm_head")):
        raise ProbeError("probing needs a masked-LM model (e.g. default_mlm() or a BertForMaskedLM directory)")
    return host


@torch.inference_mode()
def score_queries(
    model: nn.Module,
    tokenizer: Any,
    queries: Sequence[Query],
    tables: Sequence[CandidateTable],
    *,
    slots: int = 0,
    batch_size: int = 256,
    precision: str = "fp32",
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """Scores all candidates of every query.

    Args:
        model: A masked LM (``BertForMaskedLM`` or an ``AdaptedModel`` around one), in eval mode.
        tokenizer: Its tokenizer.
        queries: From :func:`build_queries`.
        tables: Candidate tables the queries index.
        slots: Placeholder tokens after the first token (prompt slots of a P-Adapter).
        batch_size: Rows per forward pass.
        precision: One of :data:`PRECISIONS`: ``bf16`` runs the encoder under bfloat16 autocast;
            the head's logits and the softmax over the candidate vocabulary stay in its dtype.
        progress: Called with the number of rows done after each batch.

    Returns:
        Per query, ``(C,)`` float32 length-normalised log-probabilities of its table's candidates.

    Raises:
        ProbeError: If ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ProbeError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    host = head_host(model)
    device = next(model.parameters()).device
    frame = probe_frame(tokenizer)
    rows = [(q, length) for q, query in enumerate(queries) for length in tables[query.table].groups]
    rows.sort(key=lambda r: -(len(queries[r[0]].left) + len(queries[r[0]].right) + r[1]))
    hidden_at: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for begin in range(0, len(rows), batch_size):
        chunk = rows[begin : begin + batch_size]
        built = [query_row(queries[q], length, slots, frame) for q, length in chunk]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            hidden = _forward(
                model, [b[0] for b in built], [b[1] for b in built], [queries[q].relation for q, _ in chunk], frame[2]
            )
        for b, ((q, length), (_, _, start)) in enumerate(zip(chunk, built, strict=True)):
            hidden_at[(queries[q].table, length)].append((q, hidden[b, start : start + length]))  # (L, H)
        if progress is not None:
            progress(len(chunk))
    scores = [torch.empty(len(tables[query.table].tokens)) for query in queries]
    for (t, length), items in hidden_at.items():
        table = tables[t]
        members, positions = table.groups[length]
        stacked = torch.stack([h for _, h in items])  # (n, L, H)
        logits = decode_tokens(host, stacked.reshape(-1, stacked.shape[-1]), table.vocab.to(stacked.device))
        logp = logits.float().log_softmax(-1).reshape(len(items), length, -1).cpu()  # (n, L, K)
        per_token = logp[:, torch.arange(length)[None, :], positions]  # (n, C_L, L)
        values = per_token.mean(-1)  # (n, C_L)
        for row, (q, _) in enumerate(items):
            scores[q][members] = values[row]
    return scores


@torch.inference_mode()
def score_naive(
    model: nn.Module, tokenizer: Any, queries: Sequence[Query], tables: Sequence[CandidateTable], *, slots: int = 0
) -> list[torch.Tensor]:
    """:func:`score_queries`' scores with one forward pass per (query, candidate): the naive baseline and a check."""
    host = head_host(model)
    frame = probe_frame(tokenizer)
    scores = []
    for query in queries:
        table = tables[query.table]
        values = torch.empty(len(table.tokens))
        for c, tokens in enumerate(table.tokens):
            ids, keep, start = query_row(query, len(tokens), slots, frame)
            hidden = _forward(model, [ids], [keep], [query.relation], frame[2])
            logits = decode_tokens(host, hidden[0, start : start + len(tokens)], table.vocab.to(hidden.device))
            logp = logits.float().log_softmax(-1).cpu()  # (L, K)
            where = torch.searchsorted(table.vocab, torch.tensor(tokens))
            values[c] = logp[torch.arange(len(tokens)), where].mean()
        scores.append(values)
    return scores
