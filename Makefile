# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= reports/demo

.PHONY: install demo test test-fast test-slow lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/ppl-bandits demo --out $(OUT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The default pass runs in float32 (JAX's default); the exactness tests then run
# again in float64, where their tolerances are round-off level.
test: lint
	$(BIN)/pytest -m "not slow" ppl_bandits models validation tests
	JAX_ENABLE_X64=1 $(BIN)/pytest -m "exact and not slow" tests

test-slow: install
	$(BIN)/pytest -m slow tests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	cd benchmarks && ../$(BIN)/python run_all.py

clean:
	rm -rf $(VENV) reports .pytest_cache
