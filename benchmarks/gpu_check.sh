#!/usr/bin/env bash
# The GPU check of benchmarks/gpu_check.py: < 8 minutes on one GPU, writes benchmarks/results/gpu_check.json
# (extract end-to-end vs model-only clips/s per PyTorch backbone, fp16 autocast vs fp32, batch sizes, decoding
# workers; fine-tune steps/s AMP vs fp32; peak GPU memory). Extra arguments go to the script (e.g. --smoke).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'NO GPU: CPU run')"
# the script stops starting measurements after --budget-s (default 420 s); the timeout is the hard stop
exec timeout 480 env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m benchmarks.gpu_check "$@"
