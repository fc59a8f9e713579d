# Sourced by the benchmark shell scripts, from the repository root: PY is the interpreter they run, $PYTHON when
# set, else the project's .venv, else python3 (on a lent GPU machine, the image's own, which holds CUDA PyTorch).
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
