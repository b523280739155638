#!/usr/bin/env bash
# Trains and evaluates the speech recipe from a feature directory written by `polyglot-adapters asr data`.
#
# Usage:
#     polyglot-adapters asr data --out runs/asr/corpus                  # espeak-ng + UDHR -> runs/asr/corpus/features
#     asr/run_recipe.sh runs/asr/corpus/features runs/asr cuda           # or cpu (slow)
#     PRESET=tiny BASE_STEPS=200 LDA_STEPS=50 asr/run_recipe.sh FEATURES OUT cpu   # a quick smoke run
#     NOISY=1 asr/run_recipe.sh ...    # LDAs get a noisy-student round (needs `asr data --unlabelled`)
#
# Steps: the multilingual base (every language's labelled audio), then for each tail language a
# language-dependent adapter (base frozen) and, as its baseline, full fine-tuning on the same
# audio (run side by side), then the adapters' best checkpoints go into one bundle file, then
# per-language test WER/CER of the base and of the base + the language's adapter from the bundle.
# Writes OUT/base/{model,report.json}, OUT/lda/LANG/{adapter,report.json}, OUT/full/LANG/report.json,
# OUT/bundle/{bundle.json,bundle.safetensors}, OUT/eval.json and a log per step in OUT/logs/.
set -euo pipefail
FEATURES=${1:?feature directory}
OUT=${2:?output directory}
DEVICE=${3:-cpu}
PRESET=${PRESET:-cpu}
BASE_STEPS=${BASE_STEPS:-3000}
LDA_STEPS=${LDA_STEPS:-300}
EVAL_EVERY=${EVAL_EVERY:-250}
TAIL=${TAIL:-sw om tn af}
PA=${PA:-polyglot-adapters}
mkdir -p "$OUT/logs"

$PA asr train-base --data "$FEATURES" --out "$OUT/base" --preset "$PRESET" --steps "$BASE_STEPS" \
    --batch-size 32 --lr 2e-3 --eval-every "$EVAL_EVERY" --device "$DEVICE" > "$OUT/logs/base.log" 2>&1
tail -n 12 "$OUT/logs/base.log"

for lang in $TAIL; do
    $PA asr train-lda --model "$OUT/base/model" --data "$FEATURES" --lang "$lang" --out "$OUT/lda/$lang" \
        --steps "$LDA_STEPS" --batch-size 16 --lr 3e-3 --eval-every 50 --device "$DEVICE" ${NOISY:+--noisy-student} \
        > "$OUT/logs/lda-$lang.log" 2>&1 &
    $PA asr train-lda --model "$OUT/base/model" --data "$FEATURES" --lang "$lang" --out "$OUT/full/$lang" --full \
        --steps "$LDA_STEPS" --batch-size 16 --lr 5e-4 --eval-every 50 --device "$DEVICE" \
        > "$OUT/logs/full-$lang.log" 2>&1 &
done
wait

ldas=()
for lang in $TAIL; do ldas+=(--lda "$lang=$OUT/lda/$lang"); done
$PA asr bundle "${ldas[@]}" --out "$OUT/bundle"
$PA asr evaluate --model "$OUT/base/model" --data "$FEATURES" --bundle "$OUT/bundle" --out "$OUT/eval.json" \
    --device "$DEVICE" | tee "$OUT/logs/eval.log"
