"""Idle workers of this process help the tasks still running with their chunks.

At the end of a stage the last tasks run while the other workers wait for
the next stage: with 2 workers and 12 tasks of half a second each, one core
idled for up to half a second per stage on W1 (docs/performance.md). A
task's chunks are independent of each other, so while fewer tasks run in
this process than the engine has workers here, helper threads take chunks
of the running tasks: each decodes or encodes whole chunks of the task's
region, which the task holds anyway.

A helper only works in place of an idle worker, so the threads busy at once
never outnumber the engine's workers (or the cores), and what a helper holds
(a scratch chunk, one chunk's bytes) is within what an idle worker's task
would hold: the plan's peak task memory per worker stays true. When that
worker starts a task again, the task waits for the helper to finish its
chunk and let its memory go (one chunk's time at most).

Executors that run every task in this process say how many workers they run
(:meth:`Assist.helping`); elsewhere, and with one worker, a task copies its
chunks alone, as before.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

__all__ = ["ASSIST", "Assist"]

Item = TypeVar("Item")

#: What works on a task's items in one thread: entered once per thread that
#: joins (its scratch memory lives as long as the block), it yields the function
#: that handles one item and returns a count (chunks found absent, say).
Worker = Callable[[], contextlib.AbstractContextManager[Callable[[Item], int]]]


def cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


class _Job(Generic[Item]):
    """One task's items, claimed one at a time by the task's thread and helpers."""

    def __init__(self, items: Sequence[Item], worker: Worker[Item]) -> None:
        self.items = items
        self.worker = worker
        self.next = 0  # the first item nobody claimed yet
        self.total = 0  # the sum of what the items returned
        self.joined = 0  # helpers working on it now
        self.error: BaseException | None = None

    def claim(self) -> int | None:
        """The next item's index, or None when every item is taken (or one failed)."""
        if self.next >= len(self.items) or self.error is not None:
            return None
        self.next += 1
        return self.next - 1


class Assist:
    """Helper threads for the tasks of this process (see the module docstring).

    >>> assist = Assist()
    >>> @contextlib.contextmanager
    ... def squares():
    ...     yield lambda x: x * x
    >>> with assist.helping(workers=2):
    ...     with assist.task():
    ...         assist.each(range(5), squares)
    30
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: list[_Job[object]] = []
        self._workers = 0  # the engine's workers in this process; 0 when not helping
        self._runs: list[int] = []  # the workers of each helping() block entered
        self._tasks = 0  # tasks running in this process
        self._helping = 0  # helpers working on a job now
        self._threads: list[threading.Thread] = []

    @contextlib.contextmanager
    def helping(self, workers: int) -> Iterator[None]:
        """While a run whose engine has ``workers`` workers in this process lasts,
        helpers take the chunks of running tasks when fewer tasks run than that.

        Runs at once (two plans, from two threads) take the largest count of
        those still running.
        """
        usable = min(workers, cores())
        with self._cond:
            self._runs.append(usable)
            self._workers = max(self._runs)
            for _ in range(len(self._threads), self._workers - 1):
                thread = threading.Thread(target=self._help, name="rechunk-assist", daemon=True)
                self._threads.append(thread)
                thread.start()
        try:
            yield
        finally:
            with self._cond:
                self._runs.remove(usable)
                self._workers = max(self._runs, default=0)
                stopping, self._threads = self._threads, self._threads[: max(0, self._workers - 1)]
                self._cond.notify_all()
            for thread in stopping[len(self._threads) :]:
                thread.join()

    @contextlib.contextmanager
    def task(self) -> Iterator[None]:
        """Around one task: while it runs, its worker is not idle.

        A task that starts while a helper stands in for its worker waits until
        the helper has finished the chunk in hand and let go of its memory
        (a scratch chunk, the chunk's bytes): that memory is the idle worker's
        share of the plan's peak task memory, which the task is about to use.
        """
        with self._cond:
            self._tasks += 1
            try:
                while self._crowded():
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: the task never ran
                self._tasks -= 1
                self._cond.notify_all()
                raise
        try:
            yield
        finally:
            with self._cond:
                self._tasks -= 1
                self._cond.notify_all()

    def each(self, items: Sequence[Item], worker: Worker[Item]) -> int:
        """Handle every item, in this thread and in idle helpers; return the sum of
        what the handlers returned. The first error is raised, once no helper
        works on the items any more (they write into memory the caller reuses).
        """
        if not self._workers or len(items) < 2:
            with worker() as handle:
                return sum(handle(item) for item in items)
        job = _Job(items, worker)
        with self._cond:
            self._jobs.append(job)  # type: ignore[arg-type]
            if self._room():
                self._cond.notify_all()
        try:
            self._work_on(job, helper=False)
        finally:
            with self._cond:
                self._jobs.remove(job)  # type: ignore[arg-type]
                while job.joined:
                    self._cond.wait()
        if job.error is not None:
            raise job.error
        return job.total

    def in_helper(self) -> bool:
        """Whether the calling thread is one of the helpers."""
        return threading.current_thread() in self._threads

    def _room(self) -> bool:
        """Whether an idle worker is free to help (with the lock held)."""
        return self._helping < self._idle()

    def _crowded(self) -> bool:
        """Whether more helpers work than workers are idle (with the lock held):
        one of them stands in for a worker that has started a task again."""
        return self._helping > self._idle()

    def _idle(self) -> int:
        return max(0, self._workers - self._tasks)

    def _work_on(self, job: _Job[Item], helper: bool) -> None:
        """Claim and handle items of ``job`` until none is left; a helper stops
        early when a worker it stood in for starts a task."""
        try:
            with job.worker() as handle:
                while True:
                    with self._cond:
                        if helper and self._crowded():
                            return
                        index = job.claim()
                        if index is None:
                            return
                    done = handle(job.items[index])
                    with self._cond:
                        job.total += done
        except BaseException as error:
            with self._cond:
                job.error = job.error or error

    def _help(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                job = None
                while me in self._threads:
                    job = next((j for j in self._jobs if j.next < len(j.items)), None)
                    if job is not None and job.error is None and self._room():
                        break
                    self._cond.wait()
                else:
                    return
                self._helping += 1
                job.joined += 1
            try:
                self._work_on(job, helper=True)
            finally:
                with self._cond:
                    self._helping -= 1
                    job.joined -= 1
                    self._cond.notify_all()


#: This process's helpers.
ASSIST = Assist()
