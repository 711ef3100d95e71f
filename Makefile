# The two commands of the README: `make run` (the main job on the embedded default) and `make test`.
# Both set up .venv on first use (scripts/setup.sh: torch==2.13.0 first, pinned, then xdt with its test extra).
VENV ?= .venv
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DS_ACCELERATOR ?= cpu

.PHONY: setup run test test-fast bench
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)

run: setup
	$(VENV)/bin/xdt run

test: setup
	$(VENV)/bin/python -m pytest -ra --durations=15

test-fast: setup
	$(VENV)/bin/python -m pytest -ra -m "not slow"

bench: setup
	$(VENV)/bin/python benchmarks/align_throughput.py
