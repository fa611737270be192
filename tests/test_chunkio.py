"""Tests for ``rechunker_core.chunkio`` and ``rechunker_core.blocks``: whole-chunk I/O
outside zarr's event loop, checked against zarr's own reads and writes."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, TransposeCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore, WrapperStore

from rechunker_core import chunkio, rechunk
from rechunker_core.blocks import Blocks
from rechunker_core.chunkio import CONCURRENCY, SMALL_WINDOW, BufferPool, chunk_codec
from rechunker_core.locations import StoreLocation
from rechunker_core.retry import RetryPolicy
from rechunker_core.storage import ZarrRef, clear_cache
from tests.helpers import sample_data

SHAPE, CHUNKS = (23, 17, 9), (5, 4, 9)

#: (zarr_format, compressors) pairs the fast path handles.
CODECS = [
    (2, None),
    (2, numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1)),
    (2, numcodecs.Zstd(level=1)),
    (3, None),
    (3, BloscCodec(cname="lz4", shuffle="shuffle")),
    (3, ZstdCodec(level=1)),
    (3, GzipCodec(level=1)),
]


class Counting(WrapperStore[Any]):
    """Counts the chunk requests that reach the wrapped store."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.gets = self.sets = 0

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        self.gets += 1
        return await self._store.get(key, *args, **kwargs)

    async def set(self, key: str, value: Any) -> None:
        self.sets += 1
        await self._store.set(key, value)


def _array(store: Any, fmt: int, compressors: Any, dtype: str = "f4", **kwargs: Any) -> Any:
    return zarr.create_array(
        store, shape=SHAPE, chunks=CHUNKS, dtype=dtype, zarr_format=fmt,
        compressors=compressors, **kwargs,
    )  # fmt: skip


def _ref(store: Any, array: Any) -> ZarrRef:
    return ZarrRef.from_array(array, StoreLocation(store))


REGIONS = [
    (slice(0, 23), slice(0, 17), slice(0, 9)),  # everything, edge chunks included
    (slice(5, 15), slice(4, 12), slice(0, 9)),  # whole chunks in the middle
    (slice(3, 21), slice(1, 16), slice(2, 7)),  # parts of chunks
    (slice(20, 23), slice(16, 17), slice(8, 9)),  # the corner
]


@pytest.mark.parametrize(("fmt", "compressors"), CODECS)
@pytest.mark.parametrize("kind", ["local", "memory"])
def test_reads_match_zarr(tmp_path: Path, fmt: int, compressors: Any, kind: str) -> None:
    store: Any = LocalStore(str(tmp_path / "a.zarr")) if kind == "local" else MemoryStore()
    array = _array(store, fmt, compressors, fill_value=-7.5)
    data = sample_data(SHAPE, "f4")
    array[:, :10] = data[:, :10]  # chunks at y >= 12 stay missing: fill value
    assert chunk_codec(array) is not None
    ref = _ref(store, array)
    for region, block_chunks in itertools.product(REGIONS, [(5, 4, 9), (2, 3, 5), (23, 17, 9)]):
        shape = tuple(s.stop - s.start for s in region)
        blocks = Blocks(region, block_chunks, np.empty(10**6, np.uint8), np.dtype("f4"))
        absent = ref.read_counting(region, blocks)
        out = blocks.gather(tuple(slice(0, n) for n in shape), np.empty(shape, "f4"))
        npt.assert_array_equal(out, array[region])
        touched = itertools.product(
            *(range(r.start // c, -(-r.stop // c)) for r, c in zip(region, array.chunks))
        )
        keys = [array.metadata.encode_chunk_key(coords) for coords in touched]
        assert absent == sum(not sync(store.exists(key)) for key in keys), region
    clear_cache()


@pytest.mark.parametrize(("fmt", "compressors"), CODECS)
@pytest.mark.parametrize("kind", ["local", "memory"])
def test_writes_are_what_zarr_writes(tmp_path: Path, fmt: int, compressors: Any, kind: str) -> None:
    def store(name: str) -> Any:
        return LocalStore(str(tmp_path / name)) if kind == "local" else MemoryStore()

    data = sample_data(SHAPE, "f4")
    data[5:10] = -7.5  # a slab of fill values: chunks zarr does not store
    ours_store, theirs_store = store("ours.zarr"), store("theirs.zarr")
    ours = _array(ours_store, fmt, compressors, fill_value=-7.5)
    theirs = _array(theirs_store, fmt, compressors, fill_value=-7.5)
    theirs[...] = data
    ref = _ref(ours_store, ours)
    for region in [
        (slice(0, 10), slice(0, 17), slice(0, 9)),
        (slice(10, 23), slice(0, 17), slice(0, 9)),
    ]:
        ref.write(region, data[region])
    again = zarr.open_array(ours_store, mode="r")
    npt.assert_array_equal(again[...], data)
    assert again.nchunks_initialized == theirs.nchunks_initialized < again.nchunks
    clear_cache()


def test_write_empty_chunks_is_respected() -> None:
    store = MemoryStore()
    array = _array(store, 3, None, fill_value=0.0)
    with zarr.config.set({"array.write_empty_chunks": True}):  # as zarr reads it: at open
        _ref(store, array).write(tuple(slice(0, n) for n in SHAPE), np.zeros(SHAPE, "f4"))
    assert zarr.open_array(store, mode="r").nchunks_initialized == array.nchunks
    clear_cache()


def test_minus_zero_is_not_skipped_as_empty() -> None:
    store = MemoryStore()
    array = _array(store, 3, None, fill_value=0.0)
    region = tuple(slice(0, n) for n in SHAPE)
    _ref(store, array).write(region, np.full(SHAPE, -0.0, "f4"))
    assert np.signbit(zarr.open_array(store, mode="r")[...]).all()
    clear_cache()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        (3, {"shards": (10, 8, 9)}),
        (3, {"serializer": BytesCodec(), "filters": [TransposeCodec(order=(2, 1, 0))]}),
        (3, {"serializer": BytesCodec(endian="big")}),
        (2, {"filters": [numcodecs.Delta(dtype="f4")]}),
        (2, {"order": "F"}),
        (3, {"dtype": "U3"}),
    ],
)
def test_layouts_it_does_not_handle_use_zarr(fmt: int, options: dict[str, Any]) -> None:
    store = MemoryStore()
    dtype = options.pop("dtype", "f4")
    order = options.pop("order", None)
    array = zarr.create_array(
        store, shape=SHAPE, chunks=CHUNKS, dtype=dtype, zarr_format=fmt,
        **({"order": order} if order else {}), **options,
    )  # fmt: skip
    assert chunk_codec(array) is None
    data = sample_data(SHAPE, dtype)
    region = tuple(slice(0, n) for n in SHAPE)
    ref = _ref(store, array)
    ref.write(region, data)  # through zarr's own path
    npt.assert_array_equal(ref.read(region), data)
    clear_cache()


@pytest.mark.parametrize("dtype", ["i1", "u2", "i8", "f8", "c8", "?", "M8[s]", ">i4"])
def test_dtypes(dtype: str) -> None:
    fmt = 2 if dtype.startswith(">") else 3
    store = MemoryStore()
    array = _array(store, fmt, None, dtype=dtype)
    data = sample_data(SHAPE, "i8").astype(dtype)
    region = tuple(slice(0, n) for n in SHAPE)
    _ref(store, array).write(region, data)
    npt.assert_array_equal(zarr.open_array(store, mode="r")[...], data)
    npt.assert_array_equal(
        _ref(store, array).read((slice(2, 9), slice(3, 5), slice(0, 9))), data[2:9, 3:5]
    )
    clear_cache()


@pytest.mark.parametrize(("width", "most"), [(40, SMALL_WINDOW[0]), (2**17, CONCURRENCY)])
def test_requests_to_other_stores_go_many_at_once(tmp_path: Path, width: int, most: int) -> None:
    """Chunks of 320 bytes go up to 64 at once; chunks of 1 MiB, 16."""

    class Slow(Counting):
        """Adds latency; counts how many requests overlap."""

        def __init__(self, store: Any) -> None:
            super().__init__(store)
            self.now = self.most = 0

        async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
            import asyncio

            self.now += 1
            self.most = max(self.most, self.now)
            await asyncio.sleep(0.01)
            self.now -= 1
            return await super().get(key, *args, **kwargs)

    inner = LocalStore(str(tmp_path / "a.zarr"))
    array = zarr.create_array(inner, shape=(40, width), chunks=(2, width), dtype="f4")
    array[...] = sample_data((40, width), "f4")
    slow = Slow(inner)
    ref = ZarrRef.from_array(zarr.open_array(slow, mode="r"), StoreLocation(slow))
    npt.assert_array_equal(ref.read((slice(0, 40), slice(0, width))), array[...])
    assert slow.gets == 20
    assert slow.most == min(20, most)
    clear_cache()


def test_local_writes_leave_no_partial_files(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "a.zarr"))
    array = _array(store, 3, None)
    region = tuple(slice(0, n) for n in SHAPE)
    _ref(store, array).write(region, sample_data(SHAPE, "f4"))
    assert not [p for p in (tmp_path / "a.zarr").rglob("*") if p.name.endswith(".partial")]
    clear_cache()


def test_local_writes_intern_no_scratch_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each write goes through a scratch file of a new name. pathlib interns
    every name it parses, so building those paths with it grew the
    interpreter's table of interned strings without end, and its reallocation
    (7.7 MB at once in the suite's process) landed inside tasks, over the
    plan's peak task memory (tests/test_memory.py)."""
    store = LocalStore(str(tmp_path / "a.zarr"))
    array = _array(store, 3, None)
    ref = _ref(store, array)
    interned: list[str] = []
    real_intern = sys.intern

    def spy(name: str) -> str:
        interned.append(name)
        return real_intern(name)

    monkeypatch.setattr(sys, "intern", spy)
    region = tuple(slice(0, n) for n in SHAPE)
    ref.write(region, sample_data(SHAPE, "f4"))
    monkeypatch.undo()
    npt.assert_array_equal(zarr.open_array(store, mode="r")[...], sample_data(SHAPE, "f4"))
    assert not [name for name in interned if "partial" in name]
    clear_cache()


def test_rechunk_reuses_buffers_and_copies_exactly(tmp_path: Path) -> None:
    source = zarr.create_array(str(tmp_path / "s.zarr"), shape=(96, 30, 40), chunks=(4, 30, 40),
                               dtype="f4", compressors=BloscCodec(cname="lz4"))  # fmt: skip
    source[...] = sample_data((96, 30, 40), "f4")
    rechunked = rechunk(source, (96, 5, 5), "2MB", str(tmp_path / "t.zarr"),
                        temp_store=str(tmp_path / "tmp.zarr"))  # fmt: skip
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
    assert chunkio.REGIONS.held > 0 and chunkio.SCRATCH.held > 0  # kept for the next task...
    time.sleep(2.5 * BufferPool.IDLE_SECONDS)
    assert chunkio.REGIONS.held == chunkio.SCRATCH.held == 0  # ...and given back once idle


def test_buffer_pool_hands_out_distinct_buffers() -> None:
    pool = BufferPool()
    a = pool.take((100,), np.dtype("f8"))
    b = pool.take((100,), np.dtype("f8"))
    assert not np.shares_memory(a, b)
    pool.give(a)
    c = pool.take((20, 5), np.dtype("f8"))
    assert np.shares_memory(a, c)  # the same size: reused
    pool.give(b)
    pool.give(c)
    assert pool.held == 1600
    d = pool.take((10**5,), np.dtype("f8"))  # a size nobody returned: the others are dropped
    assert pool.held == 0 and not np.shares_memory(d, a)
    pool.give(d)
    pool.clear()
    assert pool.held == 0


def test_buffer_pool_gives_dropped_buffers_back_to_the_system(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Threads allocate from arenas of their own, and one arena's free memory
    cannot serve another's request: dropped buffers must leave the heap, or
    the next stage's buffers come on top of them (the RSS of a Beam run was
    1.9x the plan's peak task memory per worker, benchmarks/memory_model.py)."""
    chunkio.REGIONS.clear()  # what earlier tests left there would be dropped meanwhile
    chunkio.SCRATCH.clear()
    calls: list[bool] = []
    monkeypatch.setattr(chunkio.FREED_MEMORY, "give_back", lambda: calls.append(True))
    pool = BufferPool()
    pool.IDLE_SECONDS = 600  # no buffer goes idle in this part
    pool.give(pool.take((100,), np.dtype("f8")))
    pool.give(pool.take((100,), np.dtype("f8")))  # reused
    assert calls == []
    pool.give(pool.take((300,), np.dtype("f8")))  # the 100 is dropped
    assert calls == [True]
    pool.clear()
    pool.take((100,), np.dtype("f8"))  # nothing to drop
    assert calls == [True]

    idle = BufferPool()
    idle.IDLE_SECONDS = 0.05
    idle.give(idle.take((100,), np.dtype("f8")))
    deadline = time.monotonic() + 30
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert idle.held == 0 and calls == [True, True]  # dropped once idle


def test_local_reads_go_through_one_buffer(tmp_path: Path) -> None:
    """A fresh ``bytes`` per chunk, each of another size, fragmented the task
    threads' heaps (RSS 5-8% over the plan's peak per worker,
    benchmarks/memory_model.py): the chunks of one read share a buffer, which
    grows only for a file that does not fit."""
    contents = {"0": b"a" * 5000, "1": b"b" * 3000, "2": b"c" * 20_000, "3": b"", "4": b"d" * 7}
    for key, data in contents.items():
        (tmp_path / key).write_bytes(data)
    local = chunkio._LocalChunks(tmp_path, None)
    keys = ["0", "1", "missing", "2", "3", "4"]
    addresses = []
    for i, data in local.read_many(keys):
        expected = contents.get(keys[i])
        if expected is None:
            assert data is None
            continue
        assert bytes(data) == expected  # read before the next chunk replaces it
        if data.nbytes:
            addresses.append(np.frombuffer(data, np.uint8).ctypes.data)
    assert addresses[0] == addresses[1]  # 3000 bytes fit where 5000 did
    assert addresses[2] != addresses[1] and addresses[2] == addresses[3]  # grown once


def test_a_local_read_finishes_a_file_that_grew_after_its_size_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "0").write_bytes(bytes(range(256)) * 40)  # 10240 bytes
    real_fstat = chunkio.os.fstat

    class Stale:
        def __init__(self, fd: int) -> None:
            self.st_size = real_fstat(fd).st_size // 4  # what it held a moment ago

    monkeypatch.setattr(chunkio.os, "fstat", Stale)
    ((_, data),) = chunkio._LocalChunks(tmp_path, None).read_many(["0"])
    assert bytes(data) == bytes(range(256)) * 40


def test_room_keeps_what_was_read_when_it_grows() -> None:
    room = chunkio._Room()
    view = room.at_least(10)
    view[:4] = b"abcd"
    assert room.at_least(8) is view  # fits: the same buffer
    grown = room.at_least(100, keep=4)
    assert len(grown) >= 100 and bytes(grown[:4]) == b"abcd"


def test_large_tasks_give_the_heap_back_when_they_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codecs' scratch blocks that later requests did not reuse stayed in each
    thread's heap from task to task (RSS 1-3% over the plan per worker)."""
    from rechunker_core.chunkio import FREED_MEMORY

    calls: list[bool] = []
    monkeypatch.setattr(FREED_MEMORY, "give_back", lambda: calls.append(True))
    FREED_MEMORY.task_done(FREED_MEMORY.TRIM_AFTER)  # no run: glibc trims as it likes
    assert calls == []
    with FREED_MEMORY.kept():
        FREED_MEMORY.task_done(FREED_MEMORY.TRIM_AFTER - 1)  # small: not worth a trim
        assert calls == []
        FREED_MEMORY.task_done(FREED_MEMORY.TRIM_AFTER)
        assert calls == [True]

    sizes: list[int] = []
    monkeypatch.setattr(FREED_MEMORY, "task_done", sizes.append)
    source = zarr.create_array(str(tmp_path / "s.zarr"), shape=(96, 30, 40), chunks=(4, 30, 40),
                               dtype="f4", compressors=BloscCodec(cname="lz4"))  # fmt: skip
    source[...] = sample_data((96, 30, 40), "f4")
    rechunked = rechunk(source, (96, 5, 5), "2MB", str(tmp_path / "t.zarr"),
                        temp_store=str(tmp_path / "tmp.zarr"), executor="python")  # fmt: skip
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
    (layout,) = [job.layout for job in rechunked._jobs]
    assert len(sizes) == sum(stage.num_tasks for stage in layout.stages)  # each task's region
    assert max(sizes) <= rechunked.peak_task_memory


def test_a_new_region_size_drops_the_last_stages_scratch_chunks() -> None:
    """A new stage's first task held the last stage's idle scratch chunk besides
    its own region: tracemalloc saw 99-101% of the plan's peak task memory per
    worker, where the region and its chunks make 91-93%."""
    scratch = BufferPool()
    regions = BufferPool(along=[scratch])
    scratch.give(scratch.take((1000,), np.dtype("f8")))
    regions.give(regions.take((100,), np.dtype("f8")))
    regions.give(regions.take((100,), np.dtype("f8")))  # the same stage: both kept
    assert scratch.held == 8000 and regions.held == 800
    regions.take((300,), np.dtype("f8"))  # a new stage
    assert scratch.held == 0 and regions.held == 0
    assert chunkio.SCRATCH in chunkio.REGIONS._along


def test_buffer_pool_is_safe_across_threads() -> None:
    pool, errors = BufferPool(), []

    def work(value: int) -> None:
        for _ in range(200):
            buffer = pool.take((1000,), np.dtype("i8"))
            buffer[...] = value
            if not (buffer == value).all():
                errors.append(value)
            pool.give(buffer)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_blocks_round_trip_and_padding() -> None:
    region = (slice(4, 11), slice(0, 5))  # 7 x 5, blocks 3 x 2: edge blocks padded
    blocks = Blocks(
        region,
        (3, 2),
        np.empty(Blocks.nbytes(region, (3, 2), np.dtype("i4")), np.uint8),
        np.dtype("i4"),
    )
    data = np.arange(35, dtype="i4").reshape(7, 5)
    blocks.assign((slice(0, 7), slice(0, 5)), data)
    blocks.fill_padding(-1)
    npt.assert_array_equal(blocks.gather((slice(0, 7), slice(0, 5)), np.empty((7, 5), "i4")), data)
    npt.assert_array_equal(blocks.block((2, 2)), [[34, -1], [-1, -1], [-1, -1]])
    assert blocks.view((slice(3, 6), slice(2, 4))) is not None  # exactly block (1, 1)
    assert blocks.view((slice(3, 5), slice(2, 4))) is not None  # leading rows of it
    assert blocks.view((slice(3, 6), slice(2, 3))) is None  # a column: not contiguous
    assert blocks.view((slice(2, 4), slice(0, 2))) is None  # spans two blocks


def test_freed_memory_is_kept_while_runs_last_and_given_back_after() -> None:
    import sys

    from rechunker_core.chunkio import FREED_MEMORY

    if sys.platform.startswith("linux"):
        assert FREED_MEMORY._libc is not None  # glibc: the thresholds can be set
    with FREED_MEMORY.kept(), FREED_MEMORY.kept():  # runs at once, in any number
        assert FREED_MEMORY._runs == 2
        blocks = [np.ones(2**20) for _ in range(8)]  # 8 MB blocks: heap, not mmap
        del blocks
    assert FREED_MEMORY._runs == 0


@pytest.mark.parametrize(
    ("fmt", "separator"),
    [(3, "/"), (3, "."), (2, "."), (2, "/")],
    ids=["v3", "v3-dot", "v2", "v2-slash"],
)
def test_a_region_without_stored_chunks_copies_nothing(
    tmp_path: Path, fmt: int, separator: str
) -> None:
    """``copies_nothing`` agrees with the chunk files, whatever the key layout."""
    encoding: Any = (
        {"name": "default", "separator": separator}
        if fmt == 3
        else {"name": "v2", "separator": separator}
    )
    source = _array(LocalStore(str(tmp_path / "s.zarr")), fmt, None, fill_value=0.5,
                    chunk_key_encoding=encoding)  # fmt: skip
    target = _array(LocalStore(str(tmp_path / "t.zarr")), fmt, None, fill_value=0.5)
    refs = _ref(source.store, source), _ref(target.store, target)
    everywhere = [*REGIONS, (slice(10, 12), slice(0, 17), slice(0, 9))]
    assert all(refs[0].copies_nothing(region, refs[1]) for region in everywhere)  # no chunk yet
    source[6:9, 5:6, 0:1] = 7.0  # one chunk: (1, 1, 0)
    stored = {tuple(i // c for i, c in zip((6, 5, 0), CHUNKS))}
    for region in everywhere:
        spans = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, CHUNKS)]
        touches = any(coords in stored for coords in itertools.product(*spans))
        assert refs[0].copies_nothing(region, refs[1]) is not touches, region
    # A target with another fill value must get the source's fill written.
    other = _array(LocalStore(str(tmp_path / "o.zarr")), fmt, None, fill_value=0.0)
    assert not refs[0].copies_nothing(REGIONS[3], _ref(other.store, other))
    clear_cache()


@pytest.mark.parametrize("in_a_run", [True, False], ids=["in a run", "in a worker process"])
def test_local_deletions_try_every_chunk_and_raise_the_first_failure(
    tmp_path: Path, in_a_run: bool
) -> None:
    """A task's chunks go as one deletion (queueing each cost more than the task
    on a sparse array); one that cannot be deleted stops none of the others,
    whether the run's deleting thread unlinks them or they are set aside."""
    for key in ("0", "2", "3"):
        (tmp_path / key).write_bytes(b"x")
    (tmp_path / "1").mkdir()  # a chunk is a file: a folder there is refused
    (tmp_path / "1" / "inside").write_bytes(b"y")
    local = chunkio._LocalChunks(tmp_path, RetryPolicy(retries=0))
    with pytest.raises(OSError), chunkio.DELETIONS.deferred() if in_a_run else nullcontext():
        local.delete_many(["0", "1", "absent", "2", "3"])
    chunkio.DELETIONS.unlinked()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
    assert [p.name for p in (tmp_path / "1").iterdir()] == ["inside"]
