"""Trains language adapters for many languages, one after another or spread over torchrun ranks.

Usage:
    python kg/train_language_adapters.py --out runs/language-adapters          # the 10 languages of kg/RESULTS.md
    python kg/train_language_adapters.py --langs sw,am,yo --out runs/la -- --steps 400 --precision bf16
    torchrun --nproc_per_node 2 kg/train_language_adapters.py --out runs/la    # rank r: languages r, r+2, ...

Each language is one run of ``polyglot-adapters train language-adapter --lang L --out OUT/L``
(the recipe kg/train_language_adapter.py) in a child process, with the options after ``--``;
its output is shown prefixed with the language and kept in OUT/L.log. A language that fails
(e.g. an unknown code) does not stop the others. Rerunning resumes unfinished languages from
their checkpoints and re-reports finished ones.

When every rank is done, rank 0 writes OUT/summary.json (the reports' key figures, the machine)
and OUT/summary.md (the per-language table kg/RESULTS.md shows) and prints the table. The exit
status is 1 if any language failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from polyglot_adapters.io import atomic_write_bytes, atomic_write_json
from polyglot_adapters.machine import machine_info

# Eight low-resource languages (Latin and Ethiopic scripts), English and Hindi (Devanagari).
LANGUAGES = "sw,am,yo,zu,ha,so,ig,rw,en,hi"
LOW_RESOURCE = {"sw", "am", "yo", "zu", "ha", "so", "ig", "rw", "xh", "om", "ti", "ln", "wo", "tn"}
# torchrun's variables: a child that sees them would join this driver's process group.
_TORCHRUN = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT")


def run_language(lang: str, out: Path, options: list[str]) -> int:
    """Trains one language in a child process; returns its exit status."""
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN and not k.startswith(("TORCHELASTIC_", "ROLE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "polyglot_adapters.cli.main", "train", "language-adapter"]
    command += ["--lang", lang, "--out", str(out / lang), *options]
    with (out / f"{lang}.log").open("w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            print(f"[{lang}] {line}", end="", flush=True)
        return proc.wait()


def summary_row(lang: str, rank: int, status: int, out: Path) -> dict[str, Any]:
    """A language's key figures from its report (``None`` where the run failed)."""
    row: dict[str, Any] = {"language": lang, "rank": rank, "exit_status": status, "low_resource": lang in LOW_RESOURCE}
    report_path = out / lang / "report.json"
    if status != 0 or not report_path.is_file():
        return row
    report = json.loads(report_path.read_text())
    run = report["train"]
    row.update(
        name=report["language"]["name"],
        code=report["language"]["code"],
        train_tokens=report["data"]["train_tokens"],
        parameters=report["parameters"],
        percent_of_base_non_embedding=report["percent_of_base_non_embedding"],
        steps=run["steps"],
        best_step=run["best_step"],
        tokens_per_s=run["tokens_per_s"],
        threads=run["threads"],
        before=report["before"],
        after=report["after"],
    )
    return row


def render(rows: list[dict[str, Any]]) -> str:
    """The per-language table (markdown)."""
    lines = [
        "| language | code | low-resource | train tokens | adapter (% of base non-emb.) | best step | "
        "valid loss before → after | test loss before → after | test top-1 before → after | train tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "after" not in row:
            lines.append(f"| {row['language']} | failed (exit {row['exit_status']}) | | | | | | | | |")
            continue
        b, a = row["before"], row["after"]
        rate = f"{row['tokens_per_s']:,.0f}" if row["tokens_per_s"] else "resumed"
        lines.append(
            f"| {row['name']} | {row['language']} ({row['code']}) | {'yes' if row['low_resource'] else 'no'} | "
            f"{row['train_tokens']:,} | {row['parameters']:,} ({row['percent_of_base_non_embedding']:.2f}%) | "
            f"{row['best_step']}/{row['steps']} | {b['valid_loss']:.2f} → {a['valid_loss']:.2f} | "
            f"{b['test_loss']:.2f} → **{a['test_loss']:.2f}** | "
            f"{100 * b['test_accuracy']:.1f}% → {100 * a['test_accuracy']:.1f}% | {rate} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    """Trains this rank's languages, gathers every rank's exit statuses, and (rank 0) writes the summary."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], usage="%(prog)s [--langs L,L] --out DIR [-- OPTIONS]"
    )
    parser.add_argument("--langs", default=LANGUAGES, help=f"comma-separated UDHR codes (default {LANGUAGES})")
    parser.add_argument("--out", type=Path, required=True, help="OUT/<lang>/ per language, OUT/summary.{json,md}")
    parser.add_argument("options", nargs="*", help="after --: options of `polyglot-adapters train language-adapter`")
    args = parser.parse_args()
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    args.out.mkdir(parents=True, exist_ok=True)

    mine = {lang: run_language(lang, args.out, args.options) for lang in langs[rank::world]}
    statuses = [mine]
    if world > 1:
        from torch import distributed as dist

        # Ranks finish at different times; a day's timeout covers long runs of many languages.
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=1))
        statuses = [{} for _ in range(world)]
        dist.all_gather_object(statuses, mine)
        dist.destroy_process_group()
    if rank != 0:
        return 0
    status = {lang: code for part in statuses for lang, code in part.items()}
    rows = [summary_row(lang, i % world, status[lang], args.out) for i, lang in enumerate(langs)]
    failed = [row["language"] for row in rows if "after" not in row]
    doc = {"languages": rows, "failed": failed, "options": args.options, "ranks": world, "machine": machine_info()}
    atomic_write_json(args.out / "summary.json", doc)
    table = render(rows)
    atomic_write_bytes(args.out / "summary.md", table.encode())
    print(table, end="")
    if failed:
        print(f"failed: {', '.join(failed)} (see {args.out}/<lang>.log)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
