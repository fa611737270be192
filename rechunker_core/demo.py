"""The demo: a sample array like a year of hourly maps, rechunked to time series.

``rechunker-core demo`` and ``make demo`` run :func:`run_demo`.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rechunker_core.algorithm import format_bytes
from rechunker_core.api import rechunk

__all__ = ["DEMO_MARKER", "run_demo", "write_sample"]


def write_sample(
    path: str | Path, shape: tuple[int, int, int] = (8760, 120, 120)
) -> zarr.Array[Any]:
    """Write a smooth random float32 field, one map per hour, chunked by day.

    A seasonal and daily cycle over a fixed spatial pattern, plus a random walk
    in time and a little noise: smooth enough that compression behaves as on
    real climate data.
    """
    hours, ny, nx = shape
    rng = np.random.default_rng(42)
    y, x = np.meshgrid(np.linspace(0, 2 * np.pi, ny), np.linspace(0, 2 * np.pi, nx), indexing="ij")
    pattern = 10 * np.sin(y) + 5 * np.cos(2 * x) + rng.standard_normal((ny, nx)).cumsum(0) * 0.1
    array = zarr.create_array(
        store=str(path),
        shape=shape,
        chunks=(24, ny, nx),
        dtype="float32",
        dimension_names=("time", "lat", "lon"),
        attributes={"long_name": "sample temperature", "units": "K"},
        overwrite=True,
    )
    walk = np.zeros((ny, nx))
    for start in range(0, hours, 24):
        t = np.arange(start, min(start + 24, hours))[:, None, None]
        walk = walk + rng.standard_normal((ny, nx)) * 0.05
        block = (
            280
            + 15 * np.sin(2 * np.pi * t / 8760)
            + 4 * np.sin(2 * np.pi * t / 24)
            + pattern
            + walk
            + rng.standard_normal((len(t), ny, nx)) * 0.01
        )
        array[start : start + len(t)] = block.astype("float32")
    return array


#: Left in a demo directory, so a later demo knows the directory is its own.
DEMO_MARKER = ".rechunker-core-demo"


def _demo_directory(path: str, overwrite: bool) -> Path:
    """The demo's directory: new, empty, or holding only an earlier demo's files."""
    work = Path(path)
    if not path.strip():
        raise ValueError("--dir is empty; give a directory for the demo's sample data")
    if work.exists() and not work.is_dir():
        raise ValueError(f"--dir {path} is a file, not a directory")
    own = {DEMO_MARKER, "source.zarr", "target.zarr", "temp.zarr"}
    names = {p.name for p in work.iterdir()} if work.is_dir() else set()
    if names and not overwrite and (DEMO_MARKER not in names or names - own):
        raise ValueError(
            f"--dir {path} already holds files that the demo did not write; choose a new "
            "directory, or pass --overwrite to replace its source.zarr, target.zarr and temp.zarr"
        )
    work.mkdir(parents=True, exist_ok=True)
    (work / DEMO_MARKER).write_text("sample data written by 'rechunker-core demo'\n")
    for name in ("source.zarr", "target.zarr", "temp.zarr"):
        if (work / name).is_dir():
            shutil.rmtree(work / name)
    return work


def run_demo(
    directory: str, hours: int, max_mem: int | str, executor: str, *, overwrite: bool = False
) -> int:
    """Write a sample array into ``directory``, rechunk it, and check the result.

    Returns the exit status: 0 when the target equals the source.
    """
    work = _demo_directory(directory, overwrite)
    source_path, target_path, temp_path = (
        work / n for n in ("source.zarr", "target.zarr", "temp.zarr")
    )
    print(f"writing a sample array to {source_path} ...")
    source = write_sample(source_path, (hours, 120, 120))
    size = source.nbytes
    print(f"source: shape {source.shape}, chunks {source.chunks}, {format_bytes(size)}")
    rechunked = rechunk(
        source,
        {"time": -1, "lat": 10, "lon": 10},
        max_mem,
        str(target_path),
        temp_store=str(temp_path),
        executor=executor,
    )
    print(rechunked.summary())
    start = time.perf_counter()
    target = rechunked.execute()
    print(rechunked.result_line(time.perf_counter() - start))
    assert isinstance(target, zarr.Array)
    for start_col in range(0, source.shape[2], 40):
        columns = (slice(None), slice(None), slice(start_col, start_col + 40))
        if not np.array_equal(target[columns], source[columns]):
            print("check FAILED: target differs from source", file=sys.stderr)
            return 1
    print(f"check: target == source, element by element; target chunks {target.chunks}")
    on_disk = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
    print(
        f"the sample data stays in {work} ({format_bytes(on_disk)} on disk); remove it with "
        f"'rm -r {work}' (make clean removes demo-data and the .venv)"
    )
    return 0
