# The two commands of the README: `make run` (the main job on the embedded default) and `make test`.
# Both set up .venv on first use (scripts/setup.sh: torch==2.13.0 first, pinned, then xdt with its test extra, then
# scripts/toolchain.sh: the C++ compiler, ninja and Python.h DeepSpeed builds its CPU op with, and the op built once).
VENV ?= .venv
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DS_ACCELERATOR ?= cpu
# the venv's tools last on PATH (pip's ninja, when there is no system one: DeepSpeed builds its C++ op with it), for
# runs, tests and the SLURM jobs they submit
export PATH := $(PATH):$(abspath $(VENV))/bin

.PHONY: setup run test test-fast bench
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/setup.sh scripts/toolchain.sh
	bash scripts/setup.sh $(VENV)

run: setup
	$(VENV)/bin/xdt run

test: setup
	$(VENV)/bin/python -m pytest -ra --durations=15

test-fast: setup
	$(VENV)/bin/python -m pytest -ra -m "not slow"

bench: setup
	$(VENV)/bin/python benchmarks/align_throughput.py
