"""The one place data moves, and the one notion of how tasks are grouped.

Every executor calls these, and nothing else copies:

- :func:`copy_region` copies one task's region; :func:`run_batch` a run of
  consecutive tasks.
- :func:`rounds` groups the stages of several specs into :class:`Round` s:
  round ``k`` is stage ``k`` of every spec, and every task of a round must
  finish before the next round starts. A round cuts its tasks into
  :class:`Batch` es (:meth:`Round.batches`, for engines that pay per task) or
  into the contiguous shares of independent processes (:meth:`Round.part`).
- :class:`Tracker` counts finished batches and reports progress, whichever
  executor ran them.
- :func:`finish` is the last step of every plan.

Resuming is one rule here, so every engine resumes the same way:
:func:`run_batch` records each task in its stage's journal once all its
writes returned, and a round leaves out the tasks its journals record as
done (:attr:`Round.done`), whether it is cut into batches or into parts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import zip_longest

from rechunker_core.geometry import Region
from rechunker_core.journal import (
    TaskSet,
    discard,
    finished,
    followed,
    recorder,
    remove_marker,
)
from rechunker_core.retry import retrying
from rechunker_core.spec import CopySpec, StagedCopySpec
from rechunker_core.storage import remove

__all__ = [
    "MIN_BATCH_BYTES",
    "Batch",
    "Progress",
    "Round",
    "Tracker",
    "copy_region",
    "finish",
    "rounds",
    "run_batch",
    "run_local",
]

#: Called as ``progress(tasks_done, tasks_total)`` as tasks finish.
Progress = Callable[[int, int], None]

#: Automatic batches move at least this many bytes, so an engine's per-task
#: overhead (milliseconds on a dask scheduler or a Prefect server) stays small
#: against the copy...
MIN_BATCH_BYTES = 4 * 2**20
#: ...but a round keeps at least this many batches (when it has that many
#: tasks), so batching never starves the workers.
MIN_BATCHES_PER_ROUND = 1000


def copy_region(stage: CopySpec, region: Region) -> None:
    """Copy one task's region: read it from the stage's source, write it to its target."""
    stage.target.write(region, stage.source.read(region))


@dataclass(frozen=True)
class Batch:
    """Consecutive tasks of one stage: the unit an engine schedules.

    >>> from types import SimpleNamespace as NS
    >>> Batch(NS(), range(3, 7)).num_tasks
    4
    """

    stage: CopySpec
    tasks: range

    @property
    def num_tasks(self) -> int:
        """How many copy tasks the batch holds."""
        return len(self.tasks)


def run_batch(batch: Batch, *, recheck: bool = False) -> int:
    """Copy every task of ``batch``; return how many tasks it covers.

    Each task is recorded in the stage's journal only after all its writes
    returned, and the batch returns only once its records are in the store:
    a process killed at any moment leaves unrecorded at most the tasks it
    was running.

    ``recheck`` is for engines that may run a batch again (dask after a
    worker died, Prefect and Beam retries): tasks the journal already
    records, as this process last read it (:func:`~rechunker_core.journal.followed`),
    are skipped.
    """
    stage = batch.stage
    journal = recorder(stage.journal, stage.shape, stage.task_chunks, stage.target.retry)
    todo = [batch.tasks]
    if recheck and stage.journal is not None:
        done = followed(
            stage.journal, stage.shape, stage.task_chunks, stage.num_tasks, stage.target.retry
        )
        todo = [range(a, b) for a, b in done.missing(batch.tasks.start, batch.tasks.stop)]
    for tasks in todo:
        for task in tasks:
            copy_region(stage, stage.task_region(task))
            journal.add(task)
    journal.commit()
    return batch.num_tasks


def _finished(stage: CopySpec) -> TaskSet:
    """The tasks of ``stage`` its journal records as done."""
    if stage.journal is None:
        return TaskSet.union([])
    return finished(
        stage.journal, stage.shape, stage.task_chunks, stage.num_tasks, stage.target.retry
    )


def _split(stage: CopySpec, size: int, done: TaskSet) -> Iterator[Batch]:
    """Batches of ``size`` tasks, aligned to multiples of ``size``, of the tasks not done.

    >>> from types import SimpleNamespace as NS
    >>> [b.tasks for b in _split(NS(num_tasks=9), 4, TaskSet.union([(1, 3)]))]
    [range(0, 1), range(3, 4), range(4, 8), range(8, 9)]
    """
    for first, stop in done.missing(0, stage.num_tasks):
        start = first
        while start < stop:
            end = min(stop, (start // size + 1) * size)
            yield Batch(stage, range(start, end))
            start = end


@dataclass(frozen=True)
class Round:
    """Stage ``number`` of every spec that has one: tasks that may run at once."""

    number: int
    stages: tuple[CopySpec, ...]

    @property
    def num_tasks(self) -> int:
        """Tasks over every stage of the round."""
        return sum(stage.num_tasks for stage in self.stages)

    @cached_property
    def done(self) -> tuple[TaskSet, ...]:
        """Per stage, the tasks its journal records as done: read once, when first asked.

        :meth:`batches`, :meth:`tasks` and :meth:`part` leave these tasks out.
        """
        return tuple(_finished(stage) for stage in self.stages)

    @property
    def num_done(self) -> int:
        """Tasks of the round already done (by an earlier, interrupted run)."""
        return sum(done.count for done in self.done)

    def tasks(self) -> Iterator[Batch]:
        """Every task as a batch of one, lazily."""
        return self.batches(1)

    def batches(self, size: int | None = None, most: int | None = None) -> Iterator[Batch]:
        """Cut each stage's tasks into batches of consecutive tasks, lazily.

        Parameters
        ----------
        size : int, optional
            Tasks per batch. By default small tasks are grouped so a batch
            moves about :data:`MIN_BATCH_BYTES`, while the round keeps at
            least :data:`MIN_BATCHES_PER_ROUND` batches.
        most : int, optional
            Most batches per stage (batches grow to stay within it).

        >>> from types import SimpleNamespace as NS
        >>> import numpy as np
        >>> def stage(n, side):
        ...     source = NS(dtype=np.dtype("f8"))
        ...     return NS(num_tasks=n, task_chunks=(side, side), source=source, journal=None)
        >>> big, tiny = stage(50, 1000), stage(10**5, 10)
        >>> [b.num_tasks for b in Round(0, (big,)).batches()][:2]
        [1, 1]
        >>> [b.num_tasks for b in Round(0, (tiny,)).batches()][:2]
        [100, 100]
        >>> [b.tasks for b in Round(0, (stage(5, 10),)).batches(2)]
        [range(0, 2), range(2, 4), range(4, 5)]
        >>> len(list(Round(0, (tiny,)).batches(most=7)))
        7
        """
        for stage, done in zip(self.stages, self.done):
            chosen = size or self._auto_size(stage)
            if most is not None:
                chosen = max(chosen, math.ceil(stage.num_tasks / most))
            yield from _split(stage, chosen, done)

    def _auto_size(self, stage: CopySpec) -> int:
        task_bytes = math.prod(stage.task_chunks) * stage.source.dtype.itemsize
        by_bytes = MIN_BATCH_BYTES // max(task_bytes, 1)
        return max(1, min(by_bytes, self.num_tasks // MIN_BATCHES_PER_ROUND))

    def part(self, part: int, parts: int) -> list[Batch]:
        """The tasks part ``part`` of ``parts`` runs: contiguous, and together exact.

        The round's tasks are numbered one after another, stage by stage; part
        ``i`` takes numbers ``i * total // parts`` up to ``(i + 1) * total // parts``.
        Tasks already done are left out, so a part run again does only the rest.

        >>> from types import SimpleNamespace as NS
        >>> a, b = NS(name="a", num_tasks=3, journal=None), NS(name="b", num_tasks=4, journal=None)
        >>> r = Round(0, (a, b))
        >>> [[(b.stage.name, b.tasks) for b in r.part(i, 3)] for i in range(3)]
        [[('a', range(0, 2))], [('a', range(2, 3)), ('b', range(0, 1))], [('b', range(1, 4))]]
        """
        low, high = part * self.num_tasks // parts, (part + 1) * self.num_tasks // parts
        batches, offset = [], 0
        for stage, done in zip(self.stages, self.done):
            start, stop = max(low, offset), min(high, offset + stage.num_tasks)
            for first, end in done.missing(start - offset, stop - offset):
                batches.append(Batch(stage, range(first, end)))
            offset += stage.num_tasks
        return batches


def rounds(specs: Sequence[StagedCopySpec]) -> list[Round]:
    """Group the stages of several specs into rounds.

    >>> from types import SimpleNamespace as NS
    >>> [len(r.stages) for r in rounds([NS(stages=(1, 2)), NS(stages=(3,))])]
    [2, 1]
    """
    return [
        Round(k, tuple(stage for stage in round_ if stage is not None))
        for k, round_ in enumerate(zip_longest(*(spec.stages for spec in specs)))
    ]


class Tracker:
    """Counts finished tasks of a plan and reports them to ``progress``.

    Every executor reports through one of these, from the process that
    drives the run, as batches finish.
    """

    def __init__(self, specs: Sequence[StagedCopySpec], progress: Progress | None) -> None:
        self.total = sum(spec.num_tasks for spec in specs)
        self.done = 0
        self._progress = progress

    def finished(self, tasks: int) -> None:
        """Note that ``tasks`` more tasks finished."""
        self.done += tasks
        if self._progress is not None:
            self._progress(self.done, self.total)


def run_local(
    specs: Sequence[StagedCopySpec], workers: int, progress: Progress | None = None
) -> None:
    """Run a plan in this process: in the calling thread, or on ``workers`` threads.

    Threads take batches of one task, a few at a time, so a plan of millions
    of tasks never holds millions of futures. The first failure cancels what
    is queued and is raised; the intermediates then stay for a rerun.
    """
    tracker = Tracker(specs, progress)
    if workers <= 1:
        for round_ in rounds(specs):
            _count_done(round_, tracker)
            for batch in round_.tasks():
                tracker.finished(run_batch(batch))
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="rechunk") as pool:
            for round_ in rounds(specs):
                _count_done(round_, tracker)
                for copied in _bounded(pool, round_.tasks(), 2 * workers):
                    tracker.finished(copied)
    finish(specs)


def _count_done(round_: Round, tracker: Tracker) -> None:
    """Report the tasks an interrupted run finished as done."""
    if round_.num_done:
        tracker.finished(round_.num_done)


def _bounded(pool: ThreadPoolExecutor, batches: Iterable[Batch], limit: int) -> Iterator[int]:
    """Run batches on ``pool`` with at most ``limit`` in flight; yield each one's count."""
    pending: set[Future[int]] = set()
    try:
        for batch in batches:
            if len(pending) >= limit:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in finished)
            pending.add(pool.submit(run_batch, batch))
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in finished)
    finally:
        for future in pending:
            future.cancel()


def finish(specs: Iterable[StagedCopySpec]) -> None:
    """The last step of every plan: delete the intermediates the run created,
    then the directories it made for them if they are empty, mark the target
    complete, and release the run's claims.

    Nothing else is deleted: the specs list only what the run itself created.
    The order makes a crash here harmless: an intermediate's journal goes
    before its data (a half-deleted intermediate is never taken as done), and
    the target's journal only after its marker (until then a resumed run sees
    its last stage done, and copies nothing again).
    """
    specs = tuple(specs)
    for spec in specs:
        policy = spec.target.retry
        for stage in spec.stages[:-1]:
            discard(stage.journal, policy)
        for location in spec.cleanup:
            retrying(partial(remove, location), f"deleting {location.describe()}", policy)
    for spec in specs:
        for location in spec.remove_empty:
            location.remove_if_empty()
    for spec in specs:
        for place in spec.incomplete:
            retrying(
                partial(remove_marker, place),
                f"marking {place.describe()} complete",
                spec.target.retry,
            )
    for spec in specs:
        discard(spec.stages[-1].journal, spec.target.retry)
        for claim in spec.claims:
            retrying(
                partial(claim.release, strict=True),
                f"releasing the claim on {claim.location.describe()}",
                spec.target.retry,
            )
