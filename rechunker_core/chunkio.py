"""Whole chunks in and out, in the calling thread: store API plus the array's codecs.

zarr's synchronous ``array[region]`` gathers, decodes and scatters every chunk
on one event-loop thread; with several task threads they mostly wait for it
(docs/engines.md). Here each task thread fetches the encoded chunks itself,
decodes them with numcodecs straight into the task's region buffer where a
chunk is contiguous in it, and encodes and stores its write chunks itself.
Buffers are reused across the tasks a thread runs, so fresh pages are not
zeroed again and again. Local chunks of a task may also be handled by the
helpers of idle workers (:mod:`rechunker_core.assist`), each in its own
thread, each chunk by exactly one thread.

It reads zarr's array metadata (``codecs`` as their JSON configuration,
format 2's ``compressor``, ``encode_chunk_key``) and runs store requests
through :mod:`rechunker_core.zarr_internals`. :func:`chunk_io` returns
``None`` for anything it does not know (sharding, transposes, filters,
variable-length types, unknown codecs, big-endian v3 data), and the caller
then uses zarr's own ``array[region]`` path; tests/test_chunkio.py runs both
paths on the oldest and newest zarr ``make test`` installs.

Regions are tuples of slices with explicit starts and stops, and cover whole
chunks along every dimension they do not span (see :mod:`rechunker_core.spec`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import math
import os
import queue
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from itertools import islice, product
from pathlib import Path
from typing import Any, TypeGuard

import numcodecs
import numpy as np
import zarr
from numcodecs.abc import Codec
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from rechunker_core.algorithm import MemoryModel
from rechunker_core.assist import ASSIST
from rechunker_core.blocks import Blocks
from rechunker_core.geometry import Region
from rechunker_core.retry import RetryPolicy, retrying, retrying_async
from rechunker_core.zarr_internals import submit

__all__ = [
    "CONCURRENCY",
    "DELETIONS",
    "FREED_MEMORY",
    "REGIONS",
    "SCRATCH",
    "SMALL_WINDOW",
    "BufferPool",
    "ChunkIO",
    "all_fill",
    "chunk_io",
    "reading_memory",
    "writing_memory",
]

#: Requests one task keeps in flight on stores other than local directories,
#: so that object-store latency overlaps (local reads and writes go one by one).
CONCURRENCY = 16
#: Smaller chunks go more at once, up to 64 while they fit in 16 MiB (chunks
#: under 1 MiB): a task writing many small chunks is bound by round trips, and
#: no more bytes are in flight than 16 chunks of 1 MiB would hold.
SMALL_WINDOW = (64, 16 * 2**20)
#: The memory model of a task reading or writing an object store's chunks.
_REMOTE = MemoryModel(concurrency=CONCURRENCY, small_window=SMALL_WINDOW)

#: dtype kinds whose chunks are plain fixed-size bytes.
_FIXED_KINDS = frozenset("biufcmM")

_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


# --------------------------------------------------------------------------
# Codecs: bytes <-> one chunk
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkCodec:
    """How one chunk is stored: its bytes in C order, through ``compressor`` if any."""

    compressor: Codec | None = None

    def decode_into(self, data: Any, out: np.ndarray[Any, Any]) -> None:
        """Decode ``data`` into ``out``, a C-contiguous chunk-sized array."""
        flat = out.reshape(-1).view(np.uint8)
        if self.compressor is None:
            flat[:] = np.frombuffer(data, np.uint8)
        else:
            self.compressor.decode(data, out=flat)

    def encode(self, chunk: np.ndarray[Any, Any]) -> Any:
        """Encode a C-contiguous chunk; returns a bytes-like object."""
        if self.compressor is None:
            return chunk.reshape(-1).view(np.uint8).data
        return self.compressor.encode(chunk)


def all_fill(block: np.ndarray[Any, Any], fill_value: Any) -> bool:
    """Whether every element of ``block`` is ``fill_value``, bit for bit (as zarr decides).

    ``-0.0`` is not ``0.0``: both compare equal as numbers, but a chunk of
    ``-0.0`` skipped as empty would read back as ``0.0``. Any NaN matches a
    NaN fill value. Data chunks rarely start with the fill value, so the
    first element settles most chunks without reading the rest.

    >>> all_fill(np.array([np.nan, np.nan]), np.nan), all_fill(np.zeros(2), 1.0)
    (True, False)
    >>> all_fill(np.array([0.0, -0.0]), 0.0), all_fill(np.array([1.0, 2.0]), 1.0)
    (False, False)
    """
    fill = np.asarray(fill_value, dtype=block.dtype)
    if block.dtype.kind in "fc" and np.isnan(fill).any():
        first = block.flat[:1]
        if first.size and not np.array_equal(first[0], fill, equal_nan=True):
            return False
        return bool(np.array_equal(block, np.broadcast_to(fill, block.shape), equal_nan=True))
    if block.dtype.hasobject or block.dtype.kind in "USV":
        return bool(np.array_equal(block, np.broadcast_to(fill, block.shape)))
    bits = np.dtype(f"V{block.dtype.itemsize}")
    contiguous = np.ascontiguousarray(block)
    fill_bits = fill.reshape(1).view(bits)[0]
    if contiguous.size and contiguous.reshape(-1)[:1].view(bits)[0] != fill_bits:
        return False
    return bool((contiguous.reshape(-1).view(bits) == fill_bits).all())


def _v3_compressor(config: dict[str, Any]) -> Codec | None:
    """The numcodecs equivalent of a zarr v3 bytes-to-bytes codec, or None if unknown."""
    name, options = config["name"], config.get("configuration", {})
    if name == "blosc":
        return numcodecs.Blosc(
            cname=str(options["cname"]),
            clevel=int(options["clevel"]),
            shuffle=_SHUFFLE[str(options["shuffle"])],
            blocksize=int(options.get("blocksize", 0)),
            typesize=int(options["typesize"]),
        )
    if name == "zstd":
        return numcodecs.Zstd(
            level=int(options.get("level", 0)), checksum=bool(options.get("checksum"))
        )
    if name == "gzip":
        return numcodecs.GZip(level=int(options.get("level", 5)))
    return None


def _v3_codec(array: zarr.Array[Any]) -> ChunkCodec | None:
    configs: list[dict[str, Any]] = [
        dict(codec.to_dict())  # type: ignore[arg-type]
        for codec in array.metadata.codecs  # type: ignore[union-attr]
    ]
    if not configs or configs[0]["name"] != "bytes":
        return None  # transpose, sharding, vlen strings, ...
    endian = configs[0].get("configuration", {}).get("endian")
    if endian not in (None, sys.byteorder):
        return None
    if len(configs) == 1:
        return ChunkCodec()
    compressor = _v3_compressor(configs[1]) if len(configs) == 2 else None
    return None if compressor is None else ChunkCodec(compressor)


def chunk_codec(array: zarr.Array[Any]) -> ChunkCodec | None:
    """The codec chain of ``array``'s chunks, if this module handles it."""
    if array.shards is not None or np.dtype(array.dtype).kind not in _FIXED_KINDS:
        return None
    if array.metadata.zarr_format == 2:
        metadata: Any = array.metadata
        if metadata.order != "C" or metadata.filters:
            return None
        return ChunkCodec(compressor=metadata.compressor)
    if array.config.order != "C":
        return None
    return _v3_codec(array)


# --------------------------------------------------------------------------
# Buffers reused across tasks
# --------------------------------------------------------------------------


class BufferPool:
    """Memory reused from one task to the next, given back to the system when idle.

    Filling memory already touched runs two to three times as fast as filling
    fresh pages, which the kernel must zero first (docs/engines.md), and a
    stage asks for the same few sizes again and again. :meth:`take` hands out
    a returned buffer only if it is the size asked for (within
    :data:`SLACK` bytes), so a task never holds more than the planner's memory
    model counts for it; when none is, the returned buffers belong to sizes no
    longer asked for and are dropped, and so are the free buffers of the
    pools it goes ``along`` with (a new stage's first task would otherwise hold
    the last stage's scratch chunk besides its own region). Buffers nobody
    took for :data:`IDLE_SECONDS` are dropped too, so an idle process holds
    nothing.
    """

    #: How long a returned buffer is kept for another task.
    IDLE_SECONDS = 2.0
    #: How much larger than asked for a reused buffer may be.
    SLACK = 64 * 1024

    def __init__(self, along: Sequence[BufferPool] = ()) -> None:
        self._lock = threading.Lock()
        self._free: list[tuple[float, np.ndarray[Any, Any]]] = []
        self._timer: threading.Timer | None = None
        self._along = tuple(along)

    def take(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
        """A C-contiguous, uninitialised array of ``shape`` and ``dtype``."""
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        with self._lock:
            fits = [
                i
                for i, (_, b) in enumerate(self._free)
                if nbytes <= b.nbytes <= nbytes + self.SLACK
            ]
            buffer = self._free.pop(fits[0])[1] if fits else None
            dropped = buffer is None and bool(self._free)
            if dropped:
                self._free.clear()  # freed before the new buffer is made
        if dropped:
            self.drop()
        if buffer is None:
            buffer = np.empty(nbytes, np.uint8)
        return buffer[:nbytes].view(dtype).reshape(shape)

    def give(self, array: np.ndarray[Any, Any]) -> None:
        """Return an array :meth:`take` handed out."""
        base = array
        while isinstance(base.base, np.ndarray):
            base = base.base
        with self._lock:
            self._free.append((time.monotonic(), base))
            if self._timer is None:
                self._start_timer()

    def _start_timer(self) -> None:
        self._timer = threading.Timer(self.IDLE_SECONDS, self._trim)
        self._timer.daemon = True
        self._timer.start()

    def _trim(self) -> None:
        with self._lock:
            now = time.monotonic()
            kept = [(t, b) for t, b in self._free if now - t < self.IDLE_SECONDS]
            dropped = len(kept) < len(self._free)
            self._free = kept
            self._timer = None
            if self._free:
                self._start_timer()
        if dropped:
            FREED_MEMORY.give_back()

    def clear(self) -> None:
        """Drop every free buffer now."""
        with self._lock:
            self._free.clear()

    def drop(self) -> None:
        """Drop every free buffer now, and those of the pools this one goes
        ``along`` with, and hand the memory back to the system."""
        self.clear()
        for pool in self._along:
            pool.clear()
        FREED_MEMORY.give_back()

    @property
    def held(self) -> int:
        """Bytes of free buffers held."""
        with self._lock:
            return sum(b.nbytes for _, b in self._free)


class _FreedMemory:
    """Keeps freed memory in this process's heap while a run lasts (glibc only).

    glibc hands blocks of more than a few hundred kB straight back to the
    kernel when they are freed, so every chunk a codec encodes (numcodecs
    gives no way to encode into a buffer of ours) lands in fresh pages, which
    the kernel zeroes first: measured here, 80,000 page faults and about 0.5
    CPU-s per GB written. During a run, blocks of up to 64 MB stay in the
    heap and are reused; when the last run ends, the thresholds go back to
    glibc's defaults and ``malloc_trim`` gives the memory back.
    """

    #: Tasks at least this large give the heap's free pages back when they end.
    TRIM_AFTER = 8 * 2**20

    _MMAP_THRESHOLD, _TRIM_THRESHOLD = -3, -1  # mallopt parameter numbers
    _KEEP = 64 * 2**20
    _DEFAULT = 128 * 1024  # glibc's initial value of both thresholds

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._libc: Any = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL("libc.so.6")
                self._libc = (
                    libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
                )

    def give_back(self) -> None:
        """Hand the heap's free pages back to the system now, in every arena.

        Each thread allocates from an arena of its own, and one arena's free
        memory cannot serve another's request: the buffers of a size no longer
        asked for would otherwise stay resident while the next sizes are
        allocated elsewhere, over the plan's peak task memory.
        """
        if self._libc is not None:
            self._libc.malloc_trim(0)

    def task_done(self, region_bytes: int) -> None:
        """After a task of ``region_bytes`` ran while freed memory is kept: hand
        the heap's free pages back if the task was large.

        Codecs' own scratch memory (c-blosc's 1 MiB blocks, for one) leaves
        free blocks in each thread's heap that later requests did not reuse:
        six per thread after a few tasks, which held RSS 1-3% over the plan's
        peak task memory per worker (benchmarks/memory_model.py). A trim takes
        about 35 us here; a task of :data:`TRIM_AFTER` bytes or more takes
        milliseconds.
        """
        if self._runs and region_bytes >= self.TRIM_AFTER:
            self.give_back()

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """Within this block (any number of threads at once), freed memory is reused."""
        with self._lock:
            self._runs += 1
            if self._runs == 1 and self._libc is not None:
                self._libc.mallopt(self._MMAP_THRESHOLD, self._KEEP)
                self._libc.mallopt(self._TRIM_THRESHOLD, 4 * self._KEEP)
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0 and self._libc is not None:
                    self._libc.mallopt(self._MMAP_THRESHOLD, self._DEFAULT)
                    self._libc.mallopt(self._TRIM_THRESHOLD, self._DEFAULT)
                    self._libc.malloc_trim(0)


#: While a plan runs in this process: ``with FREED_MEMORY.kept(): ...``.
FREED_MEMORY = _FreedMemory()


class _Deletions:
    """Deletes freed chunk files on a thread of their own while a run lasts.

    Deleting a file whose blocks are already on disk can wait for the disk:
    on a file system mounted with ``discard`` (as cloud VMs often are, this
    project's machines among them), each unlink waits until the device has
    discarded the file's blocks, about 4 ms per 16 MB chunk here. A task
    that frees a few hundred MB would sit off its CPU for that long.

    Within :meth:`deferred` (the in-process executors wrap their runs in
    it), :meth:`queued` queues a deletion for one deleting thread.
    The block ends only when every queued deletion is done, and
    :func:`rechunker_core.copy.finish` waits for them (:meth:`flush`) before
    it deletes the intermediates: a run never ends with one pending, so
    nothing one run queued can reach the files of a later run at the same
    paths. The first deletion that fails is raised by the next
    :meth:`flush`. Outside the block (the worker processes of other
    engines, whose runs end elsewhere), nothing is queued.

    There, chunk files are renamed at once instead, each to a hidden name
    of its own in its folder, and unlinked by a thread of the process
    (:meth:`unlink_soon`): a rename does not wait for the disk, and no later
    run can write a file of that name, so nothing has to wait for the
    unlinks. A file whose unlink never came (the process died first) lies
    in an intermediate, which the run's last step deletes whole.
    """

    def __init__(self) -> None:
        self._forget()
        if hasattr(os, "register_at_fork"):
            # A forked child has none of the parent's threads: it starts afresh.
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._queue: queue.Queue[Callable[[], object] | None] | None = None
        self._thread: threading.Thread | None = None
        self._errors: list[BaseException] = []
        self._unlinking: queue.Queue[list[str]] | None = None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Within this block (any number of runs at once), deletions are queued."""
        with self._lock:
            self._runs += 1
            if self._queue is None:
                self._queue = queue.Queue()
                self._thread = threading.Thread(
                    target=self._work, args=(self._queue,), name="rechunk-delete", daemon=True
                )
                self._thread.start()
        failed = True
        try:
            yield
            failed = False
        finally:
            self._leave(forget_errors=failed)
        self._raise_first()

    def _leave(self, forget_errors: bool) -> None:
        """One run left: the last one waits for the queue to drain and stops the thread.

        A run that is raising anyway keeps its exception: its deletions'
        errors are then forgotten, not raised in some later run.
        """
        with self._lock:
            self._runs -= 1
            if self._runs:
                return
            pending, thread = self._queue, self._thread
            self._queue = self._thread = None
        if pending is not None and thread is not None:
            pending.put(None)
            thread.join()
        if forget_errors:
            with self._lock:
                self._errors.clear()

    @property
    def pending(self) -> queue.Queue[Callable[[], object] | None] | None:
        """The queue of the deleting thread while a run defers deletions, else None."""
        return self._queue

    def queued(self, deletion: Callable[[], object]) -> bool:
        """Queue ``deletion`` within :meth:`deferred` and return True; else False."""
        with self._lock:
            if self._queue is not None:
                self._queue.put(deletion)
                return True
        return False

    def unlink_soon(self, paths: list[str]) -> None:
        """Unlink the files ``paths`` on this process's unlinking thread (started on
        first use), for files set aside under names no later run can write.

        A failure is ignored: the files lie in an intermediate, which the run's
        last step deletes whole (and tolerates files vanishing meanwhile). A
        process that exits normally unlinks what is queued first (a part of an
        array job would otherwise leave its share of the intermediate's disk
        space taken until the last step).
        """
        if not paths:
            return
        with self._lock:
            if self._unlinking is None:
                self._unlinking = queue.Queue()
                threading.Thread(
                    target=self._unlink_each,
                    args=(self._unlinking,),
                    name="rechunk-unlink",
                    daemon=True,
                ).start()
                atexit.register(self.unlinked)
            self._unlinking.put(paths)

    def unlinked(self) -> None:
        """Wait until every file queued by :meth:`unlink_soon` is unlinked."""
        with self._lock:
            pending = self._unlinking
        if pending is not None:
            pending.join()

    @staticmethod
    def _unlink_each(pending: queue.Queue[list[str]]) -> None:
        while True:
            paths = pending.get()
            for path in paths:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            pending.task_done()

    def flush(self) -> None:
        """Wait until every queued deletion is done; raise the first that failed."""
        with self._lock:
            pending = self._queue
        if pending is not None:
            pending.join()
        self._raise_first()

    def _raise_first(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    def _work(self, pending: queue.Queue[Callable[[], object] | None]) -> None:
        while (deletion := pending.get()) is not None:
            try:
                deletion()
            except BaseException as error:  # raised by the next flush, in a run's thread
                # Even SystemExit: a deleting thread that died would leave flush() waiting.
                with self._lock:
                    self._errors.append(error)
            finally:
                pending.task_done()
        pending.task_done()


#: While a plan runs in this process: ``with DELETIONS.deferred(): ...``.
DELETIONS = _Deletions()


#: The process's pools: one for task regions, one for scratch chunks, so each
#: sees one size per stage. A region of a new size starts a new stage: the
#: scratch chunks of the last one are dropped with its regions.
SCRATCH = BufferPool()
REGIONS = BufferPool(along=[SCRATCH])


# --------------------------------------------------------------------------
# Where chunks are stored
# --------------------------------------------------------------------------


def _helper_done() -> None:
    """A helper leaves a task's chunks: what it read and encoded came from its
    own heap, which would keep it resident while the worker it stood in for
    starts its next task, over that task's peak; hand it back."""
    if ASSIST.in_helper():
        FREED_MEMORY.give_back()


class _Room:
    """A byte buffer for one chunk file at a time, made larger as files need."""

    def __init__(self) -> None:
        self._view = memoryview(b"")

    def release(self) -> None:
        """Let the buffer go (a view handed out keeps it alive)."""
        self._view = memoryview(b"")

    def at_least(self, size: int, keep: int = 0) -> memoryview:
        """A buffer of ``size`` bytes or more, whose first ``keep`` bytes are kept."""
        if len(self._view) < size:
            # An eighth over, so that the next chunks, a little larger, fit too.
            larger = np.empty(size + size // 8, np.uint8).data
            larger[:keep] = self._view[:keep]
            self._view = larger
        return self._view


class _LocalChunks:
    """Chunk files in a local directory: plain reads, atomic writes (temp file + rename).

    A chunk file is complete or absent: a task killed mid-write leaves only a
    hidden ``.partial`` file, never a torn chunk. Each read and write is
    retried on a transient error (``EIO`` of a network file system, ...) as
    ``retry`` says.
    """

    def __init__(self, root: Path, retry: RetryPolicy | None) -> None:
        self.root = root
        self.retry = retry
        self._root = str(root)
        self._made: set[str] = set()

    def _what(self, verb: str, key: str) -> Callable[[], str]:
        return lambda: f"{verb} chunk {key!r} in {self.root}"

    def _path(self, key: str) -> str:
        # Plain strings, not pathlib: pathlib interns every name it parses, and
        # each write's scratch name is new, so the interpreter's table of
        # interned strings would keep growing and be reallocated during tasks
        # (7.7 MB at once in the test suite's process), outside any budget.
        return os.path.join(self._root, key)

    def read_into(self, key: str, out: np.ndarray[Any, Any]) -> bool:
        """Read the raw chunk ``key`` into the C-contiguous ``out``; False if absent."""
        return retrying(lambda: self._read_into(key, out), self._what("reading", key), self.retry)

    def _read_into(self, key: str, out: np.ndarray[Any, Any]) -> bool:
        view = out.reshape(-1).view(np.uint8).data
        try:
            with open(self._path(key), "rb", buffering=0) as file:
                got = file.readinto(view)
        except FileNotFoundError:
            return False
        if got != len(view):
            raise OSError(f"chunk {self._path(key)} holds {got} bytes, not {len(view)}")
        return True

    def read_many(self, keys: Sequence[str]) -> Iterator[tuple[int, Any]]:
        """``(index, bytes-like or None)`` for each key, in order.

        The chunks are read into one buffer, made larger only when a file does
        not fit: what one item holds is valid until the next is asked for. A
        fresh ``bytes`` per chunk, each of another size, left the heap of each
        task thread fragmented, about 7% of the plan's peak task memory over
        it in RSS (benchmarks/memory_model.py). The buffer is freed once the
        chunks are read, so the writes that follow can reuse its memory.
        """
        room = _Room()
        for i, key in enumerate(keys):
            yield i, self.read(key, room)

    def read(self, key: str, room: _Room) -> memoryview | None:
        """The bytes of chunk ``key`` in ``room`` (valid until it is used again), or None."""
        return retrying(partial(self._read, key, room), self._what("reading", key), self.retry)

    def _read(self, key: str, room: _Room) -> memoryview | None:
        try:
            file = open(self._path(key), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            return None
        with file:
            # A byte more than the file holds, so the read that finds its end
            # has room to look.
            view = room.at_least(os.fstat(file.fileno()).st_size + 1)
            size = 0
            while got := file.readinto(view[size:]):
                size += got
                if size == len(view):  # the file grew meanwhile: read on
                    view = room.at_least(2 * size, keep=size)
            return view[:size]

    def write_many(self, items: Iterator[tuple[str, Any]]) -> None:
        """Store each ``(key, bytes-like)``, one after another."""
        for key, data in items:
            self.write(key, data)

    def write(self, key: str, data: Any) -> None:
        """Store ``data`` as chunk ``key``, whole or not at all."""
        retrying(partial(self._write, key, data), self._what("writing", key), self.retry)

    def _write(self, key: str, data: Any) -> None:
        path = self._path(key)
        folder, name = os.path.split(path)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        scratch = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            with open(scratch, "wb", buffering=0) as file:
                view = memoryview(data).cast("B")
                while view:
                    view = view[file.write(view) :]
            os.replace(scratch, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(scratch)
            raise

    def delete_many(self, keys: Iterable[str]) -> None:
        """Delete each chunk of ``keys`` that is stored, as one deletion: a task of a
        sparse array frees hundreds of chunks never written, and queueing each
        cost more than the task (benchmarks/scale.py).

        Within a run of this process, on its deleting thread; elsewhere (a
        worker process of another engine) each file is set aside under a name
        of its own at once and unlinked on a thread (:class:`_Deletions`): the
        chunk is gone when this returns, and the task does not wait for the disk.
        """
        keys = list(keys)
        if not DELETIONS.queued(partial(self._for_each, keys, self._delete)):
            DELETIONS.unlink_soon(self._for_each(keys, self._set_aside))

    def _for_each(self, keys: list[str], action: Callable[[str], str | None]) -> list[str]:
        """Delete each of ``keys`` with ``action``, every one tried (and retried);
        return what the actions returned but None; raise the first failure."""
        failure: Exception | None = None
        results = []
        for key in keys:
            try:
                result = retrying(partial(action, key), self._what("deleting", key), self.retry)
            except Exception as error:
                failure = failure or error
            else:
                if result is not None:
                    results.append(result)
        if failure is not None:
            DELETIONS.unlink_soon(results)
            raise failure
        return results

    def _delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(key))

    def _set_aside(self, key: str) -> str | None:
        """Rename chunk ``key`` to a hidden name of its own; return that path, or
        None if the chunk is absent."""
        path = self._path(key)
        folder, name = os.path.split(path)
        aside = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.freed")
        try:
            os.rename(path, aside)  # one system call for an absent chunk, as unlink
        except FileNotFoundError:
            return None
        if os.path.isdir(aside):  # refused, as unlink() would: a chunk is a file
            os.rename(aside, path)
            raise IsADirectoryError(errno.EISDIR, "a folder where a chunk file belongs", path)
        return aside

    def any_exists(self, keys: Iterable[str]) -> bool:
        """Whether any of ``keys`` is stored.

        A missing directory rules out every key below it with one look, so a
        region of a sparse or still empty array costs a few ``stat`` calls,
        not one per chunk.
        """
        root = str(self.root)
        present: set[str] = set()
        missing: set[str] = set()
        for key in keys:
            parts = key.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder in missing:
                    break
                if folder not in present:
                    if not os.path.isdir(os.path.join(root, folder)):
                        missing.add(folder)
                        break
                    present.add(folder)
            else:
                if os.path.isfile(os.path.join(root, key)):
                    return True
        return False


class _StoreChunks:
    """Chunks of any other zarr store, through its async API.

    Up to ``concurrency`` requests are in flight at once, in a sliding window:
    while the task decodes one chunk (or encodes the next), the following
    requests are already on their way, so a store's latency overlaps with
    itself and with the task's work. Each request is retried on a transient
    error as ``retry`` says; its waits do not hold up the other requests.
    """

    def __init__(
        self, store: Store, path: str, concurrency: int, retry: RetryPolicy | None
    ) -> None:
        self.store = store
        self.prefix = f"{path}/" if path else ""
        self.concurrency = concurrency
        self.retry = retry

    def _what(self, verb: str, key: str) -> Callable[[], str]:
        return lambda: f"{verb} {key!r} in store {self.store}"

    def _get(self, key: str, prototype: Any) -> Future[Any]:
        return submit(
            retrying_async(
                lambda: self.store.get(key, prototype), self._what("reading", key), self.retry
            )
        )

    def _set(self, key: str, payload: Any) -> Future[Any]:
        return submit(
            retrying_async(
                lambda: self.store.set(key, payload), self._what("writing", key), self.retry
            )
        )

    def read_many(self, keys: Sequence[str]) -> Iterator[tuple[int, Any]]:
        """``(index, bytes or None)`` for each key, in order."""
        prototype = default_buffer_prototype()
        pending = iter(enumerate(keys))
        window: deque[tuple[int, Future[Any]]] = deque()

        def top_up() -> None:
            for i, key in islice(pending, self.concurrency - len(window)):
                window.append((i, self._get(self.prefix + key, prototype)))

        top_up()
        try:
            while window:
                i, request = window.popleft()
                buffer = request.result()
                top_up()
                yield i, None if buffer is None else buffer.as_numpy_array()
        finally:
            _settle(request for _, request in window)

    def write_many(self, items: Iterator[tuple[str, Any]]) -> None:
        """Store each ``(key, bytes-like)``; items are pulled only when there is room."""
        prototype = default_buffer_prototype()
        window: deque[Future[Any]] = deque()
        try:
            for key, data in items:
                # A copy: the chunk's buffer may be reused for the next one.
                payload = prototype.buffer.from_bytes(bytes(data))
                window.append(self._set(self.prefix + key, payload))
                if len(window) >= self.concurrency:
                    window.popleft().result()
            while window:
                window.popleft().result()
        finally:
            _settle(window)


def _settle(requests: Iterable[Future[Any]]) -> None:
    """After a failure: wait for requests still in flight, so none lands later."""
    for request in list(requests):
        with contextlib.suppress(BaseException):
            request.result()


def _chunks_of(
    store: Store, path: str, chunk_bytes: int, retry: RetryPolicy | None
) -> _LocalChunks | _StoreChunks:
    if _local(store):
        root = Path(str(store.root))
        return _LocalChunks(root / path if path else root, retry)
    return _StoreChunks(store, path, _REMOTE.window(chunk_bytes), retry)


# --------------------------------------------------------------------------
# One array
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    """The part of one chunk a region holds."""

    coords: tuple[int, ...]
    in_region: Region  # where it sits in the region buffer
    in_chunk: Region  # where it sits in the (full-size) chunk
    whole: bool  # the region holds the whole chunk


def _chunk_coords(region: Region, chunks: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """The grid coordinates of every chunk ``region`` touches, in C order.

    >>> list(_chunk_coords((slice(2, 6), slice(0, 3)), (4, 3)))
    [(0, 0), (1, 0)]
    """
    ranges = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, chunks, strict=True)]
    return product(*ranges)


def _held_chunk_coords(
    region: Region, chunks: tuple[int, ...], shape: tuple[int, ...]
) -> Iterator[tuple[int, ...]]:
    """The grid coordinates of every chunk ``region`` holds whole, in C order; an
    edge chunk counts when the region reaches the end of the array.

    >>> list(_held_chunk_coords((slice(2, 10), slice(0, 3)), (4, 3), (10, 3)))
    [(1, 0), (2, 0)]
    """
    ranges = []
    for r, c, n in zip(region, chunks, shape, strict=True):
        stop = -(-n // c) if r.stop >= n else r.stop // c
        ranges.append(range(-(-r.start // c), stop))
    return product(*ranges)


def _pieces(region: Region, chunks: tuple[int, ...], shape: tuple[int, ...]) -> Iterator[_Piece]:
    """Every chunk ``region`` touches, in C order, and where the two overlap.

    >>> [p.coords for p in _pieces((slice(2, 6),), (4,), (10,))]
    [(0,), (1,)]
    >>> next(_pieces((slice(2, 6),), (4,), (10,))).in_chunk
    (slice(2, 4, None),)
    """
    for coords in _chunk_coords(region, chunks):
        in_region, in_chunk, whole = [], [], True
        for i, r, c, n in zip(coords, region, chunks, shape, strict=True):
            lo, hi = max(i * c, r.start), min((i + 1) * c, r.stop, n)
            in_region.append(slice(lo - r.start, hi - r.start))
            in_chunk.append(slice(lo - i * c, hi - i * c))
            whole = whole and lo == i * c and hi == (i + 1) * c
        yield _Piece(coords, tuple(in_region), tuple(in_chunk), whole)


class ChunkIO:
    """Reads and writes whole chunks of one zarr array (see the module docstring).

    Parameters
    ----------
    array : zarr.Array
        Opened from ``store`` at ``path``.
    codec : ChunkCodec
        From :func:`chunk_codec`.
    retry : RetryPolicy or None
        How each store request is retried on a transient error.
    """

    def __init__(
        self,
        array: zarr.Array[Any],
        codec: ChunkCodec,
        store: Store,
        path: str,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.codec = codec
        self.shape = tuple(array.shape)
        self.chunks = tuple(array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.fill_value = array.fill_value
        self.skip_empty = not array.config.write_empty_chunks and array.fill_value is not None
        self._key: Callable[[tuple[int, ...]], str] = array.metadata.encode_chunk_key
        chunk_bytes = math.prod(self.chunks) * self.dtype.itemsize
        self._store = _chunks_of(store, path, chunk_bytes, retry)

    @property
    def _fill(self) -> Any:
        return 0 if self.fill_value is None else self.fill_value

    def read_into(self, region: Region, blocks: Blocks) -> int:
        """Fill ``blocks`` with the values in ``region``, chunk by chunk; return how
        many of its chunks were absent (and read as the fill value).

        A chunk that is one contiguous run of a block is decoded (or, stored
        raw on a local disk, read) straight into it; any other is decoded into
        a scratch chunk and copied into the blocks it spans. Local chunks are
        shared with idle workers' helpers (:mod:`rechunker_core.assist`).
        """
        pieces = list(_pieces(region, self.chunks, self.shape))
        if isinstance(self._store, _LocalChunks):
            return ASSIST.each(pieces, partial(self._local_reader, blocks, self._store))
        scratch = SCRATCH.take(self.chunks, self.dtype)
        try:
            return self._read_encoded(pieces, blocks, scratch)
        finally:
            SCRATCH.give(scratch)

    @contextlib.contextmanager
    def _local_reader(
        self, blocks: Blocks, store: _LocalChunks
    ) -> Iterator[Callable[[_Piece], int]]:
        """Reads one piece at a time in one thread; returns 1 for an absent chunk.
        A raw chunk is read straight into place; the scratch chunk and the read
        buffer are this thread's, the scratch taken only if a piece needs it."""
        raw = self.codec.compressor is None
        room = _Room()
        scratch: np.ndarray[Any, Any] | None = None

        def scratch_chunk() -> np.ndarray[Any, Any]:
            nonlocal scratch
            if scratch is None:
                scratch = SCRATCH.take(self.chunks, self.dtype)
            return scratch

        def read(piece: _Piece) -> int:
            key = self._key(piece.coords)
            load = partial(store.read_into, key) if raw else self._decoder(store.read(key, room))
            return self._place(piece, blocks, load, scratch_chunk)

        try:
            yield read
        finally:
            if scratch is not None:
                SCRATCH.give(scratch)
            room.release()
            _helper_done()

    def _read_encoded(
        self, pieces: list[_Piece], blocks: Blocks, scratch: np.ndarray[Any, Any]
    ) -> int:
        keys = [self._key(p.coords) for p in pieces]
        return sum(
            self._place(pieces[i], blocks, self._decoder(data), lambda: scratch)
            for i, data in self._store.read_many(keys)
        )

    def _place(
        self,
        piece: _Piece,
        blocks: Blocks,
        load: Callable[[np.ndarray[Any, Any]], bool],
        scratch: Callable[[], np.ndarray[Any, Any]],
    ) -> int:
        """Put one chunk where ``piece`` goes in ``blocks``: ``load(out)`` writes the
        chunk's values into ``out`` (the piece's block itself when the piece is one
        contiguous run of it, else a ``scratch()`` chunk) and returns False when the
        chunk is absent, which fills the piece with the fill value. Returns 1 then,
        else 0."""
        direct = blocks.view(piece.in_region) if piece.whole else None
        out = scratch() if direct is None else direct
        if not load(out):
            blocks.assign(piece.in_region, self._fill)
            return 1
        if direct is None:
            blocks.assign(piece.in_region, out[piece.in_chunk])
        return 0

    def _decoder(self, data: Any) -> Callable[[np.ndarray[Any, Any]], bool]:
        """What :meth:`_place` loads a chunk with from its stored bytes ``data``
        (None: the chunk is absent)."""

        def load(out: np.ndarray[Any, Any]) -> bool:
            if data is None:
                return False
            self.codec.decode_into(data, out)
            return True

        return load

    def write_blocks(self, region: Region, blocks: Blocks) -> None:
        """Store every block of ``blocks`` (laid out in this array's chunks) as a chunk.

        Local chunks are shared with idle workers' helpers (:mod:`rechunker_core.assist`)."""
        assert blocks.chunks == self.chunks
        blocks.fill_padding(self._fill)
        origin = tuple(s.start // c for s, c in zip(region, self.chunks, strict=True))
        if isinstance(self._store, _LocalChunks):
            indices = [index for index, _, _ in blocks.pieces()]
            ASSIST.each(indices, partial(self._local_writer, origin, blocks, self._store))
            return
        encoded = (self._encoded(origin, blocks, index) for index, _, _ in blocks.pieces())
        self._store.write_many(item for item in encoded if item is not None)

    @contextlib.contextmanager
    def _local_writer(
        self, origin: tuple[int, ...], blocks: Blocks, store: _LocalChunks
    ) -> Iterator[Callable[[tuple[int, ...]], int]]:
        """Encodes and stores one block at a time in one thread."""

        def write(index: tuple[int, ...]) -> int:
            if (item := self._encoded(origin, blocks, index)) is None:
                return 0
            store.write(*item)
            return 1

        try:
            yield write
        finally:
            _helper_done()

    def _encoded(
        self, origin: tuple[int, ...], blocks: Blocks, index: tuple[int, ...]
    ) -> tuple[str, Any] | None:
        """The key and encoded bytes of one block, or None for a block left out."""
        block = blocks.block(index)
        if self.skip_empty and all_fill(block, self.fill_value):
            return None
        coords = tuple(o + i for o, i in zip(origin, index, strict=True))
        return self._key(coords), self.codec.encode(block)

    def any_stored(self, region: Region) -> bool:
        """Whether any chunk ``region`` touches may be stored (else it reads as the fill
        value). Only local chunks are looked for: elsewhere each look is a request."""
        if not isinstance(self._store, _LocalChunks):
            return True
        coords = _chunk_coords(region, self.chunks)
        return self._store.any_exists(self._key(c) for c in coords)

    def free(self, region: Region) -> None:
        """Delete the chunks ``region`` holds whole, on a local disk (elsewhere each
        deletion is a request, and deleting the array at the end is cheaper).

        Their files leave the page cache at once, so the writes that follow
        reuse memory the kernel already holds instead of fresh pages, which
        cost several times as much on a virtual machine that hands freed
        memory back to its host (docs/performance.md).
        """
        if isinstance(self._store, _LocalChunks):
            coords = _held_chunk_coords(region, self.chunks, self.shape)
            self._store.delete_many(self._key(c) for c in coords)

    @property
    def can_free(self) -> bool:
        """Whether :meth:`free` deletes anything here."""
        return isinstance(self._store, _LocalChunks)

    def omits(self, fill_value: Any) -> bool:
        """Whether chunks holding only ``fill_value`` are left out (and read back as it)."""
        if not self.skip_empty:
            return False
        return all_fill(np.asarray(fill_value, self.dtype).reshape(1), self.fill_value)


def _local(store: Store) -> TypeGuard[LocalStore]:
    """Whether chunks of ``store`` are plain files here (not wrapped: a wrapper adds behaviour)."""
    return type(store) is LocalStore


def reading_memory(array: zarr.Array[Any]) -> MemoryModel:
    """What reading ``array`` costs a task in memory (see :class:`MemoryModel`)."""
    if chunk_codec(array) is None:  # zarr's own path: a new array, many chunks at once
        concurrency = int(zarr.config.get("async.concurrency"))
        return MemoryModel(concurrency=concurrency, region_copies=1, kept_chunks=0)
    return MemoryModel() if _local(array.store) else _REMOTE


def writing_memory(local: bool, sharded: bool) -> MemoryModel:
    """What reading or writing an array we create costs a task in memory.

    ``local``: it lives in a local directory; ``sharded``: it is written shard
    by shard through zarr's own path.
    """
    return MemoryModel() if local or sharded else _REMOTE


def chunk_io(
    array: zarr.Array[Any], store: Store, path: str, retry: RetryPolicy | None = None
) -> ChunkIO | None:
    """A :class:`ChunkIO` for ``array`` (opened from ``store`` at ``path``), or None
    when this module does not handle its layout and zarr's own path must be used.
    Each store request is retried on a transient error as ``retry`` says."""
    codec = chunk_codec(array)
    return None if codec is None else ChunkIO(array, codec, store, path, retry)
