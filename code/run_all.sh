#!/usr/bin/env bash
# Usage:
#   bash code/run_all.sh RUNS [corpus options...]                     # accelerator sizes (the defaults below)
#   PRESET=small DEVICE=cpu PRECISION=fp32 BASE_LENGTH=128 BASE_BATCH=16 BASE_SECONDS=900 NER_SECONDS=420 \
#       HEAD_SECONDS=120 SEARCH_SECONDS=150 SEARCH_BATCH=32 CODE_LENGTH=128 bash code/run_all.sh runs/code-cpu
# The code/RESULTS.md pipeline: a CodeBERT-style base, the NER adapter, the head-only baseline, code search in
# five setups, then the tables. Each training run takes as many steps as fit in its time budget (timed trial).
set -euo pipefail
RUNS=${1:?usage: bash code/run_all.sh RUNS [corpus options]}
shift
PY=${PYTHON:-python}
COMMON=(--device "${DEVICE:-auto}" --precision "${PRECISION:-bf16}" "$@")
$PY code/pretrain_code_base.py --out "$RUNS/base" --preset "${PRESET:-medium}" --max-length "${BASE_LENGTH:-256}" \
    --batch-size "${BASE_BATCH:-64}" --lr 5e-4 --eval-windows "${EVAL_WINDOWS:-256}" --budget-seconds "${BASE_SECONDS:-150}" "${COMMON[@]}"
$PY code/train_ner_adapter.py --model "$RUNS/base/model" --out "$RUNS/ner" --batch-size "${TTC_BATCH:-32}" --lr 1e-3 \
    --max-length "${TTC_LENGTH:-256}" --eval-files "${EVAL_FILES:-60}" --budget-seconds "${NER_SECONDS:-50}" \
    "${COMMON[@]}"
$PY code/train_ner_adapter.py --model "$RUNS/base/model" --out "$RUNS/ner-head-only" --head-only \
    --batch-size "${TTC_BATCH:-32}" --lr 1e-3 --max-length "${TTC_LENGTH:-256}" --eval-files "${EVAL_FILES:-60}" \
    --budget-seconds "${HEAD_SECONDS:-20}" "${COMMON[@]}"
for setup in zero-shot task ner+task gate full; do
    lr=1e-3
    [ "$setup" = full ] && lr=1e-4
    $PY code/train_code_search.py --model "$RUNS/base/model" --out "$RUNS/search/$setup" --setup "$setup" \
        --ner-adapter "$RUNS/ner/adapter" --batch-size "${SEARCH_BATCH:-64}" --lr "$lr" \
        --code-length "${CODE_LENGTH:-256}" --budget-seconds "${SEARCH_SECONDS:-30}" "${COMMON[@]}"
done
$PY code/evaluate.py "$RUNS"
