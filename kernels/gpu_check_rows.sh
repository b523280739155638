#!/usr/bin/env bash
# GPU checks of the per-row adapter kernels (fused Route path), run from the repository root on a
# machine with CUDA; about 2-3 minutes on one H100. Uses the machine's own torch/transformers/peft
# (no install step): the library is put on PYTHONPATH. Results (markdown + JSON) go to $1
# (default /tmp/gpu_check_rows).
#   1. the `gpu` tests of tests/test_kernels_rows.py: compiled Triton kernels against the
#      references, the fused Route on CUDA against the CPU, a training step on CUDA;
#   2. kernels/bench_mixed_batch.py --device cuda: 64 rows x 32 tokens over 1/4/16/64 distinct
#      adapters, ours vs PEFT adapter_names vs one adapter, float32 and bfloat16.
# TRITON_INTERPRET=0: tests/conftest.py turns the interpreter on unless it is set, and the
# interpreter would run the kernels on the host instead of compiling them for the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/gpu_check_rows}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
python3 -c "import torch, transformers, peft, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider -p no:benchmark -m gpu tests/test_kernels_rows.py
# e5-small-shape: the default base's architecture with random weights (its source package is not needed).
python3 kernels/bench_mixed_batch.py --device cuda --hosts e5-small-shape,bert-base --rounds 5 --repeats 10 \
    --out "$out/bench_mixed_batch_cuda_fp32.json" | tee "$out/bench_mixed_batch_cuda_fp32.md"
python3 kernels/bench_mixed_batch.py --device cuda --dtype bfloat16 --hosts bert-base --rounds 5 --repeats 10 \
    --out "$out/bench_mixed_batch_cuda_bf16.json" | tee "$out/bench_mixed_batch_cuda_bf16.md"
