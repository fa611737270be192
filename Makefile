# Two commands set up everything on a fresh machine with Python 3.11+:
#   make demo   - create .venv, install, rechunk a ~500 MB sample array
#   make test   - create .venv, install test extras, lint, type-check, build the docs, run the suite
#   make docs   - build the documentation site into site/ (mkdocs --strict)
#   make clean  - remove .venv, demo-data and caches
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: demo test lint docs clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

$(VENV)/.installed-base: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e .
	touch $@

# The test extra includes the docs and bench extras: make test builds the docs.
$(VENV)/.installed-test: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[test]"
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/rechunker-core demo --dir demo-data

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck.py

# --strict: a broken link or a stale API reference fails the build.
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: lint docs
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-data site .pytest_cache .mypy_cache .hypothesis
