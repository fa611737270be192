"""Every executor and mode the shared suite runs.

Each :class:`Mode` builds an executor for one test. Modes whose tasks run in
other processes set ``in_process=False``: the suite then gives them stores on
disk, and checks that they refuse in-memory stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from rechunker_core.executors.python import PythonExecutor
from rechunker_core.executors.threads import ThreadsExecutor


@dataclass(frozen=True)
class Mode:
    """One way of running a plan.

    ``make(request)`` returns the executor; it may use ``request.getfixturevalue``
    to reach session fixtures (a dask cluster, a Prefect harness).
    """

    name: str
    make: Callable[[pytest.FixtureRequest], Any]
    in_process: bool = True


MODES: list[Mode] = [
    Mode("python", lambda request: PythonExecutor()),
    Mode("threads", lambda request: ThreadsExecutor(max_workers=2)),
]


# Engines: each ``make`` imports its executor lazily and reaches its session
# fixture (tests/executors/conftest.py) through the request.


def _dask(**compute_kwargs: Any) -> Callable[[pytest.FixtureRequest], Any]:
    def make(request: pytest.FixtureRequest) -> Any:
        from rechunker_core.executors.dask import DaskExecutor

        return DaskExecutor(**compute_kwargs)

    return make


def _dask_distributed(request: pytest.FixtureRequest) -> Any:
    from rechunker_core.executors.dask import DaskExecutor

    return DaskExecutor(scheduler=request.getfixturevalue("dask_client"))


def _prefect(request: pytest.FixtureRequest) -> Any:
    from rechunker_core.executors.prefect import PrefectExecutor

    request.getfixturevalue("prefect_harness")
    return PrefectExecutor()


def _beam(mode: str) -> Callable[[pytest.FixtureRequest], Any]:
    def make(request: pytest.FixtureRequest) -> Any:
        from rechunker_core.executors.beam import BeamExecutor

        return BeamExecutor({"direct_running_mode": mode, "direct_num_workers": 2})

    return make


def _parts(request: pytest.FixtureRequest) -> Any:
    from tests.executors.test_parts import PartsExecutor

    return PartsExecutor(request.getfixturevalue("tmp_path"), parts=2)


MODES += [
    Mode("dask-sync", _dask(scheduler="sync")),
    Mode("dask-threads", _dask(scheduler="threads", num_workers=2)),
    Mode("dask-processes", _dask(scheduler="processes", num_workers=2), in_process=False),
    Mode("dask-distributed", _dask_distributed, in_process=False),
    Mode("prefect", _prefect),
    # Beam runs unpickled copies of the plan even in one process, so a
    # MemoryStore's writes would be lost: it refuses them in every mode.
    Mode("beam-threads", _beam("multi_threading"), in_process=False),
    Mode("beam-processes", _beam("multi_processing"), in_process=False),
    Mode("parts", _parts, in_process=False),
]
