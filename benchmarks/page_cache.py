"""How fast new files fill the page cache here, right after deleting others and later.

On a virtual machine that hands freed memory back to its host (virtio-balloon
free page reporting, ``/sys/module/page_reporting``), memory freed a moment
ago is reused at memory speed, but memory the host took back must be faulted
in again, page by page, several times slower. A rechunk's intermediate is
written into fresh pages unless something was freed just before, which is
why stages free the intermediate chunks they have read. This writes 1 GB of
3.5 MB files, deletes them, waits, and writes again:

    .venv/bin/python benchmarks/page_cache.py --dir benchmarks/data/work
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

FILE_BYTES = 3_504_000  # one W1 target chunk
TOTAL = 10**9


def write_files(root: Path, data: np.ndarray) -> float:
    """GB/s of writing ``TOTAL`` bytes as new files of ``data`` into ``root``."""
    root.mkdir(parents=True)
    start = time.perf_counter()
    for i in range(TOTAL // data.nbytes):
        with open(root / str(i), "wb", buffering=0) as file:
            file.write(data)
    return TOTAL / (time.perf_counter() - start) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "data" / "work")
    parser.add_argument("--pauses", default="0,0,0.5,1,2,4,8", help="seconds, comma-separated")
    args = parser.parse_args(argv)
    data = np.random.default_rng(0).integers(0, 255, FILE_BYTES, dtype=np.uint8)
    root = args.dir / f"page-cache-{os.getpid()}"
    reporting = Path("/sys/module/page_reporting")
    print(f"free page reporting: {'on' if reporting.exists() else 'not seen'}")
    print("| written after deleting the last files and waiting s | GB/s |")
    print("|---|---|")
    try:
        print(f"| (first) | {write_files(root, data):.2f} |")
        for pause in map(float, args.pauses.split(",")):
            shutil.rmtree(root)
            time.sleep(pause)
            print(f"| {pause:g} | {write_files(root, data):.2f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
