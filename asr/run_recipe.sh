#!/usr/bin/env bash
# The whole speech recipe, sized for a 2-core CPU (88 minutes there): corpus, base, tail-language adapters, baselines, evaluation.
#
# Usage:
#     asr/run_recipe.sh runs/asr                     # everything, on the CPU
#     asr/run_recipe.sh runs/asr cuda                 # the same on a GPU
#     PRESET=tiny BASE_STEPS=100 LDA_STEPS=20 FULL_STEPS=20 asr/run_recipe.sh runs/asr-smoke   # a quick smoke run
#
# Steps (each is skipped when its output exists, so a killed run continues where it stopped):
#   1. `asr data`: espeak-ng speaks UDHR phrases (3 renditions per head-language phrase, 2 per
#      labelled tail phrase, plus unlabelled tail audio) -> OUT/corpus, feature packs in OUT/corpus/features;
#   2. `asr train-base`: the multilingual base on every language's labelled audio (RNN-T + 0.3 CTC) -> OUT/base
#      (CASCADE=N adds N full-context second-pass layers: partial results stream, the final text is the second pass's);
#   3. `asr train-lda --lang sw,om,tn,af`: the tail languages' adapters in one routed run, base frozen (NOISY=1
#      adds a noisy-student round, PREDICTOR=1 a bottleneck on the prediction network's output too); each
#      language keeps its best checkpoint -> OUT/lda/bundle;
#   4. `asr train-lda --full --lang L` for each tail language: full fine-tuning, the adapters' baseline -> OUT/full/L;
#   5. `asr evaluate --bundle`: test WER/CER per language, base and base + adapter -> OUT/eval.json
#      (greedy search; BEAM=K beam search, also for the noisy-student teacher).
# Every training step batches utterances of similar duration and runs under bf16 autocast (PRECISION=fp32 to turn that off).
# Logs go to OUT/logs/. Environment: PRESET (tiny, cpu, small), BASE_STEPS, LDA_STEPS, FULL_STEPS, TAIL, THREADS, NOISY,
# PREDICTOR, PRECISION, CASCADE, BEAM.
set -euo pipefail
OUT=${1:?output directory}
DEVICE=${2:-cpu}
PRESET=${PRESET:-cpu}
BASE_STEPS=${BASE_STEPS:-5000}
LDA_STEPS=${LDA_STEPS:-300}
FULL_STEPS=${FULL_STEPS:-300}
TAIL=${TAIL:-sw om tn af}
PRECISION=${PRECISION:-bf16}
PA=${PA:-polyglot-adapters}
export OMP_NUM_THREADS=${THREADS:-2}
FEATURES="$OUT/corpus/features"
mkdir -p "$OUT/logs"
SECONDS=0
step() { echo "[$(date +%H:%M:%S) +${SECONDS}s] $*"; }

if [ ! -f "$FEATURES/test.safetensors" ]; then
    step "corpus"
    $PA asr data --out "$OUT/corpus" --head-renditions 3 --unlabelled > "$OUT/logs/data.log" 2>&1
fi
if [ ! -f "$OUT/base/model/model.json" ]; then
    step "base ($PRESET, $BASE_STEPS steps of 32)"
    $PA asr train-base --data "$FEATURES" --out "$OUT/base" --preset "$PRESET" --steps "$BASE_STEPS" \
        --batch-size 32 --lr 2e-3 --eval-every 250 --ctc-weight 0.3 --cascade-layers "${CASCADE:-0}" \
        --precision "$PRECISION" --device "$DEVICE" \
        > "$OUT/logs/base.log" 2>&1
fi
if [ ! -f "$OUT/lda/report.json" ]; then
    step "adapters for ${TAIL// /,} ($LDA_STEPS steps of 16${NOISY:+, then a noisy-student round})"
    $PA asr train-lda --model "$OUT/base/model" --data "$FEATURES" --lang "${TAIL// /,}" --out "$OUT/lda" \
        --steps "$LDA_STEPS" --batch-size 16 --lr 1e-2 --eval-every 50 \
        ${NOISY:+--noisy-student ${BEAM:+--teacher-beam-width "$BEAM"}} \
        ${PREDICTOR:+--predictor-adapter} \
        --precision "$PRECISION" --device "$DEVICE" > "$OUT/logs/lda.log" 2>&1
fi
for lang in $TAIL; do
    if [ ! -f "$OUT/full/$lang/report.json" ]; then
        step "full fine-tuning on $lang ($FULL_STEPS steps of 8)"
        $PA asr train-lda --model "$OUT/base/model" --data "$FEATURES" --lang "$lang" --out "$OUT/full/$lang" --full \
            --steps "$FULL_STEPS" --batch-size 8 --lr 5e-4 --eval-every 50 --precision "$PRECISION" --device "$DEVICE" \
            > "$OUT/logs/full-$lang.log" 2>&1
    fi
done
step "evaluation"
$PA asr evaluate --model "$OUT/base/model" --data "$FEATURES" --bundle "$OUT/lda/bundle" --out "$OUT/eval.json" \
    ${BEAM:+--beam-width "$BEAM"} --device "$DEVICE" | tee "$OUT/logs/eval.log"
step "done"
