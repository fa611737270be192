"""The ``rechunker-core`` command line: plan, run, demo.

Bad input prints one line on stderr and exits with status 2, before anything
is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import zarr

from rechunker_core.algorithm import format_bytes
from rechunker_core.api import describe_plan, parse_bytes, rechunk

__all__ = ["ProgressBar", "main", "parse_target_chunks"]


def parse_target_chunks(text: str) -> tuple[int, ...] | dict[str, int]:
    """Parse ``dim=size,...`` or ``size,size,...`` (``-1`` is the whole dimension).

    >>> parse_target_chunks("time=8760,lat=10,lon=-1")
    {'time': 8760, 'lat': 10, 'lon': -1}
    >>> parse_target_chunks("8760,10,10")
    (8760, 10, 10)
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"--target-chunks {text!r} is empty: give dim=size,... or size,size,...")
    try:
        if all("=" in p for p in parts):
            pairs = (p.split("=", 1) for p in parts)
            return {name.strip(): int(size) for name, size in pairs}
        if not any("=" in p for p in parts):
            return tuple(int(p) for p in parts)
    except ValueError:
        pass
    raise ValueError(
        f"--target-chunks {text!r} is not dim=size,... or size,size,... with integer sizes"
    )


class ProgressBar:
    """A one-line text progress bar, redrawn at most ten times a second."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.start = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} tasks, {now - self.start:.1f} s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _open_source(path: str) -> zarr.Array[Any] | zarr.Group:
    try:
        return zarr.open(store=path, mode="r")
    except FileNotFoundError as error:
        raise ValueError(f"no zarr array or group at {path}") from error


def _cmd_plan(args: argparse.Namespace) -> int:
    source = _open_source(args.source)
    print(describe_plan(source, parse_target_chunks(args.target_chunks), args.max_mem))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    source = _open_source(args.source)
    options = {"overwrite": True} if args.overwrite else None
    rechunked = rechunk(
        source,
        parse_target_chunks(args.target_chunks),
        args.max_mem,
        args.target,
        target_options=options,
        temp_store=args.temp,
        executor=args.executor,
    )
    print(rechunked.summary())
    start = time.perf_counter()
    rechunked.execute(progress=ProgressBar())
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f} s")
    return 0


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


def _cmd_demo(args: argparse.Namespace) -> int:
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    source_path, target_path, temp_path = (
        work / n for n in ("source.zarr", "target.zarr", "temp.zarr")
    )
    print(f"writing a sample array to {source_path} ...")
    source = write_sample(source_path, (args.hours, 120, 120))
    size = source.nbytes
    print(f"source: shape {source.shape}, chunks {source.chunks}, {format_bytes(size)}")
    rechunked = rechunk(
        source,
        {"time": -1, "lat": 10, "lon": 10},
        args.max_mem,
        str(target_path),
        target_options={"overwrite": True},
        temp_store=str(temp_path),
        temp_options={"overwrite": True},
        executor=args.executor,
    )
    print(rechunked.summary())
    start = time.perf_counter()
    target = rechunked.execute(progress=ProgressBar())
    elapsed = time.perf_counter() - start
    print(f"rechunked {format_bytes(size)} in {elapsed:.1f} s: {size / elapsed / 1e6:.0f} MB/s")
    assert isinstance(target, zarr.Array)
    for start_col in range(0, source.shape[2], 40):
        columns = (slice(None), slice(None), slice(start_col, start_col + 40))
        if not np.array_equal(target[columns], source[columns]):
            print("check FAILED: target differs from source", file=sys.stderr)
            return 1
    print(f"check: target == source, element by element; target chunks {target.chunks}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rechunker-core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target-chunks", required=True, help="dim=size,... or size,size,...")
        p.add_argument("--max-mem", required=True, type=_max_mem, help="e.g. 256MB, 1GiB")

    plan = sub.add_parser("plan", help="print the plan for rechunking SOURCE")
    plan.add_argument("source", help="path or URL of a zarr array or group")
    common(plan)
    plan.set_defaults(run=_cmd_plan)

    run = sub.add_parser("run", help="rechunk SOURCE into TARGET")
    run.add_argument("source")
    run.add_argument("target")
    common(run)
    run.add_argument("--temp", help="store for intermediates, when the plan needs them")
    run.add_argument("--executor", default="threads")
    run.add_argument("--overwrite", action="store_true", help="replace an existing target")
    run.set_defaults(run=_cmd_run)

    demo = sub.add_parser("demo", help="rechunk a ~500 MB sample array and check the result")
    demo.add_argument("--dir", default="demo-data")
    demo.add_argument("--hours", type=int, default=8760)
    demo.add_argument("--max-mem", type=_max_mem, default="256MB")
    demo.add_argument("--executor", default="threads")
    demo.set_defaults(run=_cmd_demo)
    return parser


def _max_mem(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except (ValueError, TypeError, ImportError) as error:
        print(f"rechunker-core: error: {error}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
