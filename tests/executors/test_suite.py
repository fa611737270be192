"""The suite every executor runs: one set of cases, parametrized over ``MODES``.

In-process modes get MemoryStores; modes whose tasks run in other processes
(``in_process=False``) get stores on disk, and must refuse in-memory stores.
Every target is compared with its source element by element. Modes that
start processes for every run take the cases their ``Mode.cases`` names
(tests/helpers.py); the others take every case, in both zarr formats.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy.testing as npt
import pytest
import zarr
from zarr.storage import MemoryStore

from rechunker_core import rechunk
from rechunker_core.locations import StoreLocation
from tests.helpers import (
    MODES,
    ArrayFactory,
    GroupFactory,
    Mode,
    assert_same_array,
    assert_same_group,
    snapshot,
)

FORMATS = [2, 3]
SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (41, 37), (41, 1), (1, 37)
#: Small enough that (41, 1) -> (1, 37) needs intermediates.
MULTI_STAGE_MEM = 2500

Places = Callable[[str], Any]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each case on the modes that run it (``Mode.cases``), in both formats if it asks.

    A case taking ``zarr_format`` runs in each of :data:`FORMATS`; a mode may
    run only some of them.
    """
    if "mode" not in metafunc.fixturenames:
        return
    case = metafunc.function.__name__
    if "zarr_format" in metafunc.fixturenames:
        pairs = [(m, f) for m in MODES for f in FORMATS if m.runs(case, f)]
        ids = [f"{m.name}-{f}" for m, f in pairs]
        metafunc.parametrize(("mode", "zarr_format"), pairs, ids=ids)
    else:
        modes = [m for m in MODES if m.runs(case)]
        metafunc.parametrize("mode", modes, ids=[m.name for m in modes])


@pytest.fixture
def executor(mode: Mode, request: pytest.FixtureRequest) -> Any:
    return mode.make(request)


@pytest.fixture
def place(mode: Mode, tmp_path: Path) -> Places:
    """``place(name)``: a fresh store for the mode (memory, or a directory on disk)."""

    def make(name: str) -> Any:
        return MemoryStore() if mode.in_process else str(tmp_path / f"{name}.zarr")

    return make


def source_array(
    place: Places, make_array: ArrayFactory, zarr_format: int, **options: Any
) -> zarr.Array:
    return make_array(
        place("source"),
        SHAPE,
        SOURCE_CHUNKS,
        dtype="f4",
        zarr_format=zarr_format,
        fill_value=-1.25,
        attributes={"units": "K", "history": ["made", "by", "a test"]},
        dimension_names=("time", "space"),
        **options,
    )


def test_single_stage(
    executor: Any, place: Places, make_array: ArrayFactory, zarr_format: int
) -> None:
    source = source_array(place, make_array, zarr_format)
    result = rechunk(source, (41, 5), "1MB", place("target"), executor=executor)
    assert len(result.spec[0].stages) == 1
    target = result.execute()
    assert isinstance(target, zarr.Array)
    assert target.chunks == (41, 5)
    assert target.metadata.zarr_format == zarr_format
    assert_same_array(target, source)


def test_multi_stage_deletes_intermediates(
    executor: Any, place: Places, make_array: ArrayFactory, zarr_format: int
) -> None:
    source = source_array(place, make_array, zarr_format)
    temp = place("temp")
    result = rechunk(
        source, TARGET_CHUNKS, MULTI_STAGE_MEM, place("target"), temp_store=temp, executor=executor
    )
    (spec,) = result.spec
    assert len(spec.stages) >= 2
    assert all(ref.location.exists() for ref in spec.intermediates)  # made by rechunk()
    target = result.execute()
    assert isinstance(target, zarr.Array)
    assert target.chunks == TARGET_CHUNKS
    assert target.metadata.zarr_format == zarr_format
    assert_same_array(target, source)
    assert snapshot(temp) == {}
    assert not any(ref.location.exists() for ref in spec.intermediates)


def test_keep_temp_keeps_intermediates(
    executor: Any, place: Places, make_array: ArrayFactory
) -> None:
    source = source_array(place, make_array, 3)
    temp = place("temp")
    result = rechunk(
        source,
        TARGET_CHUNKS,
        MULTI_STAGE_MEM,
        place("target"),
        temp_store=temp,
        executor=executor,
        keep_temp=True,
    )
    (spec,) = result.spec
    assert spec.intermediates
    target = result.execute()
    assert isinstance(target, zarr.Array)
    assert_same_array(target, source)
    for ref in spec.intermediates:
        kept = ref.open()
        assert tuple(kept.chunks) == ref.chunks
        npt.assert_array_equal(kept[...], source[...])


def test_sharded_target(executor: Any, place: Places, make_array: ArrayFactory) -> None:
    source = source_array(place, make_array, 3)
    result = rechunk(
        source,
        (2, 37),
        6000,
        place("target"),
        target_options={"shards": (6, 37)},
        temp_store=place("temp"),
        executor=executor,
    )
    last = result.spec[0].stages[-1]
    assert last.num_tasks > 1  # tasks write different shards, possibly at once
    target = result.execute()
    assert isinstance(target, zarr.Array)
    assert (target.chunks, target.shards) == ((2, 37), (6, 37))
    assert_same_array(target, source)


def test_sharded_source(executor: Any, place: Places, make_array: ArrayFactory) -> None:
    source = source_array(place, make_array, 3, shards=(41, 4))
    target = rechunk(
        source, (7, 37), "1MB", place("target"), temp_store=place("temp"), executor=executor
    ).execute()
    assert isinstance(target, zarr.Array)
    assert target.chunks == (7, 37)
    assert_same_array(target, source)


def test_nested_group(
    executor: Any, place: Places, make_group: GroupFactory, zarr_format: int
) -> None:
    source = make_group(place("source"), zarr_format)
    temp = place("temp")
    result = rechunk(
        source,
        {"temp": (1, 45), "sub/deeper/counts": (10,), "sub/mask": (9, 1, 5)},
        2500,
        place("target"),
        temp_store=temp,
        executor=executor,
    )
    assert len(result.spec) == 3
    assert any(len(spec.stages) > 1 for spec in result.spec)
    target = result.execute()
    assert isinstance(target, zarr.Group)
    assert_same_group(target, source)
    assert target["temp"].chunks == (1, 45)
    assert target["sub/deeper/counts"].chunks == (10,)
    assert target["sub/mask"].chunks == (9, 1, 5)
    assert snapshot(temp) == {}


def test_stores_on_disk(
    executor: Any, tmp_path: Path, make_array: ArrayFactory, make_group: GroupFactory
) -> None:
    """Every mode, in-process ones included, works on local paths."""
    source = make_array(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dimension_names=("a", "b"))
    target = rechunk(
        source,
        TARGET_CHUNKS,
        MULTI_STAGE_MEM,
        str(tmp_path / "t.zarr"),
        temp_store=str(tmp_path / "tmp.zarr"),
        executor=executor,
    ).execute()
    assert isinstance(target, zarr.Array)
    assert_same_array(target, source)
    assert not (tmp_path / "tmp.zarr").exists()


def test_refuses_in_memory_stores(
    mode: Mode, executor: Any, tmp_path: Path, make_array: ArrayFactory
) -> None:
    if mode.in_process:
        pytest.skip(f"{mode.name} runs tasks in this process, where memory stores work")
    disk_source = make_array(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS)
    memory_source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS)
    cases = [
        (memory_source, str(tmp_path / "t1.zarr"), str(tmp_path / "tmp1.zarr")),
        (disk_source, MemoryStore(), str(tmp_path / "tmp2.zarr")),
        (disk_source, f"memory://{uuid.uuid4().hex}/t3.zarr", str(tmp_path / "tmp3.zarr")),
        (disk_source, str(tmp_path / "t4.zarr"), MemoryStore()),
    ]
    for source, target, temp in cases:
        # Refused by rechunk() itself: before anything is written.
        with pytest.raises(ValueError, match="in-memory store"):
            rechunk(
                source, TARGET_CHUNKS, MULTI_STAGE_MEM, target, temp_store=temp, executor=executor
            )
        for store in (target, temp):
            if isinstance(store, str) and store.startswith("memory://"):
                assert not StoreLocation(store).exists()
            else:
                assert snapshot(store) == {}


def test_reports_progress(executor: Any, place: Places, make_group: GroupFactory) -> None:
    """Every finished task reaches ``progress``, in order, whichever process ran it."""
    source = make_group(place("source"), 3)
    result = rechunk(
        source,
        {"temp": (1, 45), "sub/deeper/counts": (10,)},
        2500,
        place("target"),
        temp_store=place("temp"),
        executor=executor,
    )
    total = sum(spec.num_tasks for spec in result.spec)
    assert any(len(spec.stages) > 1 for spec in result.spec)
    heard: list[tuple[int, int]] = []
    target = result.execute(progress=lambda done, of: heard.append((done, of)))
    assert isinstance(target, zarr.Group)
    assert heard[-1] == (total, total)
    assert {of for _, of in heard} == {total}
    assert [done for done, _ in heard] == sorted(done for done, _ in heard)
    assert heard[0][0] > 0
    for name in ("temp", "sub/deeper/counts"):
        assert_same_array(target[name], source[name])
