#!/usr/bin/env bash
# The GPU check of benchmarks/gpu_check.py: < 8 minutes on one GPU, writes benchmarks/results/gpu_check.json
# (extract end-to-end vs model-only clips/s per PyTorch backbone, fp16 autocast vs fp32, batch sizes, decoding
# workers; fine-tune steps/s AMP vs fp32; peak GPU memory). Extra arguments go to the script (e.g. --smoke, --out).
# On a lent GPU machine (no registry there): run benchmarks/gpu_wheels.sh here first and carry .whl/; its wheels
# are installed into a folder of their own on PYTHONPATH, beside the image's own torch (WHEEL_DIR, GPU_SITE_DIR
# move them).
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_python.sh
WHEELS="${WHEEL_DIR:-.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE="${GPU_SITE_DIR:-${TMPDIR:-/tmp}/embedtag-gpu-site}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# seconds here rather than a wasted lease: what every measurement needs must import (PANNs' packages only skip PANNs)
"$PY" - <<'PY'
import importlib, sys
need = ["torch", "numpy", "soundfile", "soxr", "pyarrow", "safetensors", "embedtag.embeddings.pipeline"]
missing = []
for name in need:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report every one, then stop
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
try:
    from embedtag.embeddings.backbones.panns import import_panns_models
    import_panns_models()
except Exception as exc:  # noqa: BLE001
    print(f"note: PANNs will be skipped: its network does not import ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("gpu_check: cannot import " + "; ".join(missing)
             + ". On a machine without a package registry, run benchmarks/gpu_wheels.sh where pip works and carry .whl/")
import torch
print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "NO GPU: CPU run")
PY
# the script stops starting measurements after --budget-s (default 420 s); the timeout is the hard stop
exec timeout 480 "$PY" -m benchmarks.gpu_check "$@"
