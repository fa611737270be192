"""The docstring examples of the benchmarks' measuring and reporting modules.

pytest's ``--doctest-modules`` covers only ``rechunker_core``: the benchmarks
import each other as top-level modules, so their folder goes on ``sys.path``
here, for these tests only.
"""

from __future__ import annotations

import doctest
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
MODULES = ("catalog", "measure", "report")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    for module in MODULES:  # imported fresh from the folder, not a stale copy
        monkeypatch.delitem(sys.modules, module, raising=False)
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    assert sum(len(t.examples) for t in tests) > 0, f"{name} has no examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} example(s) of benchmarks/{name}.py failed"
