"""Tables from code runs' ``report.json`` files, and the labelling throughput benchmark."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from ..errors import ConfigError, CorruptArtifactError, MissingArtifactError
from .corpus import CodeCorpus
from .token_types import SourceError, label_source

__all__ = ["compare_runs", "compare_seeds", "labelling_throughput", "read_ranks", "read_report", "result_tables"]


def read_report(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads ``DIRECTORY/report.json``.

    Raises:
        MissingArtifactError: No readable report there.
    """
    path = Path(directory) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MissingArtifactError(
            f"{path}: no readable report ({type(err).__name__}); run the recipe first"
        ) from None


def read_ranks(directory: str | os.PathLike[str], split: str = "test") -> tuple[torch.Tensor, str]:
    """Each held-out query's rank from a code-search run (``DIRECTORY/ranks.safetensors``).

    Returns:
        ``((N,) int64 ranks, digest of the split's functions)``.

    Raises:
        MissingArtifactError: No ranks file (runs from before it was written, or not a search run).
        CorruptArtifactError: A damaged file, or one without the split.
    """
    from .search import RANKS_NAME

    path = Path(directory) / RANKS_NAME
    try:
        data = path.read_bytes()
    except OSError as err:
        raise MissingArtifactError(
            f"{path}: no per-query ranks ({type(err).__name__}); rerun the search setup to write them"
        ) from None
    try:
        tensors = st_load(data)
        metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")]).get("__metadata__") or {}
    except (SafetensorError, ValueError) as err:
        raise CorruptArtifactError(f"{path}: not a readable safetensors file ({err})") from None
    if split not in tensors or f"{split}_digest" not in metadata:
        raise CorruptArtifactError(f"{path}: no {split!r} ranks; it holds {sorted(tensors)}")
    return tensors[split], metadata[f"{split}_digest"]


def compare_runs(
    first: str | os.PathLike[str],
    second: str | os.PathLike[str],
    *,
    split: str = "test",
    replicates: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of the MRR difference between two code-search runs over the same queries.

    Queries are resampled with replacement; both runs' reciprocal ranks move together, so the
    interval reflects which queries each run gets right, not two independent noises.

    Args:
        first: A search run directory (``ranks.safetensors``).
        second: Another, over the same held-out functions.
        split: ``valid`` or ``test``.
        replicates: Bootstrap replicates.
        seed: Seed of the resampling.

    Returns:
        ``first_mrr``, ``second_mrr``, ``difference`` (second minus first), its 95% interval
        ``low``/``high``, ``second_better`` (share of replicates where the difference is above 0) and
        ``queries``.

    Raises:
        ConfigError: The runs ranked different held-out functions, or ``replicates`` < 1.
    """
    pooled = compare_seeds([(first, second)], split=split, replicates=replicates, seed=seed)
    return {
        key: pooled[key]
        for key in ("first_mrr", "second_mrr", "difference", "low", "high", "second_better", "queries")
    }


def compare_seeds(
    pairs: Sequence[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
    *,
    split: str = "test",
    replicates: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """The MRR difference between two setups, each trained with several seeds, over the same queries.

    Pair ``s`` is one seed of the first setup and one of the second. The difference is the mean over
    the pairs of each pair's MRR difference. Two intervals answer two questions: the paired bootstrap
    (queries resampled once and applied to every pair) says how much the choice of held-out queries
    moves it; the t interval over the pairs' differences (two or more pairs) says how much the
    training seed does, which on small data is often the larger.

    Args:
        pairs: ``(first run, second run)`` directories (``ranks.safetensors``), one pair per seed.
        split: ``valid`` or ``test``.
        replicates: Bootstrap replicates.
        seed: Seed of the resampling.

    Returns:
        ``pairs`` (each pair's runs, MRRs and difference), ``first_mrr`` and ``second_mrr`` (means over
        the pairs), ``difference`` (second minus first), its query-bootstrap 95% interval
        ``low``/``high`` with ``second_better`` (share of replicates above 0), ``seed_sd`` (standard
        deviation of the pairs' differences) and its 95% t interval ``seed_low``/``seed_high`` (both
        ``None`` for one pair), and ``queries``.

    Raises:
        ConfigError: No pairs, runs that ranked different held-out functions, or ``replicates`` < 1.
    """
    if replicates < 1:
        raise ConfigError(f"replicates must be >= 1, got {replicates}")
    if not pairs:
        raise ConfigError("no runs to compare: give at least one (first, second) pair")
    reference: tuple[Path, str, int] | None = None
    rows, diffs = [], []
    for first, second in pairs:
        reciprocal = []
        for run in (first, second):
            ranks, digest = read_ranks(run, split)
            if reference is None:
                reference = (Path(run), digest, len(ranks))
            elif (digest, len(ranks)) != reference[1:]:
                raise ConfigError(
                    f"{reference[0]} and {run} ranked different {split} functions (corpus, tokenizer or lengths "
                    "differ); compare runs of the same base and settings"
                )
            reciprocal.append(1.0 / ranks.double())  # (N,)
        ra, rb = reciprocal
        diffs.append(rb - ra)
        rows.append(
            {
                "first": str(first),
                "second": str(second),
                "first_mrr": float(ra.mean()),
                "second_mrr": float(rb.mean()),
                "difference": float((rb - ra).mean()),
            }
        )
    per_query = torch.stack(diffs).mean(0)  # (N,) mean over the pairs
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(per_query), (replicates, len(per_query)), generator=generator)  # (R, N)
    draws = per_query[pick].mean(1)  # (R,)
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    seed_sd = seed_low = seed_high = None
    if len(rows) > 1:
        import scipy.stats

        per_pair = torch.tensor([row["difference"] for row in rows], dtype=torch.float64)
        seed_sd = float(per_pair.std())
        half = float(scipy.stats.t.ppf(0.975, len(rows) - 1)) * seed_sd / len(rows) ** 0.5
        seed_low, seed_high = float(per_pair.mean()) - half, float(per_pair.mean()) + half
    return {
        "pairs": rows,
        "first_mrr": sum(row["first_mrr"] for row in rows) / len(rows),
        "second_mrr": sum(row["second_mrr"] for row in rows) / len(rows),
        "difference": float(per_query.mean()),
        "low": low,
        "high": high,
        "second_better": float((draws > 0).double().mean()),
        "seed_sd": seed_sd,
        "seed_low": seed_low,
        "seed_high": seed_high,
        "queries": len(per_query),
    }


def labelling_throughput(corpus: CodeCorpus, *, min_seconds: float = 5.0) -> dict[str, float]:
    """Source bytes labelled per second of one core's CPU time (``time.process_time``), over whole files.

    Labels the corpus's files in order, repeating from the start until ``min_seconds`` of CPU time
    have passed (one thread: labelling is pure Python and the ``ast`` parser).
    """
    total_bytes, files, started = 0, 0, time.process_time()
    while True:
        for file in corpus.files:
            try:
                label_source(file.text, name=file.path)
            except SourceError:
                continue
            total_bytes += len(file.text.encode("utf-8"))
            files += 1
            if time.process_time() - started >= min_seconds and files >= len(corpus.files):
                seconds = time.process_time() - started
                rate = total_bytes / seconds / 1e6
                return {"bytes": total_bytes, "files": files, "cpu_seconds": seconds, "mb_per_s": rate}
        if not corpus.files:
            return {"bytes": 0, "files": 0, "cpu_seconds": 0.0, "mb_per_s": 0.0}


def result_tables(runs: str | os.PathLike[str]) -> str:
    """Markdown tables of a code run tree: ``RUNS/base``, ``RUNS/ner``, ``RUNS/ner-head-only``, ``RUNS/search/*``.

    Missing parts are left out; nothing is invented.
    """
    root = Path(runs)
    lines: list[str] = []
    if (root / "base" / "report.json").is_file():
        base = read_report(root / "base")
        lines += [
            "| code base | parameters | steps | minutes (with evals) | valid MLM loss / top-1 before | after | test |",
            "|---|---|---|---|---|---|---|",
            f"| {base['model_type']} | {base['parameters']:,} | {base['steps']} | {base['seconds'] / 60:.1f} | "
            f"{base['before']['valid_loss']:.3f} / {100 * base['before']['valid_accuracy']:.1f}% | "
            f"{base['after']['valid_loss']:.3f} / {100 * base['after']['valid_accuracy']:.1f}% | "
            f"{base['after']['test_loss']:.3f} / {100 * base['after']['test_accuracy']:.1f}% |",
            "",
        ]
    ttc = [(n, root / n) for n in ("ner", "ner-head-only") if (root / n / "report.json").is_file()]
    if ttc:
        lines += [
            "| TTC | trainable | % of encoder | steps | valid acc | test acc | test macro-F1 | test tokens |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, path in ttc:
            r = read_report(path)
            trainable = r["adapter_parameters"] + r["head_parameters"]
            lines.append(
                f"| {'NER adapter + head' if r['adapter_name'] else 'head only'} | {trainable:,} | "
                f"{r['percent_of_encoder']:.2f}% | {r['train']['steps']} | {100 * r['valid']['accuracy']:.2f}% | "
                f"{100 * r['test']['accuracy']:.2f}% | {100 * r['test']['macro_f1']:.2f} | {r['test']['tokens']:,} |"
            )
        lines.append("")
        r = read_report(ttc[0][1])
        lines += ["| token type | test F1 | support |", "|---|---|---|"]
        lines += [f"| {k} | {100 * v['f1']:.1f} | {v['support']:,} |" for k, v in r["test"]["per_type"].items()]
        lines.append("")
    search = sorted((root / "search").glob("*/report.json")) if (root / "search").is_dir() else []
    if search:
        order = {"zero-shot": 0, "full": 1, "task": 2, "ner+task": 3, "gate": 4}
        reports = sorted((read_report(p.parent) for p in search), key=lambda r: order.get(r["setup"], 9))
        lines += [
            "| code search | trainable | % of full FT | steps | valid MRR | test MRR | test R@1 | test R@10 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in reports:
            steps = r["train_config"]["steps"] if r["train_config"] else 0
            lines.append(
                f"| {r['setup']} | {r['trainable_parameters']:,} | {r['percent_of_full']:.2f}% | {steps} | "
                f"{r['valid']['mrr']:.4f} | {r['test']['mrr']:.4f} | {100 * r['test']['recall@1']:.1f}% | "
                f"{100 * r['test']['recall@10']:.1f}% |"
            )
        lines.append(f"\nTest candidates: {reports[0]['test']['candidates']} functions.")
    return "\n".join(lines)
