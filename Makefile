# DeepSynth developer commands. `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: on Linux x86-64 PyPI serves a CUDA build, and on a CPU-only machine
# with a local wheel index (like ours) pip takes the CPU build. DeepSpeed compiles against the
# torch already installed, hence --no-build-isolation for the project install.
TORCH := torch==2.13.0

.PHONY: setup setup-vllm browser demo test test-slow test-gpu gpu-check benchmarks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)" "setuptools>=68" wheel
	$(BIN)/pip install --quiet --no-build-isolation -e ".[dev]"
	touch $@

# CUDA machines only: vLLM for the summarizer's engine: vllm (and its gpu tests and benchmark).
setup-vllm: setup
	$(BIN)/pip install --quiet --no-build-isolation -e ".[dev,vllm]"

# The console's browser tests (tests/console) drive the system's Chromium, never a browser Playwright downloads.
# As root with apt it is installed here (once; a no-op when present); otherwise those tests skip, saying how.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "make: no chromium and not root with apt-get: the browser tests will be skipped" \
	    "(install it with 'sudo apt-get install -y chromium')"; fi; }

demo: setup
	$(BIN)/python -m ray_jobs.demo

test: setup browser
	$(BIN)/python -m pytest

test-slow: setup browser
	$(BIN)/python -m pytest -m slow

test-gpu: setup
	$(BIN)/python -m pytest -m gpu

# On a machine with one CUDA GPU: the gpu tests and the GPU benchmarks in at most 8 minutes, figures in gpu-check.json
# (after `make setup-vllm`, the vLLM engine's tests and its benchmark against HF too).
gpu-check: setup
	$(BIN)/python -m benchmarks.gpu_check --out gpu-check.json

benchmarks: setup
	$(BIN)/python -m benchmarks.train_overhead
	$(BIN)/python -m benchmarks.train_memory
	$(BIN)/python -m benchmarks.train_memory --model full-width --steps 2 --batch-size 1
	$(BIN)/python -m benchmarks.input_pipeline
	$(BIN)/python -m benchmarks.serve_load
	$(BIN)/python -m benchmarks.generation_guard

clean:
	rm -rf $(VENV) .deepsynth
