#!/usr/bin/env bash
# Wheels for the GPU check that the lent GPU machines' image lacks, downloaded here into .whl/ (git-ignored).
# That image has Python 3.12 with CUDA PyTorch, numpy, scipy, scikit-learn, pyarrow, safetensors, numba, rich,
# ... but no audio I/O, and it reaches no package registry; benchmarks/gpu_check.sh installs what is in .whl/
# there, so the device call carries it:
#   bash benchmarks/gpu_wheels.sh                  # here, once (~2.3 MB)
#   device run, carry [".whl"]: bash benchmarks/gpu_check.sh --out "$OUT/gpu_check.json"
# GPU_PYTHON_VERSION picks another interpreter version (e.g. this machine's, to try the wheels on a venv that
# holds only the image's packages); WHEEL_DIR another folder.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/_python.sh
PYVER="${GPU_PYTHON_VERSION:-3.12}"
DEST="${WHEEL_DIR:-.whl}"
# The versions the test suite runs here. soundfile (+ cffi, pycparser) and soxr: decoding, i.e. every backbone;
# panns-inference, torchlibrosa, librosa and what librosa imports that the image lacks: PANNs only.
WHEELS=(soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0
        panns-inference==0.1.1 torchlibrosa==0.1.0 librosa==0.11.0 audioread==3.1.0 decorator==5.3.2
        pooch==1.9.0 platformdirs==4.14.9)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two of a package stop the install there
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DEST" "${WHEELS[@]}"
ls "$DEST"/*.whl | wc -l | xargs echo "wheels in $DEST:"
