"""Host interfaces: where adapters go in each supported architecture, stated as data.

A :class:`HostInterface` names, relative to one transformer block, the linear layers that LoRA
can target and the input/output linear layers of each sub-layer (attention, feed-forward) that
bottleneck adapters use. No upstream ``forward`` code is copied: adapters wrap these modules.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from torch import nn

from .errors import InterfaceError

__all__ = ["PRESETS", "HostInterface", "Sublayer", "find_interface"]


@dataclasses.dataclass(frozen=True)
class Sublayer:
    """A residual sub-layer of a block, by the paths of two linear layers inside the block.

    Attributes:
        input: A linear layer whose input is the sub-layer's input (the residual stream).
        output: The sub-layer's last linear layer; adapters act on its output before the
            residual connection and normalisation.
        norm: In post-LN hosts (BERT), the LayerNorm applied to ``output``'s output plus the
            residual stream, which a Pfeiffer bottleneck reads; ``None`` where the sub-layer has
            none (pre-LN hosts such as the Conformer).
    """

    input: str
    output: str
    norm: str | None = None


@dataclasses.dataclass(frozen=True)
class HostInterface:
    r"""Where adapters attach in one host architecture.

    Attributes:
        name: Preset name.
        model_types: ``config.model_type`` values this preset serves.
        blocks: Regular expression matching a block's module path suffix, e.g. ``encoder.layer.\\d+``.
        linears: Short name (``q``, ``v``, ...) to a linear layer's path inside a block.
        sublayers: Sub-layer name (``attn``, ``ffn``) to its input and output linear layers.
        embeddings: Path suffix of the embedding module (for embedding-level adapters), if any.
        head: Path of the output head whose input gets the inverse embedding adapter, if any.
        decoder_input: Path of the head module whose output is the output embedding's input
            (``cls.predictions.transform``), where the MAD-X paper and AdapterHub put the inverse
            embedding adapter instead (``BottleneckConfig(inverse_at="decoder")``), if any.
        outputs: Name to the path, from the model root, of a linear layer outside the blocks
            whose output a series bottleneck can adapt (``BottleneckConfig(outputs=...)``): the
            transducer's prediction network, ``predictor``.
        batch_dim: Batch dimension of the activations seen inside blocks.
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    linears: Mapping[str, str]
    sublayers: Mapping[str, Sublayer]
    embeddings: str | None = None
    head: str | None = None
    decoder_input: str | None = None
    outputs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    batch_dim: int = 0

    def find_blocks(self, host: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
        """Finds the host's blocks in order.

        Returns:
            The path prefix shared by all blocks' parents (``"bert."`` or ``""``; the backbone
            root) and the ``(path, module)`` list of blocks.

        Raises:
            InterfaceError: If no module path matches ``blocks``.
        """
        pattern = re.compile(rf"(?P<root>(?:.*\.)?){self.blocks}")
        found = []
        for path, module in host.named_modules():
            match = pattern.fullmatch(path)
            if match:
                found.append((match.group("root"), path, module))
        if not found:
            raise InterfaceError(
                f"interface {self.name!r}: no module of the host matches the block pattern {self.blocks!r}"
            )
        roots = {root for root, _, _ in found}
        if len(roots) != 1:
            raise InterfaceError(f"interface {self.name!r}: blocks found under several roots {sorted(roots)}")
        return roots.pop(), [(path, module) for _, path, module in found]


_BERT_LIKE = dict(
    blocks=r"encoder\.layer\.\d+",
    linears={
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
    sublayers={
        "attn": Sublayer(
            input="attention.self.query", output="attention.output.dense", norm="attention.output.LayerNorm"
        ),
        "ffn": Sublayer(input="intermediate.dense", output="output.dense", norm="output.LayerNorm"),
    },
    embeddings="embeddings",
)

PRESETS: dict[str, HostInterface] = {
    "bert": HostInterface(
        name="bert",
        model_types=("bert",),
        head="cls.predictions",
        decoder_input="cls.predictions.transform",
        **_BERT_LIKE,
    ),
    "xlm-roberta": HostInterface(
        name="xlm-roberta",
        model_types=("xlm-roberta",),
        head="lm_head",
        decoder_input="lm_head.layer_norm",
        **_BERT_LIKE,
    ),
    # CodeBERT and other RoBERTa-family code encoders use this preset.
    "roberta": HostInterface(
        name="roberta", model_types=("roberta",), head="lm_head", decoder_input="lm_head.layer_norm", **_BERT_LIKE
    ),
    # polyglot_adapters.asr's streaming Conformer transducer: torchaudio Conformer layers, run batch first.
    # "ffn" is the block's last feed-forward module (ffn2), so the BERT-style presets (positions=("ffn",)) fit;
    # "ffn1" is the first (macaron) one. Attention projections are not called as modules and cannot be wrapped.
    # "predictor" is the prediction network's output projection (before its LayerNorm): the language's
    # token-sequence statistics, which adapters in the encoder blocks cannot reach.
    "conformer-transducer": HostInterface(
        name="conformer-transducer",
        model_types=("conformer_transducer",),
        blocks=r"conformer_layers\.\d+",
        linears={
            "ffn1_in": "ffn1.sequential.1",
            "ffn1_out": "ffn1.sequential.4",
            "ffn_in": "ffn2.sequential.1",
            "ffn_out": "ffn2.sequential.4",
        },
        sublayers={
            "ffn1": Sublayer(input="ffn1.sequential.1", output="ffn1.sequential.4"),
            "ffn": Sublayer(input="ffn2.sequential.1", output="ffn2.sequential.4"),
        },
        outputs={"predictor": "predictor.output"},
        batch_dim=0,
    ),
}


def find_interface(host: nn.Module, interface: HostInterface | str | None = None) -> HostInterface:
    """Resolves the interface for a host model.

    Args:
        host: The model to adapt.
        interface: A preset name, an explicit :class:`HostInterface` (the generic path for any
            architecture, e.g. a Conformer), or ``None`` to pick by ``host.config.model_type``.

    Raises:
        InterfaceError: If no preset matches.
    """
    if isinstance(interface, HostInterface):
        return interface
    if isinstance(interface, str):
        if interface not in PRESETS:
            raise InterfaceError(f"unknown interface preset {interface!r}; presets: {sorted(PRESETS)}")
        return PRESETS[interface]
    model_type = getattr(getattr(host, "config", None), "model_type", None)
    for preset in PRESETS.values():
        if model_type in preset.model_types:
            return preset
    raise InterfaceError(
        f"no interface preset for model_type={model_type!r} ({type(host).__name__}); "
        f"pass interface=HostInterface(...) or one of {sorted(PRESETS)}"
    )
