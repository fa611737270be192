"""Sharded Zarr v3 targets: every write task covers whole shards, so each
shard object is written exactly once (partial shard writes lose data when
tasks run concurrently)."""

from __future__ import annotations

import math
import threading
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import dask.array as da
import numpy.testing as npt
import pytest
import xarray as xr
import zarr
from zarr.abc.buffer import Buffer
from zarr.storage import LocalStore, WrapperStore

from rechunker_core import rechunk
from tests.helpers import ArrayFactory, assert_same_array, sample_data

SHAPE, SOURCE_CHUNKS = (24, 40, 60), (1, 40, 60)
CHUNKS, SHARDS = (24, 10, 10), (24, 20, 20)  # 2 x 3 shards of 2 x 2 chunks


class CountingStore(WrapperStore[LocalStore]):
    """A LocalStore that counts how often each key is set."""

    def __init__(self, store: LocalStore, sets: Counter[str] | None = None) -> None:
        super().__init__(store)
        self.sets: Counter[str] = Counter() if sets is None else sets
        self._lock = threading.Lock()

    def _with_store(self, store: LocalStore) -> CountingStore:
        return type(self)(store, self.sets)  # read-only views share the counts

    async def set(self, key: str, value: Buffer) -> None:
        with self._lock:
            self.sets[key] += 1
        await self._store.set(key, value)

    def shard_writes(self, path: str = "") -> Counter[str]:
        prefix = f"{path}/c/" if path else "c/"
        return Counter({k: n for k, n in self.sets.items() if k.startswith(prefix)})


def counting_store(path: Path) -> CountingStore:
    return CountingStore(LocalStore(str(path)))


@pytest.mark.parametrize(("max_mem", "min_shards_per_task"), [("300KB", 1), ("3MB", 2)])
def test_each_shard_is_written_once(
    tmp_path: Path, make_array: ArrayFactory, max_mem: str, min_shards_per_task: int
) -> None:
    source = make_array(tmp_path / "source.zarr", SHAPE, SOURCE_CHUNKS, dtype="f4")
    store = counting_store(tmp_path / "target.zarr")
    rechunked = rechunk(
        source,
        CHUNKS,
        max_mem,
        store,
        target_options={"shards": SHARDS},
        temp_store=str(tmp_path / "temp.zarr"),
        executor="threads",
    )
    last = rechunked.spec[0].stages[-1]
    assert len(rechunked.spec[0].stages) == 2
    for extent, shard, size in zip(last.task_chunks, SHARDS, SHAPE):
        assert extent == size or extent % shard == 0  # whole shards per task
    assert math.prod(last.task_chunks) >= min_shards_per_task * math.prod(SHARDS)
    target = rechunked.execute()
    assert (target.chunks, target.shards) == (CHUNKS, SHARDS)
    assert_same_array(target, source)
    writes = store.shard_writes()
    assert len(writes) == 6 and set(writes.values()) == {1}, writes


def test_dask_source_into_sharded_target(tmp_path: Path) -> None:
    values = sample_data(SHAPE, "f4")
    source = da.from_array(values, chunks=((5, 19), (7, 33), (60,))) * 2
    store = counting_store(tmp_path / "target.zarr")
    target = rechunk(
        source, CHUNKS, "2MB", store, target_options={"shards": SHARDS}, executor="threads"
    ).execute()
    npt.assert_array_equal(target[...], values * 2)
    writes = store.shard_writes()
    assert len(writes) == 6 and set(writes.values()) == {1}, writes


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_sharded_dataset_variable(tmp_path: Path) -> None:
    values = sample_data(SHAPE, "f4")
    source = xr.Dataset({"v": (("t", "y", "x"), values)}, coords={"t": range(24)}).chunk({"t": 1})
    store = counting_store(tmp_path / "target.zarr")
    group = rechunk(
        source, {"v": CHUNKS}, "1MB", store, target_options={"v": {"shards": SHARDS}}
    ).execute()
    assert (group["v"].chunks, group["v"].shards) == (CHUNKS, SHARDS)
    writes = store.shard_writes("v")
    assert len(writes) == 6 and set(writes.values()) == {1}, writes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr.testing.assert_identical(xr.open_zarr(store), source)


def test_bad_shards_are_refused(tmp_path: Path, make_array: ArrayFactory) -> None:
    source = make_array(tmp_path / "source.zarr", SHAPE, SOURCE_CHUNKS, dtype="f4")
    options: dict[str, Any] = {"shards": (24, 15, 20)}
    with pytest.raises(ValueError, match="multiples of its chunks"):
        rechunk(source, CHUNKS, "1MB", str(tmp_path / "t.zarr"), target_options=options)
    with pytest.raises(ValueError, match="temp_options may not set 'shards'"):
        rechunk(
            source,
            CHUNKS,
            "1MB",
            str(tmp_path / "t.zarr"),
            temp_store=str(tmp_path / "x.zarr"),
            temp_options={"shards": SHARDS},
        )
    assert not (tmp_path / "t.zarr").exists()
    assert zarr.open_array(str(tmp_path / "source.zarr")).shards is None
