# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= reports/demo

.PHONY: install demo test test-fast test-slow lint format bench clean docs notebooks

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
	$(BIN)/lint-imports

# The default pass runs in float32 (JAX's default); the exactness tests then run
# again in float64, where their tolerances are round-off level. Test files are spread over
# TEST_WORKERS processes (pytest-xdist; `auto`: one per core), each file kept on one worker
# so that its module fixtures (NUTS references, the docs build) are made once; the workers
# share JAX's persistent compilation cache (see conftest.py).
TEST_WORKERS ?= auto
PYTEST := $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile

test: lint
	$(PYTEST) -m "not slow" ppl_bandits models validation tests
	JAX_ENABLE_X64=1 $(PYTEST) -m "exact and not slow" tests

test-slow: install
	$(PYTEST) -m slow tests

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	cd benchmarks && ../$(BIN)/python run_all.py

# Documentation: the Sphinx site (API from the docstrings, the notebooks as tutorials,
# the CLI reference), built strictly (every warning is an error) into $(DOCS_OUT).
# The `test` extra includes the `docs` extra (tests/test_docs.py builds the site), so
# `install` provides Sphinx, myst-nb, furo, sphinx-argparse and nbconvert.
DOCS_OUT ?= reports/docs

docs: install
	$(BIN)/sphinx-build -b html -W --keep-going -q docs $(DOCS_OUT)
	@echo "documentation: $(DOCS_OUT)/index.html"

# The teaching notebooks executed at NB_SIZE (teaching: minutes per notebook; small: the
# size `make test` runs) and rendered with their outputs to $(NB_OUT)/*.html.
NB_OUT ?= reports/notebooks
NB_SIZE ?= teaching

notebooks: install
	$(BIN)/python notebooks/render.py --size $(NB_SIZE) --out $(NB_OUT)

clean:
	rm -rf $(VENV) reports .pytest_cache
