"""A streaming Conformer transducer: chunk-causal Conformer encoder, LSTM predictor, joiner.

The encoder's layers are ``torchaudio.models.Conformer`` layers (so their modules, and the
paths adapters attach to, are torchaudio's), run with a chunk-wise attention mask with limited
left context and a causal depthwise convolution. Encoder frame ``t`` sees every frame of its
own chunk and of the ``left_chunks`` chunks before it, and nothing later; the convolution sees
the ``kernel - 1`` frames before it. There is no positional encoding (the convolutions carry
order), so a chunk's output depends only on the frames it sees, and chunk-by-chunk encoding
with the cached left context (:meth:`ChunkedConformerEncoder.infer`) equals full-utterance
encoding (:meth:`ChunkedConformerEncoder.forward`) up to float rounding.

The cascaded variant (``cascade_layers > 0``) adds a second-pass encoder: more Conformer layers
that see the whole utterance (full attention, centred convolution) over the causal encoder's
output. The first pass streams partial hypotheses; once a stream ends, the second pass re-encodes
it and the shared predictor and joiner decode the final hypothesis (Narayanan et al., "Cascaded
encoders for unifying streaming and non-streaming ASR", the framework of the tail-language
adapter paper). Its layers follow the causal ones in the same ``conformer_layers`` list, so
adapters attach to both passes alike.

The model is a ``torchaudio.models.RNNT`` (transcriber, predictor, joiner), so torchaudio's
``RNNTBeamSearch`` decodes it; the predictor and joiner are this module's own.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
import torchaudio
from torch import nn

from ..config import check
from ..errors import ConfigError

__all__ = [
    "MODEL_TYPE",
    "ChunkedConformerEncoder",
    "ConformerTransducer",
    "ConformerTransducerConfig",
    "Joiner",
    "Predictor",
    "State",
    "conformer_transducer",
    "conformer_transducer_small",
    "conformer_transducer_tiny",
    "stack_states",
    "unstack_states",
]

MODEL_TYPE = "conformer_transducer"

State = list[list[torch.Tensor]]
"""Streaming state in torchaudio's layout: a list of per-layer lists of tensors, batch first."""


@dataclasses.dataclass(frozen=True)
class ConformerTransducerConfig:
    """Sizes of a :class:`ConformerTransducer`; saved next to its weights as JSON.

    Attributes:
        input_dim: Feature channels per frame (log-mel bins).
        num_symbols: Output symbols including the blank, which is the last one.
        hidden_size: Conformer model dimension.
        num_layers: Conformer layers.
        num_heads: Attention heads.
        ffn_dim: Hidden size of the Conformer feed-forward modules.
        kernel_size: Depthwise convolution kernel (odd); causal, so it sees ``kernel_size - 1`` past frames.
        time_reduction: Feature frames stacked into one encoder frame.
        chunk_frames: Encoder frames per attention chunk.
        left_chunks: Chunks of left context each chunk attends to.
        predictor_dim: Predictor embedding and LSTM size.
        predictor_layers: Predictor LSTM layers.
        joiner_dim: Joint network size.
        dropout: Dropout in the encoder and predictor.
        ctc_weight: Weight of an auxiliary CTC loss on the encoder (0 = none). Above 0 the model
            has a CTC output layer (``ctc_output``, used only by the training loss): the encoder
            learns to align within a few epochs, where a transducer trained alone from scratch
            spends its first epochs emitting only blanks.
        cascade_layers: Full-context Conformer layers of the second-pass encoder (0 = a streaming
            model only).
        cascade_weight: Share of the second pass's RNN-T loss in training, the first pass taking
            the rest (used only with ``cascade_layers > 0``).
    """

    input_dim: int
    num_symbols: int
    hidden_size: int = 144
    num_layers: int = 6
    num_heads: int = 4
    ffn_dim: int = 576
    kernel_size: int = 15
    time_reduction: int = 4
    chunk_frames: int = 4
    left_chunks: int = 4
    predictor_dim: int = 256
    predictor_layers: int = 1
    joiner_dim: int = 256
    dropout: float = 0.1
    ctc_weight: float = 0.0
    cascade_layers: int = 0
    cascade_weight: float = 0.5

    model_type = MODEL_TYPE

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("dropout", "ctc_weight", "cascade_weight"):
                check(
                    isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1,
                    f"{field.name} must be in [0, 1), got {value!r}",
                )
                continue
            minimum = 2 if field.name == "num_symbols" else 0 if field.name in ("left_chunks", "cascade_layers") else 1
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                f"{field.name} must be an integer >= {minimum}, got {value!r}",
            )
        check(self.kernel_size % 2 == 1, f"kernel_size must be odd, got {self.kernel_size}")
        check(
            self.cascade_layers == 0 or self.cascade_weight > 0,
            f"cascade_weight must be above 0 with cascade_layers = {self.cascade_layers} "
            "(or the second pass never trains)",
        )
        check(
            self.hidden_size % self.num_heads == 0,
            f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
        )

    @property
    def blank(self) -> int:
        """Index of the blank symbol (the last one)."""
        return self.num_symbols - 1

    @property
    def chunk_size(self) -> int:
        """Feature frames per streaming chunk (``time_reduction * chunk_frames``)."""
        return self.time_reduction * self.chunk_frames

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (with ``model_type``)."""
        return {"model_type": MODEL_TYPE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformerTransducerConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: On a wrong ``model_type``, unknown keys or invalid values.
        """
        data = dict(data)
        model_type = data.pop("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ConfigError(f"model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        """The config as a JSON string."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _lengths_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size)`` bool, True at valid positions."""
    return torch.arange(size, device=lengths.device) < lengths[:, None]


class ChunkedConformerEncoder(nn.Module):
    """The transcriber: feature normalisation, frame stacking, chunk-causal Conformer, output norm.

    With ``config.cascade_layers > 0`` it also holds the second-pass encoder (:meth:`second_pass`):
    the last ``cascade_layers`` of ``conformer.conformer_layers`` and their own output norm.

    Args:
        config: Model sizes.
    """

    def __init__(self, config: ConformerTransducerConfig) -> None:
        super().__init__()
        self.config = config
        # Global feature statistics (set from training data), so normalisation is streamable.
        self.register_buffer("feature_mean", torch.zeros(config.input_dim))
        self.register_buffer("feature_std", torch.ones(config.input_dim))
        self.input_linear = nn.Linear(config.input_dim * config.time_reduction, config.hidden_size)
        self.conformer = torchaudio.models.Conformer(
            input_dim=config.hidden_size,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            num_layers=config.num_layers + config.cascade_layers,
            depthwise_conv_kernel_size=config.kernel_size,
            dropout=config.dropout,
        )
        self.output_norm = nn.LayerNorm(config.hidden_size)
        self.cascade_norm = nn.LayerNorm(config.hidden_size) if config.cascade_layers else None

    @property
    def causal_layers(self) -> nn.ModuleList:
        """The streaming (first-pass) layers."""
        return self.conformer.conformer_layers[: self.config.num_layers]

    @property
    def cascade_layers(self) -> nn.ModuleList:
        """The second-pass layers (empty without a cascade)."""
        return self.conformer.conformer_layers[self.config.num_layers :]

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Sets the per-channel feature mean and standard deviation used for normalisation."""
        if mean.shape != self.feature_mean.shape or std.shape != self.feature_std.shape:
            raise ConfigError(
                f"feature statistics must have shape {tuple(self.feature_mean.shape)}, "
                f"got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-5))

    @property
    def left_frames(self) -> int:
        """Encoder frames of attention left context (the attention cache length)."""
        return self.config.left_chunks * self.config.chunk_frames

    def _frontend(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalises, zeroes padding and stacks ``time_reduction`` frames: ``(B, T, F) -> (B, ceil(T/R), R*F)``."""
        if features.dim() != 3 or features.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"expected features of shape (B, T, {self.config.input_dim}), got {tuple(features.shape)}"
            )
        r = self.config.time_reduction
        x = (features - self.feature_mean) / self.feature_std
        x = x.masked_fill(~_lengths_mask(lengths, x.shape[1])[..., None], 0.0)
        pad = -x.shape[1] % r
        x = F.pad(x, (0, 0, 0, pad))  # (B, R * T', F)
        b, t, f = x.shape
        x = x.reshape(b, t // r, r * f)  # (B, T', R * F)
        return self.input_linear(x), torch.div(lengths + r - 1, r, rounding_mode="floor")

    def _allowed(self, key_pos: torch.Tensor, query_pos: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        """``(B, Tq, Tk)`` bool: query may attend to key (same or earlier chunk within the left context).

        A query always sees itself, so that padding rows stay finite.
        """
        c = self.config.chunk_frames
        qc = torch.div(query_pos, c, rounding_mode="floor")[:, None]  # (Tq, 1)
        kc = torch.div(key_pos, c, rounding_mode="floor")[None, :]  # (1, Tk)
        window = (kc <= qc) & (kc >= qc - self.config.left_chunks)  # (Tq, Tk)
        itself = query_pos[:, None] == key_pos[None, :]
        return (window[None] & key_valid[:, None, :]) | itself[None]

    def _layer(
        self,
        layer: nn.Module,
        x: torch.Tensor,
        blocked: torch.Tensor,
        key_cache: torch.Tensor | None,
        conv_cache: torch.Tensor,
        *,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Conformer layer (macaron FFN, attention, convolution, FFN, norm) on ``(B, T, D)``.

        The convolution sees the ``conv_cache`` frames before each frame and the rest of its
        ``kernel - 1`` frames after it: causal with a ``kernel - 1`` cache, centred with ``(kernel - 1) / 2``.

        Args:
            layer: A ``torchaudio`` ``ConformerLayer`` (its sub-modules are used as they are).
            x: Layer input ``(B, T, D)``.
            blocked: ``(B * heads, T, K + T)`` attention mask, True where attention is not allowed.
            key_cache: Attention inputs of the ``K`` previous frames ``(B, K, D)``, or ``None`` (``K = 0``).
            conv_cache: Convolution inputs of the ``C`` previous frames ``(B, D, C)``, ``C < kernel``.
            valid: ``(B, T)`` bool, False at padding, which is zeroed before a convolution that looks
                ahead (a causal one never sees later padding).

        Returns:
            The output ``(B, T, D)``, the attention inputs ``(B, K + T, D)`` and the
            convolution inputs ``(B, D, kernel - 1 + T)`` seen by this call.
        """
        x = x + 0.5 * layer.ffn1(x)
        q = layer.self_attn_layer_norm(x)
        keys = q if key_cache is None else torch.cat([key_cache, q], dim=1)  # (B, K + T, D)
        attn, _ = layer.self_attn(
            q.transpose(0, 1), keys.transpose(0, 1), keys.transpose(0, 1), attn_mask=blocked, need_weights=False
        )
        x = x + layer.self_attn_dropout(attn.transpose(0, 1))
        conv = layer.conv_module
        pointwise_in, glu, depthwise, norm, activation, pointwise_out, dropout = conv.sequential
        y = glu(pointwise_in(conv.layer_norm(x).transpose(1, 2)))  # (B, D, T)
        if valid is not None:
            y = y.masked_fill(~valid[:, None, :], 0.0)
        y = torch.cat([conv_cache, y], dim=2)  # (B, D, C + T)
        ahead = self.config.kernel_size - 1 - conv_cache.shape[2]
        padded = F.pad(y, (0, ahead)) if ahead else y  # (B, D, kernel - 1 + T)
        z = F.conv1d(padded, depthwise.weight, depthwise.bias, groups=depthwise.groups)  # (B, D, T)
        x = x + dropout(pointwise_out(activation(norm(z)))).transpose(1, 2)
        x = x + 0.5 * layer.ffn2(x)
        return layer.final_layer_norm(x), keys, y

    def forward(self, input: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: A002
        """Encodes whole utterances (``torchaudio``'s ``RNNT`` passes ``input=`` by keyword).

        Args:
            input: Features ``(B, T, input_dim)``; frames at ``t >= lengths[b]`` are padding.
            lengths: Valid feature frames per row ``(B,)``.

        Returns:
            Encodings ``(B, T', hidden_size)`` with ``T' = ceil(T / time_reduction)`` and their
            valid lengths ``ceil(lengths / time_reduction)``; padding frames never change valid ones.
        """
        x, out_lengths = self._frontend(input, lengths)
        b, t, _ = x.shape
        pos = torch.arange(t, device=x.device)
        allowed = self._allowed(pos, pos, _lengths_mask(out_lengths, t))
        blocked = (~allowed).repeat_interleave(self.config.num_heads, dim=0)  # (B * heads, T', T')
        conv_cache = x.new_zeros(b, self.config.hidden_size, self.config.kernel_size - 1)
        for layer in self.causal_layers:
            x, _, _ = self._layer(layer, x, blocked, None, conv_cache)
        return self.output_norm(x), out_lengths

    def second_pass(self, encodings: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-encodes whole utterances' first-pass encodings with full context (the cascade).

        Args:
            encodings: First-pass output ``(B, T', hidden_size)`` (:meth:`forward` or the chunks of
                :meth:`infer`, concatenated).
            lengths: Valid frames per row ``(B,)``.

        Returns:
            Second-pass encodings ``(B, T', hidden_size)`` and ``lengths``; every valid frame sees
            every valid frame of its row, and padding never changes valid frames.

        Raises:
            ConfigError: If the model has no second pass (``cascade_layers = 0``).
        """
        if self.cascade_norm is None:
            raise ConfigError("this model has no second-pass encoder (cascade_layers = 0); train one with a cascade")
        b, t, _ = encodings.shape
        valid = _lengths_mask(lengths, t)  # (B, T')
        itself = torch.eye(t, dtype=torch.bool, device=encodings.device)
        blocked = (~(valid[:, None, :] | itself[None])).repeat_interleave(self.config.num_heads, dim=0)
        conv_cache = encodings.new_zeros(b, self.config.hidden_size, (self.config.kernel_size - 1) // 2)
        x = encodings
        for layer in self.cascade_layers:
            x, _, _ = self._layer(layer, x, blocked, None, conv_cache, valid=valid)
        return self.cascade_norm(x), lengths

    def init_state(self, batch_size: int, *, device: torch.device | None = None) -> State:
        """The state before the first chunk: an empty attention cache and zero convolution inputs.

        Layout: one ``[keys (B, K, D), key_valid (B, K), conv (B, D, kernel - 1)]`` per layer.
        """
        device = device if device is not None else self.input_linear.weight.device
        dtype = self.input_linear.weight.dtype
        k, d = self.left_frames, self.config.hidden_size
        return [
            [
                torch.zeros(batch_size, k, d, device=device, dtype=dtype),
                torch.zeros(batch_size, k, device=device, dtype=torch.bool),
                torch.zeros(batch_size, d, self.config.kernel_size - 1, device=device, dtype=dtype),
            ]
            for _ in self.causal_layers
        ]

    def infer(
        self, features: torch.Tensor, lengths: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Encodes the next chunk(s) of streams.

        Args:
            features: Features ``(B, T, input_dim)``, ``T`` a multiple of ``config.chunk_size``; a
                stream's last call marks its end with ``lengths[b] < T`` (right padding).
            lengths: Valid feature frames per row ``(B,)``.
            state: The previous call's state, or ``None`` at the start of every stream.

        Returns:
            Encodings ``(B, T / time_reduction, hidden_size)``, their valid lengths and the new
            state; a row with ``lengths[b] == 0`` (a stream waiting for audio) keeps its state.
        """
        if features.dim() != 3 or features.shape[1] % self.config.chunk_size:
            raise ValueError(
                f"streaming input must be (B, T, F) with T a multiple of {self.config.chunk_size} frames "
                f"(pad the last chunk and pass its valid length), got {tuple(features.shape)}"
            )
        x, out_lengths = self._frontend(features, lengths)
        b, t, _ = x.shape
        state = self.init_state(b, device=x.device) if state is None else state
        k = self.left_frames
        key_pos = torch.arange(-k, t, device=x.device)
        key_valid = torch.cat([state[0][1], _lengths_mask(out_lengths, t)], dim=1)  # (B, K + T)
        allowed = self._allowed(key_pos, torch.arange(t, device=x.device), key_valid)
        blocked = (~allowed).repeat_interleave(self.config.num_heads, dim=0)  # (B * heads, T, K + T)
        idle = (out_lengths == 0)[:, None]  # rows without new frames keep their state
        new_state: State = []
        for layer, (keys, valid, conv) in zip(self.causal_layers, state, strict=True):
            x, seen_keys, seen_conv = self._layer(layer, x, blocked, keys if k else None, conv)
            new_keys = seen_keys[:, seen_keys.shape[1] - k :] if k else keys
            new_state.append(
                [
                    torch.where(idle[..., None], keys, new_keys),
                    torch.where(idle, valid, key_valid[:, key_valid.shape[1] - k :]),
                    torch.where(idle[..., None], conv, seen_conv[:, :, t:]),
                ]
            )
        return self.output_norm(x), out_lengths, new_state


class Predictor(nn.Module):
    """Prediction network: embedding, LSTM, projection and LayerNorm.

    Args:
        num_symbols: Vocabulary size including the blank (used as the start symbol).
        dim: Embedding and LSTM size.
        num_layers: LSTM layers.
        dropout: Dropout after the embedding.
    """

    def __init__(self, num_symbols: int, dim: int, num_layers: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_symbols, dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(dim, dim, num_layers=num_layers, batch_first=True)
        self.output = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        input: torch.Tensor,  # noqa: A002  (torchaudio's RNNT passes input= by keyword)
        lengths: torch.Tensor,
        state: State | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Runs the predictor over symbol sequences.

        Args:
            input: Symbols ``(B, U)``.
            lengths: Valid symbols per row ``(B,)`` (returned unchanged).
            state: ``[[h (B, H), c (B, H)] per LSTM layer]`` from a previous call, or ``None``.

        Returns:
            Outputs ``(B, U, H)``, ``lengths`` and the state after the last position of each row's
            full ``U`` (callers that need a per-row state use ``U = 1``).
        """
        x = self.dropout(self.embedding(input))  # (B, U, H)
        hidden = None
        if state is not None:
            hidden = (
                torch.stack([s[0] for s in state]).contiguous(),  # (layers, B, H)
                torch.stack([s[1] for s in state]).contiguous(),
            )
        y, (h, c) = self.lstm(x, hidden)
        return self.norm(self.output(y)), lengths, [[h[i], c[i]] for i in range(h.shape[0])]


class Joiner(nn.Module):
    """Joint network: projects encoder and predictor outputs, adds them (broadcast), tanh, output layer.

    Args:
        encoder_dim: Encoder output size.
        predictor_dim: Predictor output size.
        joiner_dim: Joint hidden size.
        num_symbols: Output symbols including the blank.
    """

    def __init__(self, encoder_dim: int, predictor_dim: int, joiner_dim: int, num_symbols: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.predictor_proj = nn.Linear(predictor_dim, joiner_dim)
        self.output = nn.Linear(joiner_dim, num_symbols)

    def forward(
        self,
        source_encodings: torch.Tensor,
        source_lengths: torch.Tensor,
        target_encodings: torch.Tensor,
        target_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Joins every encoder frame with every predictor position.

        Args:
            source_encodings: ``(B, T, encoder_dim)``; ``B`` may be 1 against ``B'`` predictor rows (broadcast).
            source_lengths: ``(B,)``, returned unchanged.
            target_encodings: ``(B', U, predictor_dim)``.
            target_lengths: ``(B',)``, returned unchanged.

        Returns:
            Logits ``(max(B, B'), T, U, num_symbols)`` and the two length tensors.
        """
        joint = self.encoder_proj(source_encodings)[:, :, None] + self.predictor_proj(target_encodings)[:, None]
        return self.output(torch.tanh(joint)), source_lengths, target_lengths  # (B, T, U, V)


class ConformerTransducer(torchaudio.models.RNNT):
    """A ``torchaudio.models.RNNT`` with a chunk-causal Conformer encoder; build it with :func:`conformer_transducer`.

    ``config`` (with ``model_type`` and ``hidden_size``) lets ``AdaptedModel`` find its host preset.
    """

    def __init__(self, config: ConformerTransducerConfig) -> None:
        super().__init__(
            ChunkedConformerEncoder(config),
            Predictor(config.num_symbols, config.predictor_dim, config.predictor_layers, config.dropout),
            Joiner(config.hidden_size, config.predictor_dim, config.joiner_dim, config.num_symbols),
        )
        self.config = config
        # Predicts pieces (and the blank) from encoder frames; only the auxiliary CTC loss reads it.
        self.ctc_output = nn.Linear(config.hidden_size, config.num_symbols) if config.ctc_weight > 0 else None

    @property
    def blank(self) -> int:
        """Index of the blank symbol."""
        return self.config.blank

    def init_state(self, batch_size: int) -> State:
        """The encoder's streaming state before the first chunk (see :meth:`ChunkedConformerEncoder.init_state`)."""
        return self.transcriber.init_state(batch_size)

    def infer(
        self, features: torch.Tensor, lengths: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Streaming encoding: ``(chunk, lengths, state) -> (encodings, lengths, state)``.

        See :meth:`ChunkedConformerEncoder.infer`.
        """
        return self.transcriber.infer(features, lengths, state)

    @property
    def cascaded(self) -> bool:
        """Whether the model has a second-pass encoder."""
        return self.config.cascade_layers > 0

    def second_pass(self, encodings: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The second-pass encoder over first-pass encodings (see :meth:`ChunkedConformerEncoder.second_pass`)."""
        return self.transcriber.second_pass(encodings, lengths)

    def encode(
        self, features: torch.Tensor, lengths: torch.Tensor, *, first_pass: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-utterance encodings to decode: the second pass's where the model has one.

        Args:
            features: Features ``(B, T, input_dim)``.
            lengths: Valid feature frames per row ``(B,)``.
            first_pass: Return the streaming encoder's output even if the model is cascaded.

        Returns:
            Encodings ``(B, T', hidden_size)`` and their valid lengths.
        """
        encodings, out_lengths = self.transcriber(features, lengths)
        if first_pass or not self.cascaded:
            return encodings, out_lengths
        return self.second_pass(encodings, out_lengths)


def stack_states(states: list[State]) -> State:
    """Batches the states of several streams (each of batch size ``b_i``) into one, in order."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    return [
        [torch.cat([s[i][j] for s in states], dim=0) for j in range(len(states[0][i]))] for i in range(len(states[0]))
    ]


def unstack_states(state: State) -> list[State]:
    """Splits a batched state into one state of batch size 1 per stream (inverse of :func:`stack_states`)."""
    batch = state[0][0].shape[0]
    return [[[t[b : b + 1] for t in layer] for layer in state] for b in range(batch)]


def conformer_transducer(
    *,
    input_dim: int,
    num_symbols: int,
    hidden_size: int = 144,
    num_layers: int = 6,
    num_heads: int = 4,
    ffn_dim: int = 576,
    kernel_size: int = 15,
    time_reduction: int = 4,
    chunk_frames: int = 4,
    left_chunks: int = 4,
    predictor_dim: int = 256,
    predictor_layers: int = 1,
    joiner_dim: int = 256,
    dropout: float = 0.1,
    ctc_weight: float = 0.0,
    cascade_layers: int = 0,
    cascade_weight: float = 0.5,
) -> ConformerTransducer:
    """Builds a streaming Conformer transducer (see :class:`ConformerTransducerConfig` for the arguments).

    Raises:
        ConfigError: On invalid sizes.
    """
    return ConformerTransducer(
        ConformerTransducerConfig(
            input_dim=input_dim,
            num_symbols=num_symbols,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            kernel_size=kernel_size,
            time_reduction=time_reduction,
            chunk_frames=chunk_frames,
            left_chunks=left_chunks,
            predictor_dim=predictor_dim,
            predictor_layers=predictor_layers,
            joiner_dim=joiner_dim,
            dropout=dropout,
            ctc_weight=ctc_weight,
            cascade_layers=cascade_layers,
            cascade_weight=cascade_weight,
        )
    )


def conformer_transducer_small(
    *, input_dim: int = 80, num_symbols: int = 257, ctc_weight: float = 0.0
) -> ConformerTransducer:
    """3.8M parameters: 6 layers of 144, 160 ms chunks, 640 ms of attention left context."""
    return conformer_transducer(input_dim=input_dim, num_symbols=num_symbols, ctc_weight=ctc_weight)


def conformer_transducer_tiny(
    *, input_dim: int = 80, num_symbols: int = 65, ctc_weight: float = 0.0
) -> ConformerTransducer:
    """0.2M parameters, for tests and smoke runs: 2 layers of 64, 80 ms chunks, 160 ms of left context."""
    return conformer_transducer(
        input_dim=input_dim,
        num_symbols=num_symbols,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        ffn_dim=128,
        kernel_size=7,
        chunk_frames=2,
        left_chunks=2,
        predictor_dim=64,
        joiner_dim=64,
        dropout=0.1,
        ctc_weight=ctc_weight,
    )
