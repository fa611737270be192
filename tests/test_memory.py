"""Memory: a 400 MB rechunk with max_mem=32MB stays within what the plan promises.

tracemalloc counts numpy's buffers (and encoded chunks, which are Python
bytes), so its peak is what the run allocated in this process. The measured
peak must lie between 60% and 100% of the plan's peak task memory times the
workers: a model that over-reserves makes tasks smaller and slower, one that
under-reserves breaks the max_mem promise.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import numpy.testing as npt
import pytest
import zarr

from rechunker_core import rechunk
from rechunker_core.executors.python import PythonExecutor
from rechunker_core.executors.threads import ThreadsExecutor

MAX_MEM = 32_000_000
SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (5000, 10_000), (5000, 20), (20, 10_000)


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory) -> zarr.Array:
    """400 MB of float64 on disk, one column of chunks per (5000, 20) block."""
    path = tmp_path_factory.mktemp("memory") / "source.zarr"
    array = zarr.create_array(str(path), shape=SHAPE, chunks=SOURCE_CHUNKS, dtype="f8")
    assert array.nbytes == 400_000_000
    step = 1000
    for start in range(0, SHAPE[1], step):
        block = np.arange(SHAPE[0] * step, dtype="f8").reshape(SHAPE[0], step)
        array[:, start : start + step] = block + start * SHAPE[0]
    return array


@pytest.mark.parametrize(
    ("executor", "workers"),
    [(ThreadsExecutor(max_workers=2), 2), (PythonExecutor(), 1)],
    ids=["threads-2", "python"],
)
def test_peak_memory_within_bound(
    tmp_path: Path, big_source: zarr.Array, executor: Any, workers: int
) -> None:
    result = rechunk(
        big_source,
        TARGET_CHUNKS,
        MAX_MEM,
        str(tmp_path / "target.zarr"),
        temp_store=str(tmp_path / "temp.zarr"),
        executor=executor,
    )
    planned = result.peak_task_memory * workers
    tracemalloc.start()
    try:
        start = time.perf_counter()
        target = result.execute()
        _, peak = tracemalloc.get_traced_memory()
        print(f"peak {peak / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    finally:
        tracemalloc.stop()
    assert 0.6 * planned <= peak <= planned, (
        f"tracemalloc peak {peak / 1e6:.1f} MB is not within 60-100% of the plan's "
        f"{planned / 1e6:.1f} MB (peak task memory x {workers} workers)\n{result.summary()}"
    )
    assert planned <= MAX_MEM * workers
    assert isinstance(target, zarr.Array)
    assert target.chunks == TARGET_CHUNKS
    # Whole arrays at once: any block shape decodes one side's chunks many times.
    npt.assert_array_equal(target[...], big_source[...])
    assert not (tmp_path / "temp.zarr").exists()
