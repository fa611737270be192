"""Tests for ``rechunker_core.spec``: validation, serialisation and task tiling."""

from __future__ import annotations

import inspect
import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.storage import MemoryStore

import rechunker_core
from rechunker_core import rechunk
from rechunker_core.copy import copy_region
from rechunker_core.geometry import region_slices
from rechunker_core.locations import StoreLocation
from rechunker_core.spec import CopySpec, StagedCopySpec
from rechunker_core.storage import ZarrRef
from tests.helpers import ArrayFactory


def ref(
    path: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: str = "f8",
    read_chunks: tuple[int, ...] | None = None,
) -> ZarrRef:
    """A reference to an array that need not exist: specs validate geometry only."""
    return ZarrRef(
        StoreLocation("/nowhere/store.zarr", path),
        shape,
        np.dtype(dtype),
        chunks,
        read_chunks or chunks,
    )


@pytest.fixture
def staged(tmp_path: Path, make_array: ArrayFactory) -> StagedCopySpec:
    """A real multi-stage spec on local paths (JSON-serialisable)."""
    source = make_array(tmp_path / "source.zarr", (100, 90), (100, 1), dtype="i4")
    result = rechunk(
        source, (1, 90), 2000, str(tmp_path / "target.zarr"), temp_store=str(tmp_path / "tmp.zarr")
    )
    (spec,) = result.spec
    assert len(spec.stages) >= 2
    assert spec.cleanup
    return spec


def test_public_names() -> None:
    assert rechunker_core.CopySpec is CopySpec
    assert rechunker_core.StagedCopySpec is StagedCopySpec


# --------------------------------------------------------------------------
# Invariants, checked on construction
# --------------------------------------------------------------------------


def test_valid_copy_spec() -> None:
    spec = CopySpec(ref("a", (10, 7), (3, 7)), ref("b", (10, 7), (2, 2)), (4, 6))
    assert spec.shape == (10, 7)
    assert spec.task_grid == (3, 2)
    assert spec.num_tasks == 6


@pytest.mark.parametrize(
    ("source", "target", "tasks", "message"),
    [
        (ref("a", (10, 7), (3, 7)), ref("b", (10, 8), (2, 2)), (4, 6), "shape"),
        (ref("a", (10, 7), (3, 7), "f4"), ref("b", (10, 7), (2, 2)), (4, 6), "dtype"),
        # 3 is not a multiple of the write chunk 2: two tasks would write one chunk.
        (ref("a", (10, 7), (3, 7)), ref("b", (10, 7), (2, 2)), (3, 6), "align"),
        (ref("a", (10, 7), (3, 7)), ref("b", (10, 7), (2, 2)), (4,), "positive integers"),
        (ref("a", (10, 7), (3, 7)), ref("b", (10, 7), (2, 2)), (0, 6), "positive integers"),
        (ref("a", (10, 7), (3, 7)), ref("b", (10, 7), (2, 2)), (-2, 6), "positive integers"),
    ],
)
def test_copy_spec_rejects_broken_invariants(
    source: ZarrRef, target: ZarrRef, tasks: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        CopySpec(source, target, tasks)


def test_task_chunks_must_fit_the_shape() -> None:
    with pytest.raises(ValueError, match="task_chunks"):
        CopySpec(ref("a", (10, 7), (3, 7)), ref("b", (10, 7), (2, 7)), (4, 14))


def test_task_chunks_may_span_a_dimension_that_ends_in_a_partial_chunk() -> None:
    # 7 is not a multiple of 2, but a task covering the whole dimension writes
    # every chunk along it, the partial last one included.
    spec = CopySpec(ref("a", (10, 7), (3, 7)), ref("b", (10, 7), (2, 2)), (4, 7))
    assert spec.task_grid == (3, 1)


def test_staged_spec_rejects_broken_chain() -> None:
    first = CopySpec(ref("a", (10,), (5,)), ref("tmp", (10,), (2,)), (10,))
    second = CopySpec(ref("elsewhere", (10,), (2,)), ref("b", (10,), (10,)), (10,))
    with pytest.raises(ValueError, match="stage 1 reads"):
        StagedCopySpec((first, second))
    good = CopySpec(ref("tmp", (10,), (2,)), ref("b", (10,), (10,)), (10,))
    spec = StagedCopySpec((first, good))
    assert spec.intermediates == (first.target,)
    assert spec.num_tasks == 2


def test_staged_spec_rejects_no_stages() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        StagedCopySpec(())


def test_staged_spec_rejects_dtype_change_along_the_chain() -> None:
    with pytest.raises(ValueError, match="dtype"):
        CopySpec(ref("tmp", (10,), (2,), "f8"), ref("b", (10,), (10,), "i8"), (10,))


# --------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------


def test_pickle_round_trip(staged: StagedCopySpec) -> None:
    again = pickle.loads(pickle.dumps(staged))
    assert again == staged
    assert again.stages[0].task_chunks == staged.stages[0].task_chunks


def test_pickled_spec_still_copies(tmp_path: Path, make_array: ArrayFactory) -> None:
    """Specs hold references, not open handles: an unpickled one does the work."""
    source = make_array(tmp_path / "s.zarr", (30, 20), (30, 1))
    result = rechunk(source, (1, 20), 10**6, str(tmp_path / "t.zarr"), executor="python")
    (spec,) = pickle.loads(pickle.dumps(result.spec))
    for stage in spec.stages:
        for region in stage.task_regions():
            copy_region(stage, region)
    npt.assert_array_equal(zarr.open_array(str(tmp_path / "t.zarr"))[...], source[...])


def test_json_round_trip(staged: StagedCopySpec) -> None:
    text = staged.to_json()
    assert json.loads(text)["stages"]
    again = StagedCopySpec.from_json(text)
    assert again == staged
    assert again.to_json() == text


def test_json_refuses_in_memory_store(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), (10,), (5,))
    (spec,) = rechunk(source, (2,), 10**6, MemoryStore()).spec
    with pytest.raises(ValueError, match="JSON"):
        spec.to_json()


# --------------------------------------------------------------------------
# Task regions
# --------------------------------------------------------------------------


def test_region_slices_clips_at_the_edge() -> None:
    assert region_slices((2, 0), (4, 3), (10, 7)) == (slice(8, 10), slice(0, 3))


@pytest.mark.parametrize(
    ("shape", "write", "tasks"),
    [
        ((10,), (3,), (6,)),
        ((10, 7), (2, 2), (4, 6)),
        ((10, 7), (2, 7), (10, 7)),
        ((5, 4, 3), (1, 2, 3), (2, 2, 3)),
        ((9, 1, 6, 5), (2, 1, 3, 5), (4, 1, 3, 5)),
        ((1,), (1,), (1,)),
    ],
)
def test_task_regions_tile_the_array_exactly_once(
    shape: tuple[int, ...], write: tuple[int, ...], tasks: tuple[int, ...]
) -> None:
    spec = CopySpec(ref("a", shape, shape), ref("b", shape, write), tasks)
    regions = spec.task_regions()
    assert inspect.isgenerator(regions)
    counts = np.zeros(shape, dtype=int)
    seen = 0
    for region in regions:
        counts[region] += 1
        seen += 1
        # Every task writes whole write chunks (or runs to the array's edge).
        for piece, w, n in zip(region, write, shape):
            assert piece.start % w == 0
            assert (piece.stop - piece.start) % w == 0 or piece.stop == n
    assert seen == spec.num_tasks
    npt.assert_array_equal(counts, np.ones(shape, dtype=int))


def test_task_regions_slices_by_task_number() -> None:
    spec = CopySpec(ref("a", (10, 7), (10, 7)), ref("b", (10, 7), (2, 2)), (4, 2))
    everything = list(spec.task_regions())
    assert list(spec.task_regions(2, 5)) == everything[2:5]
    assert list(spec.task_regions(4, 10**9)) == everything[4:]
    assert [spec.task_region(i) for i in range(spec.num_tasks)] == everything


def test_zarr_ref_reads_and_writes(make_array: ArrayFactory) -> None:
    array = make_array(MemoryStore(), (6, 4), (3, 2))
    location = StoreLocation(array.store)
    found = ZarrRef.from_array(array, location)
    assert (found.shape, found.chunks, found.read_chunks) == ((6, 4), (3, 2), (3, 2))
    npt.assert_array_equal(found.read((slice(0, 3), slice(2, 4))), array[0:3, 2:4])
    found.write((slice(3, 6), slice(0, 2)), np.full((3, 2), -1.0))
    npt.assert_array_equal(array[3:6, 0:2], np.full((3, 2), -1.0))
    assert replace(found, chunks=(6, 4)) != found
