"""A thread pool in this process: the default executor.

Codecs and numpy release the GIL for the heavy work, so threads use every core
without the pickling and memory cost of processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from rechunker_core.copy import copy_region, finish, stages_in_order
from rechunker_core.executors import Progress
from rechunker_core.geometry import Region
from rechunker_core.spec import CopySpec, StagedCopySpec

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
        self.max_workers = max_workers or os.cpu_count() or 1

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> Plan:
        """Return a callable that runs ``specs``."""
        specs = tuple(specs)
        total = sum(spec.num_tasks for spec in specs)
        workers = self.max_workers

        def plan(progress: Progress | None = None) -> None:
            done = 0
            with ThreadPoolExecutor(workers, thread_name_prefix="rechunk") as pool:
                for round_ in stages_in_order(specs):
                    for _ in _run_bounded(pool, _tasks(round_), 2 * workers):
                        done += 1
                        if progress:
                            progress(done, total)
            finish(specs)

        return plan

    def execute_plan(self, plan: Plan, **kwargs: Any) -> None:
        """Run ``plan``; accepts ``progress=``."""
        plan(**kwargs)


def _tasks(round_: list[CopySpec]) -> Iterator[tuple[CopySpec, Region]]:
    for stage in round_:
        for region in stage.task_regions():
            yield stage, region


def _run_bounded(
    pool: ThreadPoolExecutor, tasks: Iterator[tuple[CopySpec, Region]], limit: int
) -> Iterator[None]:
    """Run tasks on ``pool`` with at most ``limit`` in flight; yield once per finished task.

    The first failure cancels what is queued and is raised.
    """
    pending: set[Future[None]] = set()
    try:
        for stage, region in tasks:
            if len(pending) >= limit:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    yield None
            pending.add(pool.submit(copy_region, stage, region))
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()
                yield None
    finally:
        for future in pending:
            future.cancel()
