# Everything runs from a virtual environment at .venv/ in the repo root.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint typecheck check bench-quick clean

$(BIN)/dualpool: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found; set PY=/path/to/python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(BIN)/dualpool

setup: $(BIN)/dualpool

demo: setup
	$(BIN)/dualpool demo

# pytest exits 5 when it collects no tests: not a failure of the build.
test: setup
	$(BIN)/python -m pytest || [ $$? -eq 5 ]

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: setup
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
