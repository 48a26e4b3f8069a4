# humanvision: the README's commands. `make demo` and `make test` do all the set-up they need.
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo
# CPU-only runs: one BLAS thread per process keeps 2-process DeepSpeed runs from oversubscribing cores.
export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED ?= 0
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup test lint demo bench gpu-check clean

setup:
	@PYTHON=$(PYTHON) TORCH="$(TORCH)" VENV=$(VENV) bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q --durations=15

demo: setup
	$(VENV)/bin/hv demo --out $(OUT)

# gpu_check.py needs a GPU: `make gpu-check` runs it. timing.py is the scripts' shared helper, not a benchmark.
# pretraining_value.py trains 7+ models (sized for 45 minutes on 2 cores): run it on its own (README, "Working on humanvision").
bench: setup
	@for script in $(filter-out benchmarks/gpu_check.py benchmarks/timing.py benchmarks/pretraining_value.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$script"; $(PY) $$script || exit 1; done

# The one-GPU acceptance check (issue #12), under 8 minutes on one GPU: MAE pretraining of sapiens_0.3b and
# sapiens_1b at 1024 px in bf16 (images/s, MFU, peak memory, SDPA kernel), one fine-tuning step per task, and the
# shard loader against the GPU. Writes runs/gpu-check/report.json and prints a table; exits 2 without a GPU.
# It needs a CUDA build of torch: PyPI's Linux wheel of $(TORCH) is one; a .venv made with a CPU build keeps it
# (the stamp does not change): rebuild it with `rm -rf .venv && make setup`, or pick a build with
# `make setup TORCH=...`. More flags: make gpu-check GPU_CHECK_ARGS='--peak-tflops 989 --out runs/x'.
gpu-check: setup
	DS_ACCELERATOR=cuda $(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .venv-ls .venv-moto .pytest_cache .ruff_cache runs
