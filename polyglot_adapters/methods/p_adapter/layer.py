"""The P-Adapter layer at the host's embedding site, and where it goes."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ...config import check
from ...errors import PolyglotAdaptersError
from ...interfaces import HostInterface
from ...sites import AdapterLayer, Site, unwrap
from ..targets import selected_blocks
from .config import PAdapterConfig

__all__ = ["PROMPT_INIT_STD", "PAdapterLayer", "PromptInputError", "PromptInputs", "build_layer", "find_sites"]

# Prompt tables (and the prefix generator's output bias) start as N(0, 1): the embedding output is
# LayerNorm-ed, so its entries have a standard deviation of about 1 (times the LayerNorm's gain).
PROMPT_INIT_STD = 1.0

_LSTM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class PromptInputError(PolyglotAdaptersError, ValueError):
    """Per-batch P-Adapter inputs (keep mask, attention mask, relation ids) are missing or malformed."""


@dataclasses.dataclass(frozen=True)
class PromptInputs:
    """The per-batch inputs a :class:`PAdapterLayer` reads, set by ``prompt_inputs``.

    Attributes:
        keep: ``(B, T)`` bool: positions the ``rewrite`` variant leaves unchanged, or ``None``.
        attention_mask: ``(B, T)`` bool: real (``True``) and padding positions, or ``None`` (all real).
        relations: ``(B,)`` int64 relation ids, or ``None``.
    """

    keep: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    relations: torch.Tensor | None = None


def _linear_params(module: nn.Module, name: str, in_features: int, out_features: int, zero: bool = False) -> None:
    """Registers ``{name}`` ``(out, in)`` and ``{name}_bias`` with ``nn.Linear``'s init (or zeros)."""
    weight = nn.Parameter(torch.empty(out_features, in_features))
    bias = nn.Parameter(torch.empty(out_features))
    if zero:
        nn.init.zeros_(weight)
        nn.init.zeros_(bias)
    else:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(bias, -bound, bound)
    module.register_parameter(name, weight)
    module.register_parameter(f"{name}_bias", bias)


class PAdapterLayer(AdapterLayer):
    """One P-Adapter on the embedding output ``y`` ``(B, T, H)``; see :class:`PAdapterConfig` for variants.

    Per-batch inputs live in :attr:`inputs` (set only inside ``prompt_inputs``). The ``moe`` variant
    keeps its last router logits ``(B, R)`` in :attr:`router_logits` for ``router_loss``.

    Args:
        config: The adapter's config.
        features: Hidden size ``H`` of the embedding output.
    """

    def __init__(self, config: PAdapterConfig, features: int) -> None:
        super().__init__()
        self.variant = config.variant
        self.features = features
        self.prompt_length = config.prompt_length
        self.num_relations = config.num_relations
        self.hidden = config.hidden
        self.inputs = PromptInputs()
        self.router_logits: torch.Tensor | None = None
        if self.variant in ("rewrite", "prefix"):
            # One bidirectional LSTM layer, stored flat (pa_ names) and run through torch.lstm;
            # nn.LSTM's init: U(-1/sqrt(hidden), 1/sqrt(hidden)).
            bound, gates = 1 / math.sqrt(self.hidden), 4 * self.hidden
            shapes = ((gates, features), (gates, self.hidden), (gates,), (gates,))
            for suffix in ("", "_reverse"):
                for name, shape in zip(_LSTM_NAMES, shapes, strict=True):
                    param = nn.Parameter(torch.empty(shape))
                    nn.init.uniform_(param, -bound, bound)
                    self.register_parameter(f"pa_lstm_{name}{suffix}", param)
            _linear_params(self, "pa_mlp_in", 2 * self.hidden, features)
        if self.variant == "rewrite":
            # Zero last layer: a fresh adapter adds exactly 0, so it is the identity.
            _linear_params(self, "pa_mlp_out", features, features, zero=True)
        elif self.variant == "prefix":
            _linear_params(self, "pa_mlp_out", features, self.prompt_length * features)
            nn.init.normal_(self.pa_mlp_out_bias, std=PROMPT_INIT_STD)
        else:
            self.pa_prompts = nn.Parameter(torch.empty(self.num_relations, self.prompt_length, features))
            nn.init.normal_(self.pa_prompts, std=PROMPT_INIT_STD)
        if self.variant == "moe":
            _linear_params(self, "pa_router", features, self.num_relations)

    def extra_repr(self) -> str:
        """Variant and sizes."""
        return (
            f"variant={self.variant}, features={self.features}, hidden={self.hidden}, "
            f"prompt_length={self.prompt_length}, num_relations={self.num_relations}"
        )

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, y: torch.Tensor, tap: torch.Tensor | None) -> torch.Tensor:
        """Adapts the embedding output.

        Args:
            x: Same as ``y`` (embedding sites pass their output twice).
            y: ``(B, T, H)`` embedding output; padding positions (``attention_mask`` 0) never
                influence real ones and come out unchanged.
            tap: Unused.

        Returns:
            ``(B, T, H)``.

        Raises:
            PromptInputError: If the per-batch inputs do not fit ``y`` or ``ptuning`` has no relations.
        """
        if y.dim() != 3 or y.shape[-1] != self.features:
            raise PromptInputError(f"p_adapter expects embeddings (B, T, {self.features}), got {tuple(y.shape)}")
        keep, mask, relations = self._batch_inputs(y)
        if self.variant == "rewrite":
            return self._rewrite(y, keep, mask)
        prompt = self._prompt_mask(y, mask)  # (B, T): real positions outside the slots
        if self.variant == "prefix":
            states, lengths, _ = self._bilstm(y, prompt)  # (B, L, 2h), zero beyond each row's length
            pooled = states.sum(1) / lengths.to(states.dtype)[:, None]  # (B, 2h)
            prompts = self._mlp(pooled).view(-1, self.prompt_length, self.features)  # (B, P, H)
        elif self.variant == "ptuning":
            if relations is None:
                raise PromptInputError(
                    "the ptuning p_adapter needs relation ids; run the model inside prompt_inputs(am, relations=...)"
                )
            prompts = self.pa_prompts[relations]  # (B, P, H)
        else:
            weights = prompt.to(y.dtype)[..., None]  # (B, T, 1)
            pooled = (y * weights).sum(1) / weights.sum(1)  # (B, H)
            logits = F.linear(pooled, self.pa_router, self.pa_router_bias)  # (B, R)
            self.router_logits = logits
            chosen = relations if self.training and relations is not None else logits.argmax(-1)
            prompts = self.pa_prompts[chosen]  # (B, P, H)
        return torch.cat([y[:, :1], prompts, y[:, 1 + self.prompt_length :]], dim=1)

    def _batch_inputs(self, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The current inputs on ``y``'s device, checked against the batch shape ``(B, T)``."""
        rows, steps = y.shape[:2]
        keep, mask, relations = self.inputs.keep, self.inputs.attention_mask, self.inputs.relations
        for name, value in (("keep", keep), ("attention_mask", mask)):
            if value is not None and tuple(value.shape) != (rows, steps):
                raise PromptInputError(
                    f"p_adapter {name} is {tuple(value.shape)} but the batch is ({rows}, {steps}); "
                    "pass masks shaped like input_ids"
                )
        if relations is not None and relations.shape[0] != rows:
            raise PromptInputError(
                f"p_adapter got {relations.shape[0]} relation ids for a batch of {rows} rows; pass one id per row"
            )
        return tuple(None if t is None else t.to(y.device) for t in (keep, mask, relations))

    def _prompt_mask(self, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, T)`` bool: real positions other than the slots ``1..P``; checks the slots are real."""
        rows, steps = y.shape[:2]
        if steps < 1 + self.prompt_length:
            raise PromptInputError(
                f"p_adapter {self.variant} has {self.prompt_length} slots at positions 1..{self.prompt_length} "
                f"but the sequence has {steps} positions; insert the placeholder tokens after the first token"
            )
        outside = torch.ones(steps, dtype=torch.bool, device=y.device)
        outside[1 : 1 + self.prompt_length] = False
        if mask is None:
            return outside.expand(rows, steps)
        if not bool(mask[:, : 1 + self.prompt_length].all()):
            raise PromptInputError(
                f"p_adapter slots 1..{self.prompt_length} fall on padding in some row; "
                "put the placeholder tokens right after the first token of every row"
            )
        return mask & outside

    def _rewrite(self, y: torch.Tensor, keep: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
        states, _, order = self._bilstm(y, mask)  # (B, L, 2h) over the real positions, in order
        delta = self._mlp(states)  # (B, L, H)
        if order is not None:
            index = order[:, : delta.shape[1], None].expand(-1, -1, delta.shape[-1])
            delta = delta.new_zeros(y.shape).scatter(1, index, delta)  # back to (B, T, H), in its dtype
        out = y + delta
        unchanged = keep
        if mask is not None:
            unchanged = ~mask if unchanged is None else unchanged | ~mask
        if unchanged is None:
            return out
        return torch.where(unchanged[..., None], y, out)

    def _mlp(self, h: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(F.linear(h, self.pa_mlp_in, self.pa_mlp_in_bias))
        return F.linear(hidden, self.pa_mlp_out, self.pa_mlp_out_bias)

    def _bilstm(
        self, y: torch.Tensor, select: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Runs the BiLSTM over the selected positions of each row only, in their order.

        Args:
            y: ``(B, T, H)``.
            select: ``(B, T)`` bool positions to read, or ``None`` for all.

        Returns:
            States ``(B, L, 2h)`` (row ``b``'s first ``lengths[b]`` entries are its selected positions,
            the rest zero), ``lengths`` ``(B,)`` and the gather order ``(B, T)`` that put the selected
            positions first (``None`` when ``select`` is ``None``).

        Raises:
            PromptInputError: If a row selects no position.
        """
        rows, steps = y.shape[:2]
        params = [getattr(self, f"pa_lstm_{n}{s}") for s in ("", "_reverse") for n in _LSTM_NAMES]
        hx = [y.new_zeros(2, rows, self.hidden)] * 2
        if select is None:
            states = torch.lstm(y, hx, params, True, 1, 0.0, self.training, True, True)[0]
            return states, torch.full((rows,), steps, device=y.device), None
        lengths = select.sum(1)
        cpu_lengths = lengths.cpu()
        if bool((cpu_lengths == 0).any()):
            raise PromptInputError("p_adapter got a row with no prompt tokens (all padding or slots)")
        longest = int(cpu_lengths.max())
        # A stable sort of "not selected" moves each row's selected positions to its front, in order.
        order = torch.argsort((~select).to(torch.uint8), dim=1, stable=True)  # (B, T)
        src = y.gather(1, order[:, :longest, None].expand(-1, -1, y.shape[-1]))  # (B, L, H)
        if int(cpu_lengths.min()) == longest:
            states = torch.lstm(src, hx, params, True, 1, 0.0, self.training, True, True)[0]
            return states, lengths, order
        packed = pack_padded_sequence(src, cpu_lengths, batch_first=True, enforce_sorted=False)
        data = torch.lstm(packed.data, packed.batch_sizes, hx, params, True, 1, 0.0, self.training, True)[0]
        states = pad_packed_sequence(
            PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
            batch_first=True,
            total_length=longest,
        )[0]
        return states, lengths, order


def _embedding_size(module: nn.Module) -> int | None:
    """Width of an embedding module's output: its last LayerNorm's, else its first ``nn.Embedding``'s."""
    norms = [m for m in module.modules() if isinstance(m, nn.LayerNorm)]
    if norms and norms[-1].normalized_shape:
        return int(norms[-1].normalized_shape[-1])
    embeddings = [m for m in module.modules() if isinstance(m, nn.Embedding)]
    return embeddings[0].embedding_dim if embeddings else None


def find_sites(config: PAdapterConfig, host: nn.Module, interface: HostInterface) -> list[Site]:
    """The host's embedding module: one site between the embedding layer and the first block."""
    check(
        interface.embeddings is not None,
        f"interface {interface.name!r} names no embedding module for a p_adapter",
    )
    root, _ = selected_blocks(host, interface, None)
    path = f"{root}{interface.embeddings}"
    try:
        module = unwrap(host.get_submodule(path))
    except AttributeError:
        check(False, f"the host has no embedding module at {path!r} for a p_adapter")
    hidden = _embedding_size(module)
    check(hidden is not None, f"cannot tell the output size of {path!r}: it has no LayerNorm or nn.Embedding")
    return [Site(path=path, key=interface.embeddings, role="embeddings", in_features=hidden, out_features=hidden)]


def build_layer(config: PAdapterConfig, site: Site, peer: AdapterLayer | None) -> AdapterLayer:
    """Builds the P-Adapter for the embedding site."""
    return PAdapterLayer(config, site.out_features)
