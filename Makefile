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

.PHONY: setup test lint demo bench clean

setup:
	@PYTHON=$(PYTHON) TORCH="$(TORCH)" VENV=$(VENV) bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q --durations=15

demo: setup
	$(VENV)/bin/hv demo --out $(OUT)

bench: setup
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .venv-ls .pytest_cache .ruff_cache runs
