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
  executor ran them; where a batch ran in another thread or process than
  the tracker, a :class:`Feed` carries the count back.
- :func:`finish` is the last step of every plan; :func:`complete` the
  driver's, once the plan has run (it merges the changes of Icechunk targets
  into their sessions).

Resuming is one rule here, so every engine resumes the same way:
:func:`run_batch` records each task in its stage's journal once all its
writes returned, and a round leaves out the tasks its journals record as
done (:attr:`Round.done`), whether it is cut into batches or into parts.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property, partial
from itertools import zip_longest
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rechunker_core.assist import ASSIST
from rechunker_core.blocks import Blocks
from rechunker_core.chunkio import DELETIONS, FREED_MEMORY, REGIONS
from rechunker_core.geometry import Region
from rechunker_core.journal import (
    TaskSet,
    discard,
    finished,
    recorder,
    remove_marker,
)
from rechunker_core.retry import retrying
from rechunker_core.sessions import SessionPlace, batch_writes
from rechunker_core.spec import CopySpec, StagedCopySpec
from rechunker_core.storage import ZarrRef, remove

__all__ = [
    "MIN_BATCH_BYTES",
    "Batch",
    "Feed",
    "Progress",
    "ProgressListener",
    "Round",
    "RoundTotals",
    "Tracker",
    "as_tracker",
    "check_driver",
    "complete",
    "copy_region",
    "count_done",
    "feed_path",
    "finish",
    "least_batch_size",
    "rounds",
    "run_batch",
    "run_local",
    "worker_idle",
]

logger = logging.getLogger("rechunker_core")

#: Called as ``progress(tasks_done, tasks_total)`` as tasks finish.
Progress = Callable[[int, int], None]

#: Automatic batches move at least this many bytes, so an engine's per-task
#: overhead (milliseconds on a dask scheduler or a Prefect server) stays small
#: against the copy...
MIN_BATCH_BYTES = 4 * 2**20
#: ...but a round keeps at least this many batches (when it has that many
#: tasks), so batching never starves the workers.
MIN_BATCHES_PER_ROUND = 1000


def copy_region(stage: CopySpec, region: Region, done: Callable[[], bool] | None = None) -> bool:
    """Copy one task's region: read it from the stage's source, write it to its target.

    Returns False when the source stores no chunk of the region (a sparse
    array: the target's chunks read as the fill value unwritten), so there
    is nothing of the source to free either.

    The region is held as the target's write chunks (:class:`~rechunker_core.blocks.Blocks`),
    in memory from the process's pool (:data:`~rechunker_core.chunkio.REGIONS`), so
    consecutive tasks refill memory already touched.

    ``done`` is asked when a stage that frees its source found chunks absent:
    if another run of the same task has finished (an engine ran it twice at
    once), it freed them, and this run writes nothing.
    """
    source = stage.source
    if isinstance(source, ZarrRef) and source.copies_nothing(region, stage.target):
        return False
    dtype = np.dtype(source.dtype)
    chunks = stage.target.block_chunks(region)
    buffer = None
    if not dtype.hasobject:
        buffer = REGIONS.take((Blocks.nbytes(region, chunks, dtype),), np.dtype(np.uint8))
    try:
        with ASSIST.task():  # this worker is busy: helpers stand in only for idle ones
            blocks = Blocks(region, chunks, buffer, dtype)
            if not isinstance(source, ZarrRef):
                source.read_into(region, blocks)
            elif source.read_counting(region, blocks) and _freed(stage, source, done):
                return True
            stage.target.write(region, blocks)
            return True
    finally:
        if buffer is not None:
            REGIONS.give(buffer)
            FREED_MEMORY.task_done(buffer.nbytes)


def _freed(stage: CopySpec, source: ZarrRef, done: Callable[[], bool] | None) -> bool:
    """Whether chunks found absent in ``source`` may be ones another run of the task
    freed (and that run has finished): they are never only empty there."""
    return stage.frees_source and source.can_free() and done is not None and done()


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
    was running. Then, for a stage that :attr:`~CopySpec.frees_source`, the
    intermediate chunks those tasks alone read are deleted. While the batch
    copies, freed memory stays in the heap for reuse
    (:data:`~rechunker_core.chunkio.FREED_MEMORY`), in any process.

    ``recheck`` is for engines that may run a batch again (dask after a
    worker died, Prefect and Beam retries): tasks the journal already
    records, as this process last read it
    (:func:`~rechunker_core.journal.finished` with ``follow=True``), are skipped.
    """
    stage = batch.stage
    journal = recorder(stage.journal, stage.grid, stage.target.retry)
    todo = [batch.tasks]
    if recheck and stage.journal is not None:
        done = finished(stage.journal, stage.grid, stage.target.retry, follow=True)
        todo = [range(a, b) for a, b in done.missing(batch.tasks.start, batch.tasks.stop)]
    target = stage.target.location
    # Freed heap memory is reused within the batch wherever it runs (worker
    # processes too): fresh pages cost several times as much on a VM.
    stored = []  # the tasks whose source region held chunks, to free
    with FREED_MEMORY.kept(), batch_writes(target.store, target.path, batch.tasks):
        for tasks in todo:
            for task in tasks:
                region = stage.task_region(task)
                if copy_region(stage, region, partial(_recorded, stage, task)):
                    stored.append(region)
                journal.add(task)
    journal.commit()
    if stage.frees_source and isinstance(stage.source, ZarrRef):
        for region in stored:
            stage.source.free(region)
    return batch.num_tasks


def worker_idle() -> None:
    """A worker has no more batches for now: drop the buffers kept for its next task.

    For engines that say when a worker's share of a stage ends (a Beam
    bundle). The pools keep a finished task's region for the next task of the
    same size; an engine that does its own work between stages (Beam pickles
    every DoFn of the next stage) would otherwise do it on top of a region
    nobody uses, over the plan's peak task memory per worker. The next stage's
    regions differ in size, so the first task of it would drop them anyway.
    """
    REGIONS.drop()


def _recorded(stage: CopySpec, task: int) -> bool:
    """Whether the journal of ``stage`` records ``task`` now: what was recorded since
    this process last looked is read, not only what it saw then."""
    done = finished(stage.journal, stage.grid, stage.target.retry, follow=True, fresh=True)
    return not any(True for _ in done.missing(task, task + 1))


def _finished(stage: CopySpec) -> TaskSet:
    """The tasks of ``stage`` its journal records as done."""
    if stage.journal is None:
        return TaskSet.union([])
    return finished(stage.journal, stage.grid, stage.target.retry)


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

    @property
    def nbytes(self) -> int:
        """Bytes the round writes: every array of its stages, once."""
        return sum(math.prod(s.shape) * s.source.dtype.itemsize for s in self.stages)

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

    def batches(
        self, size: int | None = None, most: int | None = None, at_least: int = 1
    ) -> Iterator[Batch]:
        """Cut each stage's tasks into batches of consecutive tasks, lazily.

        Parameters
        ----------
        size : int, optional
            Tasks per batch. By default small tasks are grouped so a batch
            moves about :data:`MIN_BATCH_BYTES`, while the round keeps at
            least :data:`MIN_BATCHES_PER_ROUND` batches.
        most : int, optional
            Most batches per stage (batches grow to stay within it).
        at_least : int
            Fewest tasks per batch (see :func:`least_batch_size`).

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
        >>> len(list(Round(0, (big,)).batches(at_least=20)))
        3
        """
        for stage, done in zip(self.stages, self.done):
            chosen = max(size or self._auto_size(stage), at_least)
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


def least_batch_size(specs: Sequence[StagedCopySpec], most_batches: int) -> int:
    """Tasks per batch so that the whole plan has at most about ``most_batches`` batches.

    Engines that build a node per batch (a dask graph) stay small at any size:
    10**7 copy tasks become 10**5 nodes, each running 100 tasks.

    >>> from types import SimpleNamespace as NS
    >>> least_batch_size([NS(num_tasks=10**7)], 10**5), least_batch_size([NS(num_tasks=5)], 10**5)
    (100, 1)
    """
    total = sum(spec.num_tasks for spec in specs)
    return max(1, math.ceil(total / most_batches))


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


@dataclass(frozen=True)
class RoundTotals:
    """What one round moves: its ``tasks``, and the ``nbytes`` its stages write."""

    number: int
    tasks: int
    nbytes: int


@runtime_checkable
class ProgressListener(Protocol):
    """What hears a :class:`Tracker`: a progress bar (:mod:`rechunker_core.progress`)."""

    def start(self, rounds: Sequence[RoundTotals]) -> None:
        """The run begins; ``rounds`` are what each round will move."""
        ...

    def advance(self, round_number: int, tasks: int, nbytes: int) -> None:
        """``tasks`` more tasks of a round finished, writing about ``nbytes``."""
        ...

    def close(self) -> None:
        """The run ended (finished or failed)."""
        ...


class Tracker:
    """Counts finished tasks of a plan, round by round, and reports them.

    Every executor reports through one of these, as batches finish: directly
    in the process that drives the run, or from wherever a batch ran through
    a :class:`Feed` (see :meth:`listening`). ``progress`` is a callable
    receiving ``(tasks_done, tasks_total)``, a :class:`ProgressListener`, or
    None. Counts are kept under a lock, so the callable sees ``tasks_done``
    grow, ending at ``tasks_total``, whichever threads report.

    >>> from types import SimpleNamespace as NS
    >>> import numpy as np
    >>> stage = NS(num_tasks=4, shape=(8,), source=NS(dtype=np.dtype("u1")))
    >>> tracker = Tracker([NS(stages=(stage,), num_tasks=4)], print)
    >>> tracker.finished(3, round_number=0)
    3 4
    >>> tracker.rounds, tracker.bytes_done
    ([RoundTotals(number=0, tasks=4, nbytes=8)], 6)
    """

    def __init__(
        self,
        specs: Sequence[StagedCopySpec],
        progress: Progress | ProgressListener | None = None,
        *,
        totals: Sequence[RoundTotals] | None = None,
    ) -> None:
        if totals is None:
            totals = [RoundTotals(r.number, r.num_tasks, r.nbytes) for r in rounds(specs)]
        self.rounds = list(totals)
        self.total = sum(r.tasks for r in self.rounds)
        self.done = 0
        self.bytes_done = 0
        self._round_done = [0] * len(self.rounds)
        self._lock = threading.Lock()
        self._listener: ProgressListener | None = None
        self._callback: Progress | None = None
        if isinstance(progress, ProgressListener):
            self._listener = progress
        else:
            self._callback = progress
        if self._listener is not None:
            self._listener.start(self.rounds)

    @classmethod
    def of_rounds(
        cls, totals: Sequence[RoundTotals], progress: Progress | ProgressListener | None = None
    ) -> Tracker:
        """A tracker of given round totals (a share of a plan, such as one part)."""
        return cls((), progress, totals=totals)

    def finished(self, tasks: int, round_number: int) -> None:
        """Note that ``tasks`` more tasks of round ``round_number`` finished."""
        with self._lock:
            totals = self.rounds[round_number]
            before = self._round_done[round_number]
            after = self._round_done[round_number] = before + tasks
            # Bytes in proportion to tasks: exact once the round is complete.
            nbytes = (after - before) * totals.nbytes // max(totals.tasks, 1)
            if after >= totals.tasks:
                nbytes = totals.nbytes - before * totals.nbytes // max(totals.tasks, 1)
            self.done += tasks
            self.bytes_done += nbytes
            if self._callback is not None:
                self._callback(self.done, self.total)
            if self._listener is not None:
                self._listener.advance(round_number, tasks, nbytes)
            if before < totals.tasks <= after:
                logger.info("stage %d done: %d tasks", round_number, totals.tasks)

    def close(self) -> None:
        """The run ended: let the listener finish its display."""
        if self._listener is not None:
            self._listener.close()

    @contextmanager
    def listening(self, token: str | None) -> Iterator[Tracker]:
        """Hear the reports of the :class:`Feed` ``token`` names while the block runs.

        Reports made in this process come straight here. For reports from
        other processes on this machine (a Beam DirectRunner in
        ``multi_processing`` mode, the parts of a saved plan), a feed file
        named after the token is created for them to append to, and read
        here until the block ends. Reports from other machines find
        neither and are dropped: the engine's own UI shows remote runs.
        """
        if token is None:
            yield self
            return
        path = feed_path(token)
        path.write_bytes(b"")
        stop = threading.Event()
        reader = threading.Thread(target=self._read_feed, args=(path, stop), daemon=True)
        with _ACTIVE_LOCK:
            _ACTIVE[token] = self
        reader.start()
        try:
            yield self
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.pop(token, None)
            stop.set()
            reader.join()
            path.unlink(missing_ok=True)

    def _read_feed(self, path: Path, stop: threading.Event) -> None:
        """Apply the lines others append to ``path`` (``"round tasks"``) until ``stop``."""
        offset = 0
        while True:
            stopping = stop.wait(0.1)
            with path.open("rb") as feed:
                feed.seek(offset)
                data = feed.read()
            complete = data[: data.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode().splitlines():
                round_number, tasks = (int(word) for word in line.split())
                self.finished(tasks, round_number)
            if stopping:
                return


#: Trackers listening in this process, by run token (:meth:`Tracker.listening`).
_ACTIVE: dict[str, Tracker] = {}
_ACTIVE_LOCK = threading.Lock()


def feed_path(token: str) -> Path:
    """The feed file other processes on this machine append reports for ``token`` to."""
    return Path(tempfile.gettempdir()) / f"rechunker-core-progress-{token}"


def _new_token() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Feed:
    """How progress travels from wherever a batch runs to the run's :class:`Tracker`.

    An executor makes one when it prepares a plan and puts it in the plan (it
    is picklable: a token naming the run); the driver listens while the plan
    runs (:meth:`listening`), and wherever a batch ran, or its result
    arrived, :meth:`report` tells the run. ``Feed(None)`` is heard by nobody.

    >>> tracker, feed = Tracker.of_rounds([RoundTotals(0, 4, 8)], print), Feed()
    >>> with feed.listening(tracker):
    ...     feed.report(0, 3)
    3 4
    """

    token: str | None = field(default_factory=_new_token)

    def listening(self, tracker: Tracker | None) -> AbstractContextManager[Any]:
        """``tracker.listening(token)``, or nothing when there is no tracker or token."""
        if tracker is None or self.token is None:
            return nullcontext()
        return tracker.listening(self.token)

    def report(self, round_number: int, tasks: int) -> None:
        """Tell the run that ``tasks`` tasks of round ``round_number`` finished.

        It costs a dictionary look-up in the process that listens, one small
        append elsewhere on its machine, and nothing where nobody listens.
        """
        if self.token is None:
            return
        tracker = _ACTIVE.get(self.token)
        if tracker is not None:
            tracker.finished(tasks, round_number)
            return
        try:  # no O_CREAT: only the listening process makes the file
            fd = os.open(feed_path(self.token), os.O_WRONLY | os.O_APPEND)
        except OSError:
            return
        try:
            # One write of a few bytes to an O_APPEND file: lines never interleave.
            os.write(fd, f"{round_number} {tasks}\n".encode())
        finally:
            os.close(fd)


def as_tracker(
    specs: Sequence[StagedCopySpec], progress: Tracker | Progress | ProgressListener | None
) -> Tracker:
    """``progress`` itself if it is a :class:`Tracker`, else a new one reporting to it."""
    return progress if isinstance(progress, Tracker) else Tracker(specs, progress)


def run_local(
    specs: Sequence[StagedCopySpec],
    workers: int,
    progress: Tracker | Progress | ProgressListener | None = None,
) -> None:
    """Run a plan in this process: in the calling thread, or on ``workers`` threads.

    Threads take batches of one task, a few at a time, so a plan of millions
    of tasks never holds millions of futures. The first failure cancels what
    is queued and is raised; the intermediates then stay for a rerun.
    ``progress``: a :class:`Tracker`, or what a new one reports to.
    """
    tracker = as_tracker(specs, progress)
    with running_here(workers):
        if workers <= 1:
            for round_ in rounds(specs):
                for batch in round_.tasks():
                    tracker.finished(run_batch(batch), round_.number)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="rechunk") as pool:
                for round_ in rounds(specs):
                    for copied in _bounded(pool, round_.tasks(), 2 * workers):
                        tracker.finished(copied, round_.number)
    finish(specs)


@contextmanager
def running_here(workers: int) -> Iterator[None]:
    """Around a run whose tasks all run in this process, on ``workers`` workers
    (threads) at most, and which ends here too.

    Freed heap memory is kept for reuse (:data:`~rechunker_core.chunkio.FREED_MEMORY`),
    freed intermediate chunks are deleted on a thread of their own
    (:data:`~rechunker_core.chunkio.DELETIONS`; the block ends once they are
    gone), and while fewer tasks run than ``workers``, helpers take chunks of
    the running ones (:data:`~rechunker_core.assist.ASSIST`).
    """
    with FREED_MEMORY.kept(), DELETIONS.deferred(), ASSIST.helping(workers):
        yield


def count_done(specs: Sequence[StagedCopySpec], tracker: Tracker) -> None:
    """Report the tasks an interrupted run finished (its journals record them) as done."""
    for round_ in rounds(specs):
        if round_.num_done:
            tracker.finished(round_.num_done, round_.number)


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

    Intermediate chunks freed on this process's deleting thread are gone
    first (:data:`~rechunker_core.chunkio.DELETIONS`).
    """
    specs = tuple(specs)
    DELETIONS.flush()
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


def check_driver(specs: Iterable[StagedCopySpec], what: str) -> None:
    """Refuse to end a plan outside the process that can complete it (:func:`complete`).

    Raises
    ------
    ValueError
        When a target is an Icechunk session held by another process.
    """
    for spec in specs:
        place = spec.stages[-1].target.location.icechunk
        if place is not None and not place.in_driver:
            raise ValueError(
                f"{what} writes into {place}, which only the process that made the plan can "
                "merge and commit; run it with Rechunked.execute() (PartsExecutor for parts)"
            )


def complete(specs: Sequence[StagedCopySpec], commit: str | None = None) -> None:
    """The driver's last step, after the plan ran: merge into each Icechunk
    session what the run wrote (and commit it, given a message).

    Only the last stage of a spec writes its target, so those stages' tasks
    are the ones every session must have heard of
    (:meth:`rechunker_core.sessions.SessionPlace.complete`). Ordinary targets
    need nothing.
    """
    sessions: dict[str, tuple[SessionPlace, dict[str, int]]] = {}
    for spec in specs:
        last = spec.stages[-1]
        place = last.target.location.icechunk
        if place is not None:
            sessions.setdefault(place.token, (place, {}))[1][last.target.location.path] = (
                last.num_tasks
            )
    for place, expected in sessions.values():
        place.complete(expected, commit)
    for spec in specs:  # a temp directory the run made held the sessions' changes till now
        for location in spec.remove_empty:
            location.remove_if_empty()
