"""Builds AdapterHub (``adapters`` 1.3.0) checkpoints and their reference logits; run by the adapters venv's Python.

Usage:
    .venv-adapters/bin/python tests/adapterhub_fixture.py OUT_DIR

Writes into OUT_DIR: ``base/`` (a tiny BertForMaskedLM, safetensors), one adapter directory per
configuration (``save_adapter(..., use_safetensors=True)``), and ``logits.safetensors`` with the
input ids and the logits of the base and of each adapter (and of AdapterHub's own linear average
of ``houlsby`` and ``houlsby2``, and of its stacks ``Stack("pfeiffer", "pfeiffer2")`` and
``Stack("madx", "pfeiffer2")``). Its imports come from that venv (transformers 4.57, adapters 1.3).
"""

from __future__ import annotations

import sys
from pathlib import Path

import adapters
import torch
from adapters import BnConfig, DoubleSeqBnConfig, DoubleSeqBnInvConfig, ParBnConfig, SeqBnConfig, SeqBnInvConfig, Stack
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

# conftest.TINY's sizes; this script runs in the adapters venv, which cannot import conftest (our transformers).
TINY = dict(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.2,
)
CONFIGS = {
    "houlsby": DoubleSeqBnConfig(reduction_factor=4),
    "houlsby2": DoubleSeqBnConfig(reduction_factor=4),
    "parallel": ParBnConfig(reduction_factor=4),
    "custom": BnConfig(
        mh_adapter=True,
        output_adapter=False,
        reduction_factor=2,
        non_linearity="gelu",
        scaling=0.5,
        leave_out=[0],
    ),
    "pfeiffer": SeqBnConfig(reduction_factor=4),
    "pfeiffer2": SeqBnConfig(reduction_factor=2, non_linearity="gelu"),
    "pfeiffer_both": BnConfig(
        mh_adapter=True,
        output_adapter=True,
        original_ln_before=True,
        original_ln_after=True,
        residual_before_ln=True,
        reduction_factor=2,
        non_linearity="tanh",
        scaling=2.0,
    ),
    "pfeiffer_ln_residual": BnConfig(
        mh_adapter=False,
        output_adapter=True,
        original_ln_before=True,
        original_ln_after=True,
        residual_before_ln=False,
        reduction_factor=4,
        non_linearity="relu",
    ),
    "madx": SeqBnInvConfig(reduction_factor=4),
    "houlsby_inv": DoubleSeqBnInvConfig(reduction_factor=4, non_linearity="gelu", inv_adapter_reduction_factor=4),
}


@torch.no_grad()
def logits(model: BertForMaskedLM, ids: torch.Tensor, invertible: str | None) -> torch.Tensor:
    """The model's logits; with an invertible adapter, its inverse runs before the output embedding.

    adapters 1.3.0 applies an invertible adapter after the embeddings of a static-head
    ``BertForMaskedLM`` but its inverse only in flex heads (``heads/language_modeling.py``: after
    the head's transform, before the output embedding), so the MAD-X computation is spelled out
    here with AdapterHub's own coupling module run with ``rev=True``.
    """
    if invertible is None:
        return model(input_ids=ids).logits
    hidden = model.bert(input_ids=ids).last_hidden_state
    head = model.cls.predictions
    return head.decoder(model.bert.invertible_adapters[invertible](head.transform(hidden), rev=True))


def main(out: Path) -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY)).eval()
    model.save_pretrained(out / "base")
    adapters.init(model)
    ids = torch.randint(3, TINY["vocab_size"], (4, 9), generator=torch.Generator().manual_seed(1))
    results = {"ids": ids}
    with torch.no_grad():
        results["base"] = model(input_ids=ids).logits
    gen = torch.Generator().manual_seed(2)
    for name, config in CONFIGS.items():
        model.add_adapter(name, config=config)
        with torch.no_grad():  # fresh adapters are (near) identities: give them real weights
            for pname, param in model.named_parameters():
                if f".{name}." in pname:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        model.set_active_adapters(name)
        model.eval()
        results[name] = logits(model, ids, name if getattr(config, "inv_adapter", None) else None)
        model.save_adapter(str(out / name), name, with_head=False, use_safetensors=True)
    # MAD-X stacks a task adapter on a language adapter, both seq_bn.
    model.set_active_adapters(Stack("pfeiffer", "pfeiffer2"))
    with torch.no_grad():
        results["stack"] = model(input_ids=ids).logits
    # AdapterHub runs the invertible adapter of a stack's first adapter only.
    model.set_active_adapters(Stack("madx", "pfeiffer2"))
    results["madx_stack"] = logits(model, ids, "madx")
    model.average_adapter("avg", ["houlsby", "houlsby2"], weights=[0.3, 0.7], combine_strategy="linear")
    model.set_active_adapters("avg")
    with torch.no_grad():
        results["avg"] = model(input_ids=ids).logits
    save_file({k: v.contiguous() for k, v in results.items()}, str(out / "logits.safetensors"))
    print(f"adapters {adapters.__version__}: wrote {sorted(CONFIGS)} to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
