#!/usr/bin/env bash
# GPU checks, run on a machine with CUDA from the repository root: the tests marked `gpu`
# (adapters, composition, save/load and merging on a CUDA device), then the whole suite there.
# Uses the machine's own torch/transformers (no install step): the library is put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
python3 -m pytest -q -p no:cacheprovider -p no:benchmark -m gpu tests
python3 -m pytest -q -p no:cacheprovider -p no:benchmark -n 8 tests
