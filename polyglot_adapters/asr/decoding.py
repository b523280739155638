"""Transducer decoding: batched greedy search that streams (explicit state), and beam search.

Greedy search keeps, per stream, the symbols so far, the predictor's last output and its LSTM
state; :func:`stack_decoder_states` / :func:`unstack_decoder_states` batch them like the
encoder's. Beam search is torchaudio's ``RNNTBeamSearch`` (one utterance at a time) over encodings computed
beforehand, through a thin view that presents them as the encoder's output.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torchaudio.models import RNNTBeamSearch

from .model import ConformerTransducer, State, stack_states, unstack_states

__all__ = [
    "DecoderState",
    "beam_search",
    "beam_search_encodings",
    "greedy_search",
    "init_decoder_state",
    "stack_decoder_states",
    "unstack_decoder_states",
]


@dataclasses.dataclass
class DecoderState:
    """Greedy search state of ``B`` streams.

    Attributes:
        tokens: Symbols emitted so far per stream (no blanks).
        predictor_out: Predictor output after each stream's last symbol ``(B, 1, H)``.
        predictor_state: The predictor's LSTM state (``[[h (B, H), c (B, H)] per layer]``).
    """

    tokens: list[list[int]]
    predictor_out: torch.Tensor
    predictor_state: State


@torch.no_grad()
def init_decoder_state(model: ConformerTransducer, batch_size: int) -> DecoderState:
    """The state before any frame: the predictor has seen the blank (start) symbol."""
    device = model.joiner.output.weight.device
    start = torch.full((batch_size, 1), model.blank, dtype=torch.long, device=device)
    out, _, state = model.predictor(start, torch.ones(batch_size, dtype=torch.long, device=device), None)
    return DecoderState([[] for _ in range(batch_size)], out, state)


@torch.no_grad()
def greedy_search(
    model: ConformerTransducer,
    encodings: torch.Tensor,
    lengths: torch.Tensor,
    state: DecoderState | None = None,
    *,
    max_symbols: int = 5,
) -> DecoderState:
    """Greedy transducer search over encoder frames, continuing from ``state``.

    At each valid frame a stream emits its joiner's best symbol while that is not the blank
    (at most ``max_symbols`` per frame); streams are independent of each other and of padding.

    Args:
        model: The transducer (adapters, if any, already active).
        encodings: Encoder output ``(B, T, D)``.
        lengths: Valid frames per stream ``(B,)``.
        state: The state after the previous frames (streaming), or ``None`` to start.
        max_symbols: Symbols a stream may emit per frame.

    Returns:
        The new state; ``state.tokens`` holds each stream's hypothesis so far.
    """
    b = encodings.shape[0]
    state = init_decoder_state(model, b) if state is None else state
    tokens = [list(t) for t in state.tokens]
    out, pred_state = state.predictor_out, state.predictor_state
    one = torch.ones(b, dtype=torch.long, device=encodings.device)
    joiner = model.joiner
    # The joiner's projections are linear: project every frame once and each predictor output once.
    source = joiner.encoder_proj(encodings)  # (B, T, J)
    target = joiner.predictor_proj(out[:, 0])  # (B, J)
    for t in range(encodings.shape[1]):
        active = t < lengths  # (B,)
        for _ in range(max_symbols):
            logits = joiner.output(torch.tanh(source[:, t] + target))  # (B, V)
            best = logits.argmax(dim=-1)  # (B,)
            emit = active & (best != model.blank)
            if not bool(emit.any()):
                break
            new_out, _, new_state = model.predictor(best[:, None], one, pred_state)
            keep = emit[:, None, None]
            out = torch.where(keep, new_out, out)
            target = torch.where(emit[:, None], joiner.predictor_proj(new_out[:, 0]), target)
            pred_state = [
                [torch.where(emit[:, None], n, o) for n, o in zip(new, old, strict=True)]
                for new, old in zip(new_state, pred_state, strict=True)
            ]
            for i in emit.nonzero().flatten().tolist():
                tokens[i].append(int(best[i]))
    return DecoderState(tokens, out, pred_state)


def stack_decoder_states(states: list[DecoderState]) -> DecoderState:
    """Batches decoder states of several streams, in order."""
    return DecoderState(
        [t for s in states for t in s.tokens],
        torch.cat([s.predictor_out for s in states]),
        stack_states([s.predictor_state for s in states]),
    )


def unstack_decoder_states(state: DecoderState) -> list[DecoderState]:
    """Splits a batched decoder state into one per stream."""
    parts = unstack_states(state.predictor_state)
    return [
        DecoderState([state.tokens[i]], state.predictor_out[i : i + 1], parts[i]) for i in range(len(state.tokens))
    ]


class _EncodedView(nn.Module):
    """A transducer whose ``transcribe`` passes its input through.

    ``RNNTBeamSearch`` encodes before it searches; through this view it searches encodings
    computed beforehand (either pass of a cascaded model, under any adapter composition).
    """

    def __init__(self, model: ConformerTransducer) -> None:
        super().__init__()
        self.model = model

    def transcribe(self, sources: torch.Tensor, source_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return sources, source_lengths

    def predict(
        self, targets: torch.Tensor, target_lengths: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        return self.model.predict(targets, target_lengths, state)

    def join(
        self,
        source_encodings: torch.Tensor,
        source_lengths: torch.Tensor,
        target_encodings: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.join(source_encodings, source_lengths, target_encodings, target_lengths)


@torch.no_grad()
def beam_search_encodings(
    model: ConformerTransducer, encodings: torch.Tensor, lengths: torch.Tensor, *, beam_width: int = 4
) -> list[list[int]]:
    """The best hypothesis of torchaudio's ``RNNTBeamSearch`` for each row of encoder output.

    Rows are searched one at a time over their valid frames only. Adapters in the prediction
    network see a batch of hypotheses, not of utterances: activate one adapter (not a ``Route``).

    Args:
        model: The transducer.
        encodings: Encoder output ``(B, T, D)`` (:meth:`ConformerTransducer.encode`).
        lengths: Valid frames per row ``(B,)``.
        beam_width: Beam size.

    Returns:
        Per row, the symbols (blank-free) of the best hypothesis (torchaudio's length-normalised score).
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be at least 1, got {beam_width}")
    search = RNNTBeamSearch(_EncodedView(model), model.blank)
    out = []
    for row, length in zip(encodings, lengths.tolist(), strict=True):
        hypotheses = search(row[None, :length], torch.tensor([length], device=row.device), beam_width)
        out.append([s for s in hypotheses[0][0] if s != model.blank])
    return out


@torch.no_grad()
def beam_search(
    model: ConformerTransducer, features: torch.Tensor, length: int, *, beam_width: int = 4, first_pass: bool = False
) -> list[int]:
    """The best hypothesis of torchaudio's ``RNNTBeamSearch`` for one utterance.

    Args:
        model: The transducer.
        features: One utterance's features ``(T, F)``.
        length: Its valid frames.
        beam_width: Beam size.
        first_pass: Search a cascaded model's streaming encoder instead of its second pass.

    Returns:
        The symbols (blank-free) of the best hypothesis.
    """
    lengths = torch.tensor([length], device=features.device)
    encodings, enc_lengths = model.encode(features[None], lengths, first_pass=first_pass)  # (1, T', D)
    return beam_search_encodings(model, encodings, enc_lengths, beam_width=beam_width)[0]
