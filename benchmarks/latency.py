"""The latency case: how much of an object store's request latency concurrency hides.

:class:`LatencyStore` wraps a local store and makes every request wait
:attr:`LatencyStore.delay` seconds first, as a round trip to an object store
would, and counts the requests. A rechunk through it, compared with the same
rechunk on the plain local store, gives the effective request concurrency::

    concurrency = requests x delay / (wall with latency - wall without)

1 means the requests went one at a time; 16 means 16 were in flight on
average. Each measurement runs in its own process, like every case.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path
from typing import Any, ClassVar

import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore

from catalog import Job, resolve_chunks
from measure import Outcome, measured, warm_page_cache
from rechunker_core import rechunk
from w1 import need, warm_dask
from workloads import open_source, same_encoding, source_path

#: The added latency of the ``delayed`` variant, in seconds.
DELAY = 0.020


class LatencyStore(WrapperStore[Store]):
    """A store whose every get, set, exists and delete waits :attr:`delay` first.

    The delay and the counts live on the class: zarr makes new wrappers of the
    same class (``with_read_only``), and every one must count. Listing is not
    delayed (a rechunk lists only to delete its intermediates).
    """

    delay: ClassVar[float] = DELAY
    counts: ClassVar[Counter[str]] = Counter()
    #: Requests waiting now, and the most that ever waited at once: unlike the
    #: effective concurrency, this does not depend on the two walls' noise.
    in_flight: ClassVar[int] = 0
    max_in_flight: ClassVar[int] = 0
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls.counts.clear()
            cls.in_flight = cls.max_in_flight = 0

    async def _request(self, kind: str, n: int = 1) -> None:
        cls = type(self)
        with cls._lock:
            cls.counts[kind] += n
            cls.in_flight += n
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            with cls._lock:
                cls.in_flight -= n

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        await self._request("get")
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        ranges = list(key_ranges)
        await self._request("get", len(ranges))  # requests sent together wait together
        return await self._store.get_partial_values(prototype, ranges)

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        # Through self.get (the wrapped store's _get_many would skip the delay),
        # one at a time as zarr's base Store does.
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        await self._request("set")
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._request("set")
        await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def exists(self, key: str) -> bool:
        await self._request("exists")
        return await self._store.exists(key)

    async def delete(self, key: str) -> None:
        await self._request("delete")
        await self._store.delete(key)


def make_executor(case: str, workers: int) -> Any:
    """The executor of a latency case: threads, or dask's threaded scheduler."""
    if case == "latency-threads":
        return need("rechunker_core.executors.threads").ThreadsExecutor(max_workers=workers)
    warm_dask()
    return need("rechunker_core.executors.dask").DaskExecutor(
        scheduler="threads", num_workers=workers
    )


def run_latency(job: Job, work_dir: Path) -> Outcome:
    """One rechunk through the latency store (``delayed``) or the plain one (``plain``)."""
    data_dir = Path(job.data_dir)
    chunks = resolve_chunks(job.source_chunks, job.shape)
    local = open_source(data_dir, job.shape, chunks, job.codec)
    if local is None:
        raise RuntimeError("the latency source is missing: run.py generates it first")
    path = source_path(data_dir, job.shape, chunks, job.codec)
    start = time.perf_counter()
    warm_page_cache(path)
    executor = make_executor(job.case, job.workers)
    delayed = job.variant == "delayed"

    def store(where: Path, read_only: bool = False) -> Store:
        plain = LocalStore(where, read_only=read_only)
        return LatencyStore(plain) if delayed else plain

    source = zarr.open_array(store=store(path, read_only=True), mode="r")
    LatencyStore.reset()
    outcome = Outcome(setup_s=time.perf_counter() - start)
    with measured(outcome.usage):
        rechunk(
            source,
            resolve_chunks(job.target_chunks, job.shape),
            job.max_mem,
            store(work_dir / "target.zarr"),
            target_options=same_encoding(local),
            temp_store=store(work_dir / "temp.zarr"),
            executor=executor,
        ).execute()
    counts = dict(LatencyStore.counts)
    outcome.extra = {"requests": sum(counts.values()), "request_counts": counts}
    outcome.extra["max_in_flight"] = LatencyStore.max_in_flight
    outcome.extra["delay_s"] = DELAY if delayed else 0.0
    target = zarr.open_array(str(work_dir / "target.zarr"), mode="r")
    outcome.checked(local, target)
    if delayed and counts.get("set", 0) < target.nchunks:
        # Every target chunk is one set: fewer means writes went around the store.
        outcome.notes.append(f"only {counts.get('set', 0)} sets for {target.nchunks} chunks")
    return outcome
