"""What the intermediate's codec costs: ns per byte to write and read 100 MB.

The intermediate is written once and read once, so its codec's cost lands on
every rechunk with more than one stage. Also prints the cost of one chunk
operation on tiny chunks, the ``op_seconds`` of the planner's cost model.

    .venv/bin/python benchmarks/codec_cost.py
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

CODECS: dict[str, Any] = {
    "none (rechunker_core's intermediate default)": None,
    "blosc lz4 + shuffle": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
    "zstd level 0 (zarr's default)": ZstdCodec(level=0),
}


def best_of(
    runs: int, path: Path, data: np.ndarray[Any, Any], **create: Any
) -> tuple[float, float]:
    """Best write and read seconds of ``runs`` round trips through a local zarr array."""
    write = read = float("inf")
    for _ in range(runs):
        shutil.rmtree(path, ignore_errors=True)
        array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, **create)
        start = time.perf_counter()
        array[...] = data
        middle = time.perf_counter()
        back = array[...]
        end = time.perf_counter()
        assert np.array_equal(back, data)
        write, read = min(write, middle - start), min(read, end - middle)
    return write, read


def main() -> None:
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.standard_normal((400, 250, 250)), axis=0) * 0.1 + 280
    data = smooth.astype("float32")  # 100 MB, compressible like real fields
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "a.zarr")
        print(f"{'codec':46} write ns/B  read ns/B")
        for name, codec in CODECS.items():
            write, read = best_of(3, path, data, chunks=(40, 250, 250), compressors=codec)
            print(f"{name:46} {write / data.nbytes * 1e9:10.2f} {read / data.nbytes * 1e9:10.2f}")
        tiny = data[:, :40, :40].copy()
        write, read = best_of(3, path, tiny, chunks=(10, 4, 4), compressors=None)
        ops = tiny.size // (10 * 4 * 4)
        print(
            f"one chunk operation (640 B chunks): write {write / ops * 1e6:.0f} us, "
            f"read {read / ops * 1e6:.0f} us"
        )


if __name__ == "__main__":
    main()
