"""The folder ``executors/`` as installed: the package ``rechunker_core.executors``.

PyPI's top-level ``executors`` is an unrelated project, and two copies of one
module would hold two registries and classes that fail ``isinstance`` checks,
so the folder must have exactly one name.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from rechunker_core import executors


def _modules() -> list[str]:
    found = pkgutil.iter_modules(executors.__path__, prefix=f"{executors.__name__}.")
    return [executors.__name__, *(module.name for module in found)]


# pytest's --doctest-modules would import the folder as a top-level
# ``executors`` (pyproject.toml), so the docstring examples run here.
EXAMPLES = [
    test
    for name in _modules()
    for test in doctest.DocTestFinder().find(importlib.import_module(name))
    if test.examples
]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda test: test.name)
def test_docstring_example(example: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)  # pytest's default flags
    report: list[str] = []
    runner.run(example, out=report.append)
    assert runner.failures == 0, "".join(report)


def test_examples_are_found() -> None:
    """Every module whose source holds an example has its examples collected."""
    with_examples = {
        name
        for name in _modules()
        if ">>>" in Path(importlib.import_module(name).__file__ or "").read_text()
    }
    collected = {
        name
        for name in _modules()
        if any(test.name == name or test.name.startswith(name + ".") for test in EXAMPLES)
    }
    assert collected >= with_examples


def test_nothing_imports_the_folder_by_its_own_name() -> None:
    assert [name for name in sys.modules if name.partition(".")[0] == "executors"] == []


def test_installed_under_rechunker_core_only(tmp_path: Path) -> None:
    """Outside the repository, ``import executors`` does not find this folder."""
    code = (
        "import importlib.util, pathlib, rechunker_core.executors.dask as dask\n"
        "spec = importlib.util.find_spec('executors')\n"
        "ours = pathlib.Path(dask.__file__).parent\n"
        "assert spec is None or pathlib.Path(spec.origin).parent != ours, spec\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_entry_points_are_the_builtin_executors() -> None:
    found = {entry.name: entry for entry in entry_points(group=executors.ENTRY_POINT_GROUP)}
    assert {name: found[name].value for name in executors.BUILTIN_EXECUTORS} == (
        executors.BUILTIN_EXECUTORS
    )
    for name, value in executors.BUILTIN_EXECUTORS.items():
        module, _, attribute = value.partition(":")
        assert found[name].load() is getattr(importlib.import_module(module), attribute)
