"""A thread pool in this process: the default executor.

Codecs and numpy release the GIL for the heavy work, so threads use every core
without the pickling and memory cost of processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from rechunker_core.copy import Progress, Tracker, run_local
from rechunker_core.spec import StagedCopySpec

__all__ = ["ThreadsExecutor"]

Plan = Callable[..., None]


class ThreadsExecutor:
    """Runs the tasks of each stage on a pool of ``max_workers`` threads.

    Every task of a stage finishes before the next stage starts. Tasks are
    submitted a few at a time, so a plan of millions of tasks never holds
    millions of futures.

    Parameters
    ----------
    max_workers : int, optional
        Threads in the pool; defaults to the number of CPUs.
    """

    #: Tasks run in the calling process, so in-memory stores work.
    shares_memory = True

    def __init__(self, max_workers: int | None = None) -> None:
        self.max_workers = _workers(max_workers) or os.cpu_count() or 1

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> Plan:
        """Return a callable that runs ``specs``."""
        specs = tuple(specs)
        workers = self.max_workers

        def plan(
            progress: Tracker | Progress | None = None, max_workers: int | None = None
        ) -> None:
            run_local(specs, _workers(max_workers) or workers, progress)

        return plan

    def execute_plan(
        self,
        plan: Plan,
        progress: Tracker | Progress | None = None,
        max_workers: int | None = None,
    ) -> None:
        """Run ``plan``, reporting to ``progress``.

        ``max_workers`` overrides the executor's thread count for this run
        (``rechunked.execute(max_workers=1)``).
        """
        plan(progress=progress, max_workers=max_workers)


def _workers(max_workers: Any) -> int | None:
    """Check a thread count: None (the default) or a positive integer."""
    if max_workers is None:
        return None
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers={max_workers!r} must be a positive integer")
    return max_workers
