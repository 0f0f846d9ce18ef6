# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv/ at the repo root and install s4d-ray with its pinned torch into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: demo test test-all test-fast lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch first and pinned: here it is the CPU wheel on disk, elsewhere the standard build
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[dev,viz]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/s4d demo --out $(DEMO_OUT)

# CI's suite: ruff, mypy, then every case not marked slow plus the one end-to-end job (marked e2e)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow or e2e"

test-all: $(STAMP)  # everything, the slow Ray-cluster, node-loss, autoscaling and training cases too
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: $(STAMP)  # no slow case at all, no ruff or mypy: the quick loop while editing
	$(BIN)/pytest -m "not slow"

lint: $(STAMP)  # ruff, then mypy over s4d_ray/ ([tool.mypy] in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_rectify

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache .mypy_cache
