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

from executors.python import PythonExecutor
from executors.threads import ThreadsExecutor


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
