# gtpe — developer entry points. Quickstart: `make demo`, then `make test`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

# Offline machines: use the staged mirror beside the repository when GTPE_MIRROR is unset.
ifeq ($(origin GTPE_MIRROR), undefined)
  ifneq ($(wildcard ../shared/data/README.md),)
    export GTPE_MIRROR := $(abspath ../shared/data)
  endif
endif

# Runs from the checkout keep their data in its datasets/ folder (a library user elsewhere gets
# $XDG_CACHE_HOME/gtpe, default ~/.cache/gtpe) unless GTPE_DATA_ROOT is set.
ifeq ($(origin GTPE_DATA_ROOT), undefined)
  export GTPE_DATA_ROOT := $(abspath datasets)
endif

.PHONY: venv demo test lint bench gpu-check clean

venv: $(VENV)/.installed

# torch first (a pinned CPU wheel), then the project: pip never resolves a bare `torch`.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e '.[dev]'
	touch $@

# The run records its data root, so `gtpe evaluate runs/demo` finds the data outside make too.
demo: venv
	$(VENV)/bin/gtpe train configs/zinc/gps+rwse.yaml --threads 1 --set train.epochs=3 \
		--set dataset.root=$(GTPE_DATA_ROOT) --out runs/demo --overwrite
	@echo "next: $(VENV)/bin/gtpe evaluate runs/demo --split test"

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check gtpe tests benchmarks examples

bench: venv
	$(PY) benchmarks/pe_bench.py
	$(PY) benchmarks/train_bench.py
	$(PY) benchmarks/scatter_bench.py

# Every CUDA test + PE precompute and training speed vs PyG on the GPU, one table, < 8 min;
# without CUDA it says so and exits 0.
gpu-check: venv
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf runs .pytest_cache
