"""Where does fine-tuning on a tail language gain? Train only some parts of the base, one language at a time.

Usage:
    python asr/partial_tuning.py --model runs/asr/base/model --data runs/asr/corpus/features \
        --train predictor,joiner --out runs/asr-parts/pj                    # the prediction and joint networks
    python asr/partial_tuning.py ... --train transcriber,ctc_output --out runs/asr-parts/encoder
    python asr/partial_tuning.py ... --adapters encoder --out runs/asr-parts/lda            # the recipe's LDA
    python asr/partial_tuning.py ... --adapters predictor --out runs/asr-parts/lm           # a predictor bottleneck
    python asr/partial_tuning.py ... --adapters encoder,predictor --out runs/asr-parts/both

Each language (``--lang``, default the four tail languages) starts from the base and trains on its
labelled audio with the single-language settings of full fine-tuning (``--train``: lr 5e-4) or of
``asr train-lda`` (``--adapters``: lr 2e-3): 300 steps of 8, bf16, length-grouped batches, the
checkpoint best on that language's valid loss kept; then its test set is decoded (greedy, whole
utterance). ``--adapters predictor`` puts a residual bottleneck (8 units) on the prediction
network's output projection and trains the joiner's output bias: the language's token sequence
statistics, the part of the transducer that the encoder adapters cannot reach. This probe led to
the library's prediction-network site (``BottleneckConfig(outputs=("predictor",))``, ``asr train-lda
--predictor-adapter``); the script keeps its own 8-unit bottleneck and the joiner bias, so the table
in ``RESULTS.md`` reproduces. Writes
``OUT/results.json`` and prints the mean test WER.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

from polyglot_adapters import AdaptedModel
from polyglot_adapters.asr.recipe import SpeechData, language_adapter_config, recipe_config
from polyglot_adapters.asr.training import evaluate, load_transducer, train_transducer
from polyglot_adapters.io import atomic_write_json
from polyglot_adapters.machine import machine_info


class ResidualBottleneck(nn.Module):
    """``base(x) + up(relu(down(base(x))))`` with ``up`` zero-initialised (the identity when new)."""

    def __init__(self, base: nn.Module, dim: int, units: int) -> None:
        super().__init__()
        self.base = base
        self.down = nn.Linear(dim, units)
        self.up = nn.Linear(units, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, U, dim)`` predictor states; returns the same shape."""
        h = self.base(x)
        return h + self.up(torch.relu(self.down(h)))


def tune(model_dir: Path, data: SpeechData, language: str, args: argparse.Namespace, out: Path) -> dict:
    """Trains the chosen parts for one language; returns trainable counts and the test error rates."""
    model, tokenizer, _ = load_transducer(model_dir)
    model.requires_grad_(False).to(args.device)
    total = sum(p.numel() for p in model.parameters())
    am = AdaptedModel(model)
    parts = [p for p in args.train.split(",") if p]
    unknown = set(parts) - {name for name, _ in model.named_children()}
    if unknown:
        raise SystemExit(f"error: --train names no part of the model: {sorted(unknown)}")
    for name, parameter in model.named_parameters():
        if name.split(".")[0] in parts:
            parameter.requires_grad_(True)
    adapters = [a for a in args.adapters.split(",") if a]
    if "encoder" in adapters:
        am.add_adapter(language, language_adapter_config())
        am.set_active(language)
        am.train_adapters(language)
    if "predictor" in adapters:
        dim = model.predictor.output.out_features
        # New layers train; the wrapped projection stays frozen.
        model.predictor.output = ResidualBottleneck(model.predictor.output, dim, 8).to(args.device)
        model.joiner.output.bias.requires_grad_(True)
    trainable = sum(p.numel() for p in am.parameters() if p.requires_grad)
    config = recipe_config(
        lr=5e-4 if parts else 2e-3, batch_size=8, best_metric="valid_loss", steps=args.steps, precision="bf16"
    )
    best: dict[str, dict] = {}
    train_transducer(
        am,
        data.select("train_tail", language),
        data.select("valid", language),
        tokenizer,
        config,
        out_dir=out / language,
        save_fn=lambda m, _: best.update(state=copy.deepcopy(m.state_dict())),
        progress=False,
    )
    am.load_state_dict(best["state"])
    test = evaluate(am.eval(), data.select("test", language), tokenizer)
    return {"trainable": trainable, "fraction": trainable / total, "test": test}


def main(argv: list[str] | None = None) -> int:
    """Runs every language; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Feature directory written by `asr data`.")
    parser.add_argument("--lang", default="sw,om,tn,af")
    parser.add_argument(
        "--train", default="", help="Top-level parts to fine-tune: transcriber, predictor, joiner, ..."
    )
    parser.add_argument("--adapters", default="", help="encoder and/or predictor.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if bool(args.train) == bool(args.adapters):
        parser.error("give --train or --adapters (one of them)")
    if not {a for a in args.adapters.split(",") if a} <= {"encoder", "predictor"}:
        parser.error(f"--adapters takes encoder and/or predictor, got {args.adapters!r}")
    data = SpeechData.load(args.data)
    results = {}
    for language in [c for c in args.lang.split(",") if c]:
        results[language] = tune(args.model, data, language, args, args.out)
        r = results[language]
        print(f"{language}: {r['trainable']:,} trainable ({100 * r['fraction']:.2f}%), test {r['test']}", flush=True)
    mean = sum(r["test"]["wer"] for r in results.values()) / len(results)
    print(f"mean test WER {100 * mean:.2f}")
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_info(), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
