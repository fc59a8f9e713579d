# embedtag: `make demo` and `make test` are all a fresh machine needs (each creates .venv through `make venv`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first and pinned: on these machines this is the CPU wheel on disk; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Real assets beside the checkout (weights and audio are never copied into the repo).
SHARED ?= $(abspath ../shared)
ifneq ($(wildcard $(SHARED)/models),)
export EMBEDTAG_WEIGHTS_DIR ?= $(SHARED)/models
endif
DATA ?=
MODEL ?= efficientat-mn04
OUT ?= demo_out

.PHONY: venv demo test test-deps bench gpu-wheels clean help

help:
	@echo "make demo [DATA=dir] [MODEL=efficientat-mn04]   extract real audio end to end (creates .venv)"
	@echo "make test                              run the test suite (creates .venv)"
	@echo "make bench                             regenerate benchmarks/results and benchmarks/README.md"
	@echo "make gpu-wheels                        wheels the GPU check needs on a machine without a registry (.whl/)"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The report test opens report.html in headless Chromium: install Debian's package when it is missing and
# apt-get is usable (root); otherwise that one test skips on a user's machine (and fails under CI=true).
test-deps:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (apt-get) for the report test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium not found; the report's browser test will skip"; fi

test: venv test-deps
	$(BIN)/python -m pytest -q

demo: venv
	@$(BIN)/python -m embedtag.demo --data "$(DATA)" --model "$(MODEL)" --out "$(OUT)" --shared "$(SHARED)"

bench: venv
	$(BIN)/python -m benchmarks.run_all

# The GPU machines lent to sessions reach no registry: their image has CUDA torch but no audio I/O (see the script).
gpu-wheels: venv
	bash benchmarks/gpu_wheels.sh

clean:
	rm -rf $(OUT) .pytest_cache
