"""Faults for the reliability tests: stores that fail, stall or fill up, and a run to kill.

- :class:`FaultyStore` wraps a real zarr store and fails a seeded, fixed
  share of ``get``/``set`` calls (or every call on chosen keys), or raises
  ``ENOSPC`` once a byte budget is used up.
- :class:`OnceStore` fails or stalls the first chunk write of the whole
  test, across processes (a flag file created with ``O_EXCL`` says it
  happened), for engines that retry tasks or lose workers.
- :func:`digest` hashes a store, so a test can prove the source unchanged.
- :func:`log_tasks` notes every task a run starts, so a test can count the
  tasks a resumed run did again.
- ``python -m tests.faults ...`` runs a rechunk (or a part of a saved plan)
  that stalls at a chosen point, for a test to kill with SIGKILL, or that
  waits for other copies of itself, so they run at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import os
import random
import sys
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator
from pathlib import Path
from typing import Any

import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, LocalStore, WrapperStore

import rechunker_core.chunkio as chunkio_module
import rechunker_core.copy as copy_module
from rechunker_core import rechunk
from rechunker_core.cli import main as cli
from rechunker_core.executors.threads import ThreadsExecutor
from rechunker_core.geometry import Region
from rechunker_core.spec import CopySpec
from tests.helpers import snapshot

#: Keys of zarr metadata (the rest are chunks, and our own bookkeeping).
METADATA = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


def is_chunk(key: str) -> bool:
    """Whether ``key`` holds array data (not metadata, not rechunker-core's bookkeeping)."""
    name = key.rsplit("/", 1)[-1]
    return name not in METADATA and ".rechunker-" not in key


class FaultyStore(WrapperStore[Store]):
    """A real store whose ``get``/``set`` calls fail as told, reproducibly.

    Parameters
    ----------
    store : zarr Store
    fraction : float
        Share of calls of ``ops`` that raise a transient ``OSError(EIO)``;
        whether call ``n`` on a key fails depends only on the seed, the
        operation, the key and ``n``, not on thread timing.
    ops : tuple of str
        ``"get"``, ``"set"``.
    keys : tuple of str
        Keys on which every call of ``ops`` fails.
    space : int, optional
        Bytes ``set`` may write in all; past that, ``OSError(ENOSPC)``.
    """

    def __init__(
        self,
        store: Store,
        *,
        fraction: float = 0.0,
        ops: tuple[str, ...] = ("get", "set"),
        keys: tuple[str, ...] = (),
        space: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(store)
        self.fraction, self.ops, self.keys, self.space, self.seed = fraction, ops, keys, space, seed
        self.calls: dict[tuple[str, str], int] = {}
        self.failures: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._parent: FaultyStore | None = None

    def _with_store(self, store: Store) -> FaultyStore:
        # zarr makes read-only copies (mode="r"): they share this store's faults and counts.
        copy = FaultyStore(store)
        copy._parent = self._parent or self
        return copy

    def _check(self, op: str, key: str, size: int = 0) -> None:
        if self._parent is not None:
            self._parent._check(op, key, size)
            return
        with self._lock:
            n = self.calls.get((op, key), 0)
            self.calls[op, key] = n + 1
            if op == "set" and self.space is not None:
                if size > self.space:
                    self.failures.append((op, key))
                    raise OSError(errno.ENOSPC, "No space left on device", key)
                self.space -= size
            if op not in self.ops:
                return
            doomed = key in self.keys
            if not doomed and self.fraction:
                doomed = random.Random(f"{self.seed}:{op}:{key}:{n}").random() < self.fraction
            if doomed:
                self.failures.append((op, key))
        if doomed:
            raise OSError(errno.EIO, f"injected fault: {op} {key}")

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        self._check("get", key)
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        self._check("set", key, len(value))
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check("set", key, len(value))
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)


#: Chunk writes of each OnceStore (by flag) in this process.
_WRITES: dict[str, int] = {}
_COUNT_LOCK = threading.Lock()


class OnceStore(WrapperStore[Store]):
    """A local store whose chunk write number ``after`` fails or stalls, once in the whole test.

    ``flag`` is created (exclusively, holding the pid) by the first process
    to reach its ``after``-th chunk write; that one write raises
    ``RuntimeError`` (no store error: no retry of ours takes it) or, with
    ``stall``, blocks until the process is killed. Every other write goes
    through, and with ``log`` its key is appended to that file. Each chunk
    write takes ``delay`` seconds more, as on a slow store. Pickles, so it
    works in engines' worker processes.
    """

    def __init__(
        self,
        store: Store,
        flag: str,
        stall: bool = False,
        after: int = 1,
        log: str = "",
        delay: float = 0.0,
    ) -> None:
        super().__init__(store)
        self.flag, self.stall, self.after, self.log = flag, stall, after, log
        self.delay = delay

    def _with_store(self, store: Store) -> OnceStore:
        return OnceStore(store, self.flag, self.stall, self.after, self.log, self.delay)

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("_store", "flag", "stall", "after", "log", "delay")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        OnceStore.__init__(
            self,
            state["_store"],
            state["flag"],
            state["stall"],
            state["after"],
            state["log"],
            state["delay"],
        )

    async def set(self, key: str, value: Buffer) -> None:
        if is_chunk(key) and self.delay:
            await asyncio.sleep(self.delay)
        if is_chunk(key):
            with _COUNT_LOCK:  # per process: engines unpickle a copy of the store per task
                _WRITES[self.flag] = _WRITES.get(self.flag, 0) + 1
                due = _WRITES[self.flag] == self.after
            if due and _first(self.flag):
                if self.stall:
                    threading.Event().wait()  # until SIGKILL
                raise RuntimeError(f"injected failure writing {key}")
        await self._store.set(key, value)
        if self.log and is_chunk(key):
            fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{key}\n".encode())
            os.close(fd)


def _first(flag: str) -> bool:
    """Whether this call is the first of all processes to get here (it creates ``flag``)."""
    try:
        fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def digest(store_like: Any) -> str:
    """A hash of every key and value of a store, a local path or a Group's store."""
    hasher = hashlib.sha256()
    for key, value in sorted(snapshot(store_like).items()):
        hasher.update(key.encode() + b"\0" + hashlib.sha256(value).digest())
    return hasher.hexdigest()


def task_name(stage: CopySpec, region: Region) -> str:
    """A task as ``path-of-the-array-it-writes:first-element``, unique over a plan."""
    start = ",".join(str(s.start) for s in region)
    return f"{stage.target.location.path or '<root>'}:{start}"


@contextlib.contextmanager
def log_tasks(into: list[str]) -> Iterator[list[str]]:
    """Append the name of every task started (in this process) to ``into``."""
    original = copy_module.copy_region

    def logged(stage: CopySpec, region: Region, done: Any = None) -> bool:
        into.append(task_name(stage, region))
        return original(stage, region, done)

    copy_module.copy_region = logged
    try:
        yield into
    finally:
        copy_module.copy_region = original


# --------------------------------------------------------------------------
# A run to kill: python -m tests.faults ...
# --------------------------------------------------------------------------


def _log_to_file(path: str) -> None:
    """Append every task this process starts to ``path``, one line each, as it starts."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    original = copy_module.copy_region

    def logged(stage: CopySpec, region: Region, done: Any = None) -> bool:
        os.write(fd, (task_name(stage, region) + "\n").encode())
        return original(stage, region, done)

    copy_module.copy_region = logged


def _fail_after(tasks: int) -> None:
    """Raise in the copy path once ``tasks`` tasks have started: the run fails and exits."""
    original, lock, count = copy_module.copy_region, threading.Lock(), [0]

    def failing(stage: CopySpec, region: Region, done: Any = None) -> bool:
        with lock:
            count[0] += 1
            n = count[0]
        if n > tasks:
            raise RuntimeError(f"injected failure after {tasks} tasks")
        return original(stage, region, done)

    copy_module.copy_region = failing


def _stalled() -> None:
    print("STALLED", flush=True)
    threading.Event().wait()  # until SIGKILL


def _stall_on_chunk_write(after: int) -> None:
    """From chunk write number ``after`` on, every chunk write stalls; that one tears first.

    The write tears: half the chunk's bytes go straight to its file, as a
    store without atomic writes would leave it. A resumed run must write it again.
    """
    lock, count = threading.Lock(), [0]

    def stalling(original: Any) -> Any:
        async def set(self: Store, key: str, value: Buffer) -> None:
            if is_chunk(key):
                with lock:
                    count[0] += 1
                    n = count[0]
                if n == after:
                    if isinstance(self, LocalStore):  # an object store has no torn objects
                        path = Path(self.root) / key
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(value.to_bytes()[: max(1, len(value) // 2)])
                    _stalled()
                if n >= after:
                    threading.Event().wait()
            await original(self, key, value)

        return set

    LocalStore.set = stalling(LocalStore.set)  # type: ignore[method-assign]
    FsspecStore.set = stalling(FsspecStore.set)  # type: ignore[method-assign]
    # Chunks of local arrays are written by chunkio itself, not through LocalStore.set.
    local_write = chunkio_module._LocalChunks._write

    def stalling_local(self: Any, key: str, data: Any) -> None:
        with lock:
            count[0] += 1
            n = count[0]
        if n == after:
            # A torn chunk, as a store without atomic writes would leave it.
            path = Path(self.root) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            whole = bytes(memoryview(data).cast("B"))
            path.write_bytes(whole[: max(1, len(whole) // 2)])
            _stalled()
        if n >= after:
            threading.Event().wait()
        local_write(self, key, data)

    chunkio_module._LocalChunks._write = stalling_local  # type: ignore[method-assign]


def _gate_on_first_write(gate: str, count: int) -> None:
    """On its first chunk write, this process waits until ``count`` processes got there.

    Each arriving process leaves a file in the folder ``gate``: so several
    copies of one part really run at once.
    """
    original, arrived = LocalStore.set, threading.Event()
    local_write = chunkio_module._LocalChunks._write

    def wait_for_all() -> None:
        if not arrived.is_set():
            os.makedirs(gate, exist_ok=True)
            Path(gate, str(os.getpid())).touch()
            while len(os.listdir(gate)) < count:
                threading.Event().wait(0.02)
            arrived.set()

    async def gated(self: LocalStore, key: str, value: Buffer) -> None:
        if is_chunk(key):
            wait_for_all()
        await original(self, key, value)

    def gated_local(self: Any, key: str, data: Any) -> None:
        wait_for_all()  # chunkio writes the chunks of local arrays itself
        local_write(self, key, data)

    LocalStore.set = gated  # type: ignore[method-assign]
    chunkio_module._LocalChunks._write = gated_local  # type: ignore[method-assign]


def _stall_in_finish() -> None:
    """Stall after the last step deleted the first intermediate."""
    original = copy_module.remove

    def removing(location: Any) -> None:
        original(location)
        _stalled()

    copy_module.remove = removing


def _run(args: argparse.Namespace) -> None:
    source = zarr.open_array(LocalStore(args.source, read_only=True), mode="r")
    options = (
        {"storage_options": json.loads(args.storage_options)} if args.storage_options else None
    )
    rechunked = rechunk(
        source,
        tuple(args.target_chunks),
        args.max_mem,
        args.target,
        target_options=options,
        temp_store=args.temp,
        executor=ThreadsExecutor(args.workers),
        resume=args.resume,
    )
    first = rechunked.spec[0].stages[0].num_tasks

    def progress(done: int, total: int) -> None:
        if args.stall == "between" and done == first:
            _stalled()

    if args.stall == "write":
        _stall_on_chunk_write(args.after)
    elif args.stall == "finish":
        _stall_in_finish()
    rechunked.execute(progress=progress)
    print("DONE", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``run SOURCE TARGET TEMP ...`` or ``run-part PLAN ...``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("--log", required=True, help="append each task started to this file")
    stalls = ["none", "write", "between", "finish", "gate"]
    parser.add_argument("--stall", choices=stalls, default="none")
    parser.add_argument(
        "--after", type=int, default=1, help="write: chunk write number; gate: processes"
    )
    parser.add_argument("--gate", help="--stall gate: the folder the processes meet in")
    parser.add_argument("--fail-after", type=int, help="raise once this many tasks started")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("source")
    run.add_argument("target")
    run.add_argument("temp")
    run.add_argument("--target-chunks", type=int, nargs="+", required=True)
    run.add_argument("--max-mem", type=int, required=True)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--resume", action="store_true")
    run.add_argument("--storage-options", help="JSON: fsspec options of target and temp URLs")
    part = sub.add_parser("run-part")
    part.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.fail_after is not None:
        _fail_after(args.fail_after)
    _log_to_file(args.log)
    if args.command == "run":
        _run(args)
        return 0
    if args.stall == "write":
        _stall_on_chunk_write(args.after)
    elif args.stall == "gate":
        _gate_on_first_write(args.gate, args.after)
    return cli(["run-part", *args.rest])


if __name__ == "__main__":
    sys.exit(main())
