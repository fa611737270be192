# Two commands set up everything on a fresh machine with Python 3.11+:
#   make demo   - create .venv, install, rechunk a ~500 MB sample array
#   make test   - create .venv, install test extras, lint, type-check, run the suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv

.PHONY: demo test lint clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

$(VENV)/.installed-base: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e ".[test]"
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/rechunker-core demo --dir demo-data

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck.py

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache .hypothesis
