#!/usr/bin/env bash
# Rounds/second on a GPU machine for one IMP chain (float32 and bf16 autocast) and for several
# chains trained at once with benchmarks/multi.py (fit_many). Finishes in well under 5 minutes on one GPU.
#   bash benchmarks/gpu_check.sh                 # synthetic demo-size data
#   bash benchmarks/gpu_check.sh --study outputs/demo --domain products
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'; print(torch.cuda.get_device_name(0))"
timeout 290 "$PY" benchmarks/gpu_check.py "$@"
