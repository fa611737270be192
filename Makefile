# Two commands set up everything on a fresh machine with Python 3.11+:
#   make demo   - create .venv, install, rechunk a ~500 MB sample array
#   make test   - create .venv, install test extras, lint, type-check, build the docs, run the suite;
#                 then run the suite again on Python 3.13 with the newest releases
#                 of every dependency (.venv-newest), when a 3.13 interpreter exists
#   make docs   - build the documentation site into site/ (mkdocs --strict)
#   make clean  - remove the venvs, demo-data and caches
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# --compile-bytecode: uv does not write .pyc files by default, and where
# PYTHONDONTWRITEBYTECODE is set (CI images often set it) Python never does:
# every process (each CLI run, dask worker, Beam worker and the Prefect server
# the tests start) would compile zarr, numpy, dask and Prefect from source,
# about 3 s per process here.
UV := $(BIN)/uv
UV_INSTALL := $(UV) pip install --quiet --compile-bytecode

# The newest-releases run: Python 3.13 from pyenv (its `python3.13` shim refuses
# to run without a pyenv version selected, so the interpreter is found by path).
# Override with `make test PYTHON_NEWEST=/path/to/python3.13`.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo $(HOME)/.pyenv)
PYTHON_NEWEST ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.13*/bin/python3.13)))
VENV_NEWEST := .venv-newest
BIN_NEWEST := $(VENV_NEWEST)/bin

.PHONY: demo demo-newest test suite suite-newest lint docs clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

$(VENV)/.installed-base: pyproject.toml | $(UV)
	$(UV_INSTALL) --python $(BIN)/python -e .
	touch $@

# The test extra includes the docs and bench extras: make test builds the docs.
$(VENV)/.installed-test: pyproject.toml | $(UV)
	$(UV_INSTALL) --python $(BIN)/python -e ".[test]"
	touch $@ $(VENV)/.installed-base

# --upgrade: the newest release of everything that installs together, not
# whatever an earlier run left in the venv.
$(VENV_NEWEST)/.installed-test: pyproject.toml | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON_NEWEST) $(VENV_NEWEST)
	$(UV_INSTALL) --upgrade --python $(BIN_NEWEST)/python -e ".[test]"
	touch $@

demo: $(VENV)/.installed-base
	$(BIN)/rechunker-core demo --dir demo-data

demo-newest: $(VENV_NEWEST)/.installed-test
	$(BIN_NEWEST)/rechunker-core demo --dir demo-data

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck.py

# --strict: a broken link or a stale API reference fails the build.
docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The two suites run one after the other: each uses both cores (thread pools,
# dask workers, subprocesses), and run at once on 2 cores they took longer
# (926 s and 979 s) than one after the other (255 s + 336 s).
test: lint docs
	@$(MAKE) --no-print-directory suite
	@$(MAKE) --no-print-directory suite-newest

suite: $(VENV)/.installed-test
	$(BIN)/python -m pytest

suite-newest:
ifeq ($(PYTHON_NEWEST),)
	@echo "suite-newest: skipped: no Python 3.13 found (looked in $(PYENV_ROOT)/versions;" \
	      "set PYTHON_NEWEST=/path/to/python3.13)"
else
	@$(MAKE) --no-print-directory $(VENV_NEWEST)/.installed-test
	$(BIN_NEWEST)/python -m pytest -o cache_dir=.pytest_cache-newest
endif

clean:
	rm -rf $(VENV) $(VENV_NEWEST) demo-data site .pytest_cache .pytest_cache-newest .mypy_cache \
	      .hypothesis
