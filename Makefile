# Everything runs from a virtual environment at .venv/ in the repo root.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint typecheck check bench-quick compile uncompile clean

$(BIN)/dualpool: pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found; set PY=/path/to/python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
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

# Optional: compile the hot modules with mypyc (ships with mypy; needs a C
# compiler). The extensions land next to the sources and shadow them, so the
# editable install uses them; `make uncompile` goes back to pure Python (and the
# tests stop if an extension is older than its source). Same summaries, bit for
# bit; ~4x faster simulation (docs/simulator.md, Speed), and routing in the
# gateway cheaper (docs/estimator.md, Speed). Frozen dataclasses that are pickled
# (SimOptions, SLO, StepTimeParams, EstimatorConfig) live in modules left out.
MYPYC_MODULES := dualpool/engine/scheduler.py dualpool/fleet.py dualpool/budget/calibrator.py \
	dualpool/budget/stats.py dualpool/simulator/simulation.py dualpool/simulator/balancer.py \
	dualpool/budget/features.py dualpool/budget/classes.py dualpool/budget/estimator.py \
	dualpool/policy/pools.py dualpool/router.py \
	dualpool/engine/request.py dualpool/engine/kv_cache.py dualpool/engine/timing.py \
	dualpool/simulator/summary.py dualpool/simulator/sketch.py dualpool/workload/_request.py \
	dualpool/extproc/_h2.py dualpool/extproc/_messages.py dualpool/extproc/_processor.py
compile: setup
	cd src && ../$(BIN)/mypyc $(MYPYC_MODULES)

uncompile:
	rm -rf src/build src/*__mypyc*.so $(addprefix src/,$(MYPYC_MODULES:.py=.cpython-*.so))

clean: uncompile
	rm -rf $(VENV) build *.egg-info src/*.egg-info
