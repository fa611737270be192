"""dask arrays as sources: irregular blocks, arrays computed from other arrays,
and tasks that compute only the blocks their region needs."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import numpy.testing as npt
import pytest

from rechunker_core import rechunk
from rechunker_core.api import describe_plan
from rechunker_core.sources import DaskRef, open_source
from tests.helpers import MODES, Mode, sample_data

SHAPE = (400, 300)
IRREGULAR = ((7, 130, 13, 250), (3, 140, 157))


def computed(shape: tuple[int, ...] = SHAPE) -> da.Array:
    """An irregularly chunked array built by arithmetic on another array."""
    base = da.from_array(sample_data(shape), chunks=IRREGULAR)
    other = da.from_array(sample_data(shape)[::-1], chunks=IRREGULAR)
    return (base * 2 + other - 1).astype("f4")


#: One or more modes of every executor: in this process, in other processes
#: (the graph is pickled with the spec: the warm session cluster), and as a
#: JSON plan. dask-processes and beam-processes would add only the start-up
#: of their workers to what these cover.
EXECUTORS = [m for m in MODES if m.name not in ("dask-processes", "beam-processes")]


@pytest.mark.parametrize("mode", EXECUTORS, ids=lambda m: m.name)
def test_irregular_computed_array_on_every_executor(
    mode: Mode, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    source = computed()
    args = (source, (400, 4), "800KB", str(tmp_path / "target.zarr"))
    kwargs = {"temp_store": str(tmp_path / "temp.zarr"), "executor": mode.make(request)}
    if mode.name == "parts":  # independent processes run a plan saved as JSON
        with pytest.raises(ValueError, match="cannot carry a dask graph"):
            rechunk(*args, **kwargs)
        assert not (tmp_path / "target.zarr").exists() and not (tmp_path / "temp.zarr").exists()
        return
    rechunked = rechunk(*args, **kwargs)
    assert len(rechunked.spec[0].stages) == 2  # the small max_mem forces an intermediate
    target = rechunked.execute()
    assert target.chunks == (400, 4)
    assert target.dtype == np.dtype("f4")
    npt.assert_array_equal(target[...], source.compute())
    assert not (tmp_path / "temp.zarr").exists()


class BlockLog:
    """Counts the computations of each source block (in this process)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, ...]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, block: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        with self._lock:
            self.counts[tuple(block_info[None]["chunk-location"])] += 1
        return block + 1


def _blocks_touched(
    region: tuple[slice, ...], chunks: tuple[tuple[int, ...], ...]
) -> list[tuple[int, ...]]:
    """The indices of the blocks a region overlaps."""
    per_dim = []
    for piece, sizes in zip(region, chunks):
        bounds = np.cumsum((0, *sizes))
        per_dim.append(
            [i for i in range(len(sizes)) if bounds[i] < piece.stop and bounds[i + 1] > piece.start]
        )
    return list(itertools.product(*per_dim))


@pytest.mark.parametrize("executor", ["python", "threads"])
def test_tasks_compute_only_the_blocks_of_their_region(tmp_path: Path, executor: str) -> None:
    log = BlockLog()
    base = da.from_array(sample_data(SHAPE), chunks=IRREGULAR)
    source = base.map_blocks(log, dtype="f8", meta=np.array((), "f8")) * 3
    rechunked = rechunk(
        source,
        (40, 300),
        "1MB",
        str(tmp_path / "t.zarr"),
        temp_store=str(tmp_path / "tmp.zarr"),
        executor=executor,
    )
    assert not log.counts, "planning computed source blocks"
    first = rechunked.spec[0].stages[0]
    expected: Counter[tuple[int, ...]] = Counter()
    for region in first.task_regions():
        expected.update(_blocks_touched(region, source.chunks))
    assert first.num_tasks > 1
    target = rechunked.execute()
    assert log.counts == expected
    npt.assert_array_equal(target[...], (sample_data(SHAPE) + 1) * 3)


def test_reference_geometry_and_memory_model() -> None:
    found = open_source(computed())
    assert found.kind == "dask array" and not found.is_group and found.location is None
    (array,) = found.arrays
    ref = array.ref
    assert isinstance(ref, DaskRef)
    assert ref.shape == SHAPE and ref.dtype == np.dtype("f4")
    assert ref.chunks == ref.read_chunks == (250, 157)  # the largest block along each dimension
    # dask concatenates the blocks it computes into a new array, copied into the blocks
    assert array.memory.region_copies == 2
    npt.assert_array_equal(ref.read((slice(5, 9), slice(38, 45))), computed()[5:9, 38:45])


def test_reference_pickles_with_its_graph() -> None:
    ref = DaskRef(computed())
    again = pickle.loads(pickle.dumps(ref))
    assert again.shape == ref.shape and again.chunks == ref.chunks
    npt.assert_array_equal(again.read((slice(0, 20), slice(10, 50))), computed()[:20, 10:50])


def test_saving_a_plan_as_json_says_why_it_cannot(tmp_path: Path) -> None:
    rechunked = rechunk(computed(), SHAPE, "10MB", str(tmp_path / "t.zarr"))
    with pytest.raises(ValueError, match="cannot carry a dask graph"):
        rechunked.spec[0].to_json()


def test_unknown_chunk_sizes_are_refused(tmp_path: Path) -> None:
    values = da.from_array(np.arange(10.0), chunks=3)
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        rechunk(values[values > 4], (5,), "1MB", str(tmp_path / "t.zarr"))


def test_chunk_requests_and_target_format(tmp_path: Path) -> None:
    rechunked = rechunk(
        computed(), (-1, 1000), "10MB", str(tmp_path / "t.zarr"), target_options={"zarr_format": 2}
    )
    target = rechunked.execute()
    assert target.chunks == SHAPE and target.metadata.zarr_format == 2
    default = rechunk(computed(), None, "10MB", str(tmp_path / "d.zarr")).execute()
    assert default.chunks == (250, 157) and default.metadata.zarr_format == 3
    npt.assert_array_equal(default[...], computed().compute())
    with pytest.raises(ValueError, match="no dimension names"):
        rechunk(computed(), {"x": 10}, "10MB", str(tmp_path / "e.zarr"))
    assert "dask array" in describe_plan(computed(), (400, 1), "10MB")


def test_importing_the_core_imports_no_engine() -> None:
    code = (
        "import sys, rechunker_core, rechunker_core.sources, rechunker_core.api; "
        "import rechunker_core.executors; "
        "print(sorted({'dask', 'xarray', 'prefect', 'apache_beam'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
