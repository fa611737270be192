"""Completion records: which tasks of a stage are done, and whether a target is complete.

A killed run must be resumable at the cost of the tasks it had in flight, on
a laptop disk, an HPC file system or an object store with no atomic rename,
and at 10**7 tasks. So there is no marker object per task. Instead:

- Each process keeps one **journal** per stage and run, in the stage's
  target array (:data:`JOURNAL_KEY`). A task is recorded only after every
  one of its writes returned, so a chunk half-written when the process died
  belongs to an unrecorded task, and is written again.

  - On a local or network file system the journal is a file the process
    appends to (``O_APPEND``): one 16-byte record per task, one ``write()``
    each. A record in the page cache survives ``SIGKILL``; a torn or foreign
    record fails its check and is ignored (it costs a redo, never a skip).
  - On an object store a process rewrites one object holding its merged set
    of finished task ranges: a PUT replaces an object whole, so a reader
    sees the old set or the new one. Threads that finish while a PUT is on
    its way share the next one (group commit), so each task waits for at
    most two PUTs; within a batch a PUT goes out at most every
    :data:`FLUSH_SECONDS`. When the set grows past :data:`ROLL_RANGES` ranges
    the process starts a new object.

  :func:`finished` reads every file or object of a stage's journal and
  unions them (:class:`TaskSet`). Records carry a fingerprint of the job and
  the stage's task grid, so a journal of another job or plan is never
  mistaken for this one's.
- The **incomplete marker** (:data:`INCOMPLETE_KEY`) sits in a target from
  before its first chunk is written until the run's last step, and says
  which run left it there (:func:`write_marker`, :func:`read_marker`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from rechunker_core.geometry import TaskGrid
from rechunker_core.locations import StoreLocation, location_from_dict, location_to_dict
from rechunker_core.retry import RetryPolicy, retrying

__all__ = [
    "INCOMPLETE_KEY",
    "JOURNAL_KEY",
    "JournalRef",
    "Recorder",
    "TaskSet",
    "discard",
    "finished",
    "read_marker",
    "record_all",
    "recorder",
    "remove_marker",
    "write_marker",
]

#: The folder (key prefix) of a stage's journal, inside the array the stage writes.
JOURNAL_KEY = ".rechunker-journal"
#: The key, in a target, that says a run has not finished writing it.
INCOMPLETE_KEY = ".rechunker-incomplete"

#: Within one batch, an object-store journal is written at most this often.
FLUSH_SECONDS = 1.0
#: An object-store journal object holds at most about this many ranges.
ROLL_RANGES = 4096

_MAGIC = b"RCJRNL01"
#: One record: first task, number of tasks, check. 16 bytes, so records never
#: straddle a page and a torn file ends in a partial record, never a wrong one.
_RECORD = np.dtype([("start", "<u8"), ("length", "<u4"), ("check", "<u4")])
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


@dataclass(frozen=True)
class JournalRef:
    """Where a stage's journal lives, the job it belongs to, and the run writing it.

    Attributes
    ----------
    location : StoreLocation
        The journal's folder: :data:`JOURNAL_KEY` inside the stage's target array.
    run : str
        A token of the run: each process of each run writes files of its own,
        and a resumed run reads those of every run before it.
    job : str
        A token of the job, made when its target was created and kept by every
        run that resumes it (the incomplete marker holds it). Records carry it:
        a journal, or a process's memory of one, left by an earlier job in the
        same place (replaced with ``overwrite``) never counts for this one.
    """

    location: StoreLocation
    run: str
    job: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {**location_to_dict(self.location), "run": self.run, "job": self.job}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JournalRef:
        """Inverse of :meth:`to_dict`."""
        return cls(location_from_dict(data), str(data["run"]), str(data.get("job", "")))


def grid_fingerprint(grid: TaskGrid, job: str = "") -> bytes:
    """Eight bytes naming a job's task grid: the same task numbers mean the same regions."""
    text = json.dumps([list(grid.shape), list(grid.task_chunks), job]).encode()
    return hashlib.blake2b(text, digest_size=8).digest()


def _checks(starts: np.ndarray[Any, Any], lengths: np.ndarray[Any, Any], fp: bytes) -> Any:
    """The check word of each record: a mix of its fields and the grid fingerprint."""
    salt = np.frombuffer(fp, "<u8")[0]
    with np.errstate(over="ignore"):
        mixed = (starts.astype("<u8") * _MIX[0]) ^ (lengths.astype("<u8") * _MIX[1]) ^ salt
    return (mixed >> np.uint64(32)).astype("<u4")


def _encode(ranges: list[tuple[int, int]], fp: bytes) -> bytes:
    """Records for ``ranges`` (``(start, stop)`` pairs), split so each length fits 32 bits."""
    pieces = [
        (start, min(stop - start, 2**32 - 1))
        for first, stop in ranges
        for start in range(first, stop, 2**32 - 1)
    ]
    records = np.zeros(len(pieces), _RECORD)
    if pieces:
        records["start"], records["length"] = zip(*pieces)
        records["check"] = _checks(records["start"], records["length"], fp)
    return records.tobytes()


def _decode(data: bytes, fp: bytes) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``(starts, stops)`` of the valid records of one journal file or object."""
    if len(data) < 16 or data[:8] != _MAGIC or data[8:16] != fp:
        return np.zeros(0, "<u8"), np.zeros(0, "<u8")
    return _records(data[16:], fp)


def _records(body: bytes, fp: bytes) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """``(starts, stops)`` of the valid whole records in ``body`` (records, no header)."""
    records = np.frombuffer(body[: len(body) // 16 * 16], _RECORD)
    valid = (records["length"] > 0) & (
        records["check"] == _checks(records["start"], records["length"], fp)
    )
    starts = records["start"][valid]
    return starts, starts + records["length"][valid]


class TaskSet:
    """Finished tasks of one stage, as sorted, disjoint, non-adjacent ranges.

    >>> done = TaskSet.union([(5, 8), (0, 2), (2, 3), (6, 10)])
    >>> done.ranges, done.count
    ([(0, 3), (5, 10)], 8)
    >>> list(done.missing(0, 12)), list(done.missing(6, 9))
    ([(3, 5), (10, 12)], [])
    """

    def __init__(self, starts: np.ndarray[Any, Any], stops: np.ndarray[Any, Any]) -> None:
        self._starts = starts.astype(np.int64)
        self._stops = stops.astype(np.int64)

    @classmethod
    def union(cls, ranges: list[tuple[int, int]]) -> TaskSet:
        """The union of ``(start, stop)`` ranges."""
        pairs = np.array(ranges, np.int64).reshape(-1, 2)
        return cls.merged(pairs[:, 0], pairs[:, 1])

    @classmethod
    def merged(cls, starts: np.ndarray[Any, Any], stops: np.ndarray[Any, Any]) -> TaskSet:
        """The union of the ranges ``starts[i] .. stops[i]``, in any order, overlapping or not."""
        keep = stops > starts
        starts, stops = starts[keep].astype(np.int64), stops[keep].astype(np.int64)
        if not len(starts):
            return cls(starts, stops)
        order = np.argsort(starts, kind="stable")
        starts, stops = starts[order], stops[order]
        reach = np.maximum.accumulate(stops)
        first = np.ones(len(starts), bool)
        first[1:] = starts[1:] > reach[:-1]
        heads = np.flatnonzero(first)
        return cls(starts[heads], np.maximum.reduceat(stops, heads))

    @classmethod
    def covering(
        cls, starts: np.ndarray[Any, Any], stops: np.ndarray[Any, Any], num_tasks: int
    ) -> TaskSet:
        """:meth:`merged`, in time and memory linear in ``num_tasks``: for whole journals.

        A local journal holds one record per task, 10**7 for a large stage:
        marking them in a mask of ``num_tasks`` bytes beats sorting them.

        >>> TaskSet.covering(np.array([4, 0, 1, 7]), np.array([5, 1, 3, 7]), 9).ranges
        [(0, 3), (4, 5)]
        """
        starts, stops = np.clip(starts, 0, num_tasks), np.clip(stops, 0, num_tasks)
        mask = np.zeros(num_tasks + 2, np.int8)
        single = stops - starts == 1
        mask[starts[single] + 1] = 1
        for start, stop in zip(starts[~single], stops[~single]):  # few: merged ranges
            mask[start + 1 : stop + 1] = 1
        edges = np.flatnonzero(np.diff(mask))
        return cls(edges[0::2], edges[1::2])

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, as ``(start, stop)`` pairs."""
        return [(int(a), int(b)) for a, b in zip(self._starts, self._stops)]

    @property
    def count(self) -> int:
        """How many tasks are in the set."""
        return int((self._stops - self._starts).sum())

    def missing(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        """The ranges of tasks ``start .. stop-1`` that are not in the set, in order."""
        i = int(np.searchsorted(self._stops, start, side="right"))
        position = start
        while position < stop and i < len(self._starts):
            first, end = int(self._starts[i]), int(self._stops[i])
            if first >= stop:
                break
            if first > position:
                yield position, first
            position = max(position, end)
            i += 1
        if position < stop:
            yield position, stop


_NOTHING = TaskSet(np.zeros(0), np.zeros(0))


def finished(
    ref: JournalRef | None,
    grid: TaskGrid,
    policy: RetryPolicy | None = None,
    *,
    follow: bool = False,
    fresh: bool = False,
) -> TaskSet:
    """The tasks of a stage (numbered over ``grid``) recorded as done, by any process of any run.

    ``ref`` is ``None`` for a stage that keeps no journal: nothing is done.

    ``follow``: as this process last read the journal, for engines that may
    run a batch again (after a worker died, or as a retry): they skip what
    another process finished. At most :data:`FOLLOW_SECONDS` old, so a task
    finished since may be done twice; reading costs only what was recorded
    since the last look. ``fresh`` (with ``follow``): look now, however recent
    the last look, for a reader that must see every record made before it asked.
    """
    if ref is None:
        return _NOTHING
    fp, num_tasks = grid_fingerprint(grid, ref.job), grid.num_tasks
    if follow:
        return _followed(ref, fp, num_tasks, policy, fresh)
    found = retrying(
        lambda: _read_all(ref.location), f"reading the journal {ref.location.describe()}", policy
    )
    pairs = [_decode(data, fp) for data in found]
    starts = np.concatenate([np.zeros(0, "<u8"), *(p[0] for p in pairs)]).astype(np.int64)
    stops = np.concatenate([np.zeros(0, "<u8"), *(p[1] for p in pairs)]).astype(np.int64)
    return TaskSet.covering(starts, np.minimum(stops, num_tasks), num_tasks)


def _read_all(location: StoreLocation) -> list[bytes]:
    """The contents of every file or object of a journal folder."""
    local = location.local_path
    if local is not None:
        try:
            entries = list(os.scandir(local))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            try:
                with open(entry.path, "rb") as file:
                    found.append(file.read())
            except FileNotFoundError:  # removed meanwhile (a finishing run)
                continue
        return found
    store = location.open_store(read_only=True)

    async def read() -> list[bytes]:
        prototype = default_buffer_prototype()
        found = []
        async for key in store.list_prefix(f"{location.path}/"):
            buffer = await store.get(key, prototype=prototype)
            if buffer is not None:
                found.append(buffer.to_bytes())
        return found

    return sync(read())


#: A process reads a stage's journal again for ``finished(follow=True)`` at most this often.
FOLLOW_SECONDS = 1.0


class _Follower:
    """One process's view of a stage's journal, read incrementally (``finished(follow=True)``).

    Local files are appended to, so only their new whole records are read. Of
    an object-store journal, objects a writer has rolled past never change
    and are read once; each writer's newest object is read again, at most
    every :data:`FOLLOW_SECONDS` (longer past ten writers, to spare requests).
    """

    def __init__(self, location: StoreLocation, fp: bytes, policy: RetryPolicy) -> None:
        self._location, self._fp, self._policy = location, fp, policy
        self._seen: dict[str, int] = {}  # file: bytes read (-1: not ours); object: read (1)
        self._starts, self._stops = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._due, self._lock = 0.0, threading.Lock()

    def done(self, num_tasks: int, fresh: bool = False) -> TaskSet:
        with self._lock:
            if fresh or time.monotonic() >= self._due:
                pairs, writers = retrying(
                    self._read_new, f"reading the journal {self._location.describe()}", self._policy
                )
                for starts, stops in pairs:
                    self._starts = np.concatenate([self._starts, starts.astype(np.int64)])
                    self._stops = np.concatenate([self._stops, stops.astype(np.int64)])
                merged = TaskSet.merged(self._starts, self._stops)
                self._starts, self._stops = merged._starts, merged._stops
                # Past ten writers, look less often: each look reads every newest object.
                self._due = time.monotonic() + FOLLOW_SECONDS * max(1.0, writers / 10)
            return TaskSet.merged(self._starts, np.minimum(self._stops, num_tasks))

    def _read_new(self) -> tuple[list[tuple[Any, Any]], int]:
        local = self._location.local_path
        return (self._read_files(str(local)), 0) if local is not None else self._read_objects()

    def _read_files(self, folder: str) -> list[tuple[Any, Any]]:
        pairs = []
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        for entry in entries:
            seen, size = self._seen.get(entry.name, 0), entry.stat().st_size
            if seen < 0 or size - max(seen, 16) < 16:
                continue
            with open(entry.path, "rb") as file:
                if seen == 0:
                    if file.read(16) != _MAGIC + self._fp:
                        self._seen[entry.name] = -1
                        continue
                    seen = 16
                file.seek(seen)
                body = file.read((size - seen) // 16 * 16)
            self._seen[entry.name] = seen + len(body)
            pairs.append(_records(body, self._fp))
        return pairs

    def _read_objects(self) -> tuple[list[tuple[Any, Any]], int]:
        store = self._location.open_store(read_only=True)
        keys = sync(_keys(store, f"{self._location.path}/"))
        newest: dict[str, int] = {}
        for key in keys:
            writer, _, seq = key.rpartition(".")
            if seq.isdigit():
                newest[writer] = max(newest.get(writer, 0), int(seq))
        wanted = []
        for key in keys:
            writer, _, seq = key.rpartition(".")
            changing = seq.isdigit() and int(seq) == newest[writer]
            # Read again while its writer may rewrite it, and once more after it rolled on.
            if changing or self._seen.get(key) != 2:
                wanted.append(key)
                self._seen[key] = 1 if changing else 2
        found = sync(_get_all(store, wanted))
        return [_decode(data, self._fp) for data in found], len(newest)


async def _keys(store: Any, prefix: str) -> list[str]:
    return [key async for key in store.list_prefix(prefix)]


async def _get_all(store: Any, keys: list[str]) -> list[bytes]:
    prototype = default_buffer_prototype()
    found = []
    for key in keys:
        buffer = await store.get(key, prototype=prototype)
        if buffer is not None:
            found.append(buffer.to_bytes())
    return found


_followers: OrderedDict[tuple[Any, ...], _Follower] = OrderedDict()


def _followed(
    ref: JournalRef, fp: bytes, num_tasks: int, policy: RetryPolicy | None, fresh: bool
) -> TaskSet:
    """:func:`finished` ``(follow=True)``: this process's incrementally read view."""
    key = (os.getpid(), *ref.location.key, fp)
    with _writers_lock:
        follower = _followers.get(key)
        if follower is None:
            follower = _followers[key] = _Follower(ref.location, fp, policy or RetryPolicy())
            while len(_followers) > MAX_RECORDERS:
                _followers.popitem(last=False)
        _followers.move_to_end(key)
    return follower.done(num_tasks, fresh)


class Recorder(Protocol):
    """Records finished tasks of one stage: ``add`` each, then ``commit``."""

    def add(self, task: int) -> None:
        """Note that ``task`` finished: every write it made returned."""

    def commit(self) -> None:
        """Return once every task added so far is recorded in the store."""


class _NoJournal:
    def add(self, task: int) -> None:
        pass

    def commit(self) -> None:
        pass


def _writer_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:12]}"


def _record(task: int, fp: bytes) -> bytes:
    """The record of one task, as :func:`_encode` makes it, without numpy's per-call cost.

    >>> fp = grid_fingerprint(TaskGrid((10,), (1,)))
    >>> _record(7, fp) == _encode([(7, 8)], fp)
    True
    """
    salt = int.from_bytes(fp, "little")
    mask = 2**64 - 1
    mixed = ((task * int(_MIX[0])) & mask) ^ (int(_MIX[1]) & mask) ^ salt
    return struct.pack("<QII", task, 1, mixed >> 32)


class _FileJournal:
    """A journal file this process appends one record per task to."""

    def __init__(self, folder: str, fp: bytes, policy: RetryPolicy) -> None:
        self._fp, self._policy, self._lock = fp, policy, threading.Lock()
        path = os.path.join(folder, _writer_name())
        self._path = path

        def create() -> int:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size == 0:
                _write_all(fd, _MAGIC + fp)
            return fd

        self._fd = retrying(create, f"creating the journal file {path}", policy)

    def add(self, task: int) -> None:
        record = _record(task, self._fp)
        with self._lock:
            retrying(
                lambda: _write_all(self._fd, record),
                f"recording task {task} in the journal file {self._path}",
                self._policy,
            )

    def commit(self) -> None:
        pass  # every record went to the kernel in add()

    def __del__(self) -> None:
        # Dropped from the cache and done with by every batch: give the descriptor back.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """One ``write()``; a short one (a full disk) is an error, not a torn record."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(28, f"short write to a journal ({written} of {len(data)} bytes)")


class _ObjectJournal:
    """A journal object this process rewrites with its merged set of finished tasks."""

    def __init__(self, location: StoreLocation, fp: bytes, policy: RetryPolicy) -> None:
        self._location, self._fp, self._policy = location, fp, policy
        self._name, self._seq = _writer_name(), 0
        self._ranges: list[list[int]] = []  # sorted, merged [start, stop] of this object
        self._added = self._written = 0  # tasks added, and added when the last PUT began
        self._writing = False
        self._last = time.monotonic()
        self._cond = threading.Condition()

    def add(self, task: int) -> None:
        with self._cond:
            _insert(self._ranges, task)
            self._added += 1
            due = time.monotonic() - self._last > FLUSH_SECONDS
        if due:
            self.commit()

    def commit(self) -> None:
        with self._cond:
            wanted = self._added
            while self._written < wanted:
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                upto, key = self._added, f"{self._location.path}/{self._name}.{self._seq}"
                data = _MAGIC + self._fp + _encode([(a, b) for a, b in self._ranges], self._fp)
                if len(self._ranges) > ROLL_RANGES:
                    self._seq, self._ranges = self._seq + 1, []
                self._cond.release()
                try:
                    self._put(key, data)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()
                self._written, self._last = max(self._written, upto), time.monotonic()

    def _put(self, key: str, data: bytes) -> None:
        store = self._location.open_store()
        buffer = default_buffer_prototype().buffer.from_bytes(data)
        retrying(
            lambda: sync(store.set(key, buffer)),
            f"writing the journal {self._location.describe()}",
            self._policy,
        )


def _insert(ranges: list[list[int]], task: int) -> None:
    """Add ``task`` to sorted, merged ``[start, stop]`` ranges (tasks finish mostly in order).

    >>> r = [[0, 2], [5, 6]]
    >>> for t in (2, 4, 3, 9):
    ...     _insert(r, t)
    >>> r
    [[0, 6], [9, 10]]
    """
    i = len(ranges)
    while i and ranges[i - 1][0] > task:
        i -= 1
    if i and ranges[i - 1][1] > task:
        return  # recorded already
    joins_left = bool(i) and ranges[i - 1][1] == task
    joins_right = i < len(ranges) and ranges[i][0] == task + 1
    if joins_left and joins_right:
        ranges[i - 1][1] = ranges.pop(i)[1]
    elif joins_left:
        ranges[i - 1][1] = task + 1
    elif joins_right:
        ranges[i][0] = task
    else:
        ranges.insert(i, [task, task + 1])


#: Recorders this process keeps at most; a batch holds on to its own, so one
#: dropped here while in use is closed only when that batch is done with it.
MAX_RECORDERS = 64

_writers: OrderedDict[tuple[Any, ...], Recorder] = OrderedDict()
_writers_lock = threading.Lock()


def recorder(ref: JournalRef | None, grid: TaskGrid, policy: RetryPolicy | None = None) -> Recorder:
    """This process's recorder for a stage's journal (one per process, stage and run)."""
    if ref is None:
        return _NoJournal()
    fp = grid_fingerprint(grid, ref.job)
    # The pid: a forked worker must not append to its parent's file.
    key = (os.getpid(), *ref.location.key, ref.run, fp)
    with _writers_lock:
        found = _writers.get(key)
        if found is None:
            local = ref.location.local_path
            policy = policy or RetryPolicy()
            found = (
                _FileJournal(str(local), fp, policy)
                if local is not None
                else _ObjectJournal(ref.location, fp, policy)
            )
            _writers[key] = found
            while len(_writers) > MAX_RECORDERS:
                _writers.popitem(last=False)
        _writers.move_to_end(key)
        return found


def record_all(ref: JournalRef | None, grid: TaskGrid, policy: RetryPolicy | None = None) -> None:
    """Record every task of a stage (numbered over ``grid``) as done, in one record."""
    if ref is None or not grid.num_tasks:
        return
    fp = grid_fingerprint(grid, ref.job)
    data = _MAGIC + fp + _encode([(0, grid.num_tasks)], fp)
    name = f"{_writer_name()}.all"
    local = ref.location.local_path

    def write() -> None:
        if local is not None:
            os.makedirs(local, exist_ok=True)
            with open(os.path.join(local, name), "wb") as file:
                file.write(data)
        else:
            buffer = default_buffer_prototype().buffer.from_bytes(data)
            sync(ref.location.open_store().set(f"{ref.location.path}/{name}", buffer))

    retrying(write, f"writing the journal {ref.location.describe()}", policy)


def discard(ref: JournalRef | None, policy: RetryPolicy | None = None) -> None:
    """Delete a stage's journal: every run's, every process's."""
    if ref is None:
        return
    with _writers_lock:
        for key in [k for k in _writers if k[-2] == ref.run and k[1:-2] == ref.location.key]:
            del _writers[key]
    local = ref.location.local_path

    def delete() -> None:
        if local is None:
            sync(ref.location.open_store().delete_dir(ref.location.path))
        elif local.exists():
            shutil.rmtree(local)

    retrying(delete, f"deleting the journal {ref.location.describe()}", policy)


# The incomplete marker.


def write_marker(location: StoreLocation, document: dict[str, Any]) -> None:
    """Write the incomplete marker into ``location`` (a target), whole or not at all."""
    text = json.dumps(document, indent=1).encode()
    local = location.local_path
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        partial = local / f"{INCOMPLETE_KEY}.{uuid.uuid4().hex}.partial"
        partial.write_bytes(text)
        os.replace(partial, local / INCOMPLETE_KEY)
        return
    buffer = default_buffer_prototype().buffer.from_bytes(text)
    sync(location.open_store().set(location.child(INCOMPLETE_KEY).path, buffer))


def read_marker(location: StoreLocation) -> dict[str, Any] | None:
    """The incomplete marker in ``location``; ``None`` when there is none.

    A marker that cannot be parsed reads as ``{}``: the target is still incomplete.
    An Icechunk session holds none (a run's writes reach it only when it completes).
    """
    if location.icechunk is not None:
        return None
    local = location.local_path
    if local is not None:
        try:
            text = (local / INCOMPLETE_KEY).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
    else:
        store = location.open_store(read_only=True)
        key = location.child(INCOMPLETE_KEY).path
        buffer = sync(store.get(key, prototype=default_buffer_prototype()))
        if buffer is None:
            return None
        text = buffer.to_bytes()
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def remove_marker(location: StoreLocation) -> None:
    """Remove the incomplete marker from ``location``: the target is complete."""
    local = location.local_path
    if local is not None:
        (local / INCOMPLETE_KEY).unlink(missing_ok=True)
        return
    sync(location.open_store().delete(location.child(INCOMPLETE_KEY).path))
