#!/usr/bin/env bash
# GPU checks, run on a machine with CUDA from the repository root, in one call of under 5 minutes:
#   1. the tests marked `gpu` (adapters, composition, save/load and merging on a CUDA device, the
#      compiled Triton kernels against their references);
#   2. kernels/bench_sparse_ft.py --device cuda: the sparse fine-tuning targets measured on the GPU
#      (scatter-add against the device copy bandwidth, apply/revert, forward vs PEFT SHiRA,
#      phase-2 step and memory vs composable-sft's dense-gradient masking).
# Each step runs under its own time limit; a table of steps, seconds and outcomes goes to
# $1/gpu_check.md (default directory /tmp/gpu_check), next to each step's log and the benchmark's
# markdown and JSON. The exit status is non-zero if any step failed or the whole took 5 minutes or more.
# Uses the machine's own torch/transformers/peft (no install step): the library is put on PYTHONPATH.
# TRITON_INTERPRET=0: tests/conftest.py turns the interpreter on unless it is set, and the
# interpreter would run the kernels on the host instead of compiling them for the GPU.
#
# Options (environment):
#   GPU_CHECK_FULL=1       also run the whole test suite on the machine afterwards (not in the 5 minutes)
#   GPU_CHECK_DEVICE=cpu   rehearsal without a GPU: the same steps on the CPU (gpu tests skip,
#                          the benchmark runs --quick, limits x4); checks the script itself, measures nothing
#   PYTHON=.venv/bin/python  the interpreter (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check}"
device="${GPU_CHECK_DEVICE:-cuda}"
case "$device" in cuda | cpu) ;; *) echo "GPU_CHECK_DEVICE must be cuda or cpu, got '$device'" >&2; exit 2 ;; esac
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if [ "$device" = cuda ]; then export TRITON_INTERPRET=0; fi
python=${PYTHON:-python3}
# The CPU rehearsal runs on whatever machine is at hand (often a busy one): four times the limits.
scale=1
if [ "$device" = cpu ]; then scale=4; fi
budget=$((300 * scale))
start=$SECONDS
failed=0
table="$out/gpu_check.md"
printf '| step | seconds | limit s | result |\n|---|---:|---:|---|\n' > "$table.tmp"

# step NAME LIMIT_S COMMAND...: runs COMMAND under a time limit, logs to $out/NAME.log, adds a table row.
step() {
    local name=$1 limit=$(($2 * scale)) t0=$SECONDS rc=0 result
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout --signal=TERM --kill-after=10 "$limit" "$@" > >(tee "$out/$name.log") 2>&1 || rc=$?
    case $rc in
        0) result=pass ;;
        124 | 137) result="TIMEOUT (exit $rc)" ;;
        *) result="FAIL (exit $rc)" ;;
    esac
    [ "$rc" -eq 0 ] || failed=1
    printf '| %s | %d | %d | %s |\n' "$name" $((SECONDS - t0)) "$limit" "$result" >> "$table.tmp"
}

step versions 30 "$python" -c "
import torch, transformers
import peft
print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)
if '$device' == 'cuda':
    import triton
    assert torch.cuda.is_available(), 'no CUDA device visible'
    print('triton', triton.__version__, torch.cuda.get_device_name(0))
"
step gpu_tests 110 "$python" -m pytest -q -p no:cacheprovider -p no:benchmark -m gpu tests
if [ "$device" = cuda ]; then
    bench=(--device cuda --parts scatter,apply,forward,step,memory --rounds 3)
else
    bench=(--device cpu --quick --parts apply,forward,step --rounds 1 --max-other-load 1.0)
fi
step bench_sparse_ft 160 "$python" kernels/bench_sparse_ft.py "${bench[@]}" --out "$out/bench_sparse_ft_$device.json"

total=$((SECONDS - start))
if [ "$total" -ge "$budget" ]; then
    failed=1
    printf '| total | %d | %d | OVER BUDGET |\n' "$total" "$budget" >> "$table.tmp"
else
    printf '| total | %d | %d | pass |\n' "$total" "$budget" >> "$table.tmp"
fi
{
    echo "# GPU check ($device), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    cat "$table.tmp"
    if [ -s "$out/bench_sparse_ft.log" ]; then
        echo
        echo "## bench_sparse_ft --device $device"
        echo
        # The report starts at the machine line; the per-round lines before it are progress.
        sed -n '/^Machine:/,$p' "$out/bench_sparse_ft.log"
    fi
} > "$table"
rm -f "$table.tmp"
cat "$table"

if [ "${GPU_CHECK_FULL:-0}" = 1 ]; then
    "$python" -m pytest -q -p no:cacheprovider -p no:benchmark -n 8 tests || failed=1
fi
exit "$failed"
