"""The ``rechunker-core`` command line: plan, run, demo, and run-part/finish for
plans run by independent processes (HPC array jobs).

Bad input prints one line on stderr and exits with status 2, before anything
is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np
import zarr

from rechunker_core.algorithm import format_bytes
from rechunker_core.api import describe_plan, parse_bytes, rechunk
from rechunker_core.copy import copy_tasks, finish, stages_in_order
from rechunker_core.executors import refuse_in_memory
from rechunker_core.spec import CopySpec, StagedCopySpec

__all__ = ["ProgressBar", "load_plan", "main", "parse_target_chunks", "part_tasks", "save_plan"]


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
    if args.save is None:
        print(describe_plan(source, parse_target_chunks(args.target_chunks), args.max_mem))
        return 0
    if args.target is None:
        raise ValueError("--save needs --target: the plan file names the arrays it creates")
    if not Path(args.save).absolute().parent.is_dir():
        raise ValueError(f"--save {args.save}: no such directory")
    rechunked = rechunk(
        source,
        parse_target_chunks(args.target_chunks),
        args.max_mem,
        args.target,
        target_options={"overwrite": True} if args.overwrite else None,
        temp_store=args.temp,
        temp_options={"overwrite": True} if args.overwrite else None,
        executor="python",
    )
    save_plan(rechunked.spec, args.save)
    print(rechunked.summary())
    rounds = list(stages_in_order(rechunked.spec))
    print(f"saved {args.save}")
    print(f"stages: {len(rounds)}")
    for k, round_ in enumerate(rounds):
        print(f"stage {k}: {sum(stage.num_tasks for stage in round_)} tasks")
    return 0


def save_plan(specs: Sequence[StagedCopySpec], path: str | Path) -> None:
    """Write ``specs`` to ``path`` as JSON, for ``run-part`` and ``finish``.

    One spec is written as :meth:`StagedCopySpec.to_json` gives it; several
    (a group) as a JSON list of those.

    Raises
    ------
    ValueError
        If an array lives in memory, or in a store that is a Python object:
        other processes could not reach it.
    """
    specs = tuple(specs)
    refuse_in_memory(specs, "run-part")
    texts = [spec.to_json() for spec in specs]
    try:
        Path(path).write_text(texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]")
    except OSError as error:
        raise ValueError(f"cannot write the plan file {path}: {error.strerror}") from error


def load_plan(path: str | Path) -> tuple[StagedCopySpec, ...]:
    """Read the specs :func:`save_plan` wrote.

    Raises
    ------
    ValueError
        If the file is missing or is not a saved plan.
    """
    try:
        data = json.loads(Path(path).read_text())
        items = data if isinstance(data, list) else [data]
        specs = tuple(StagedCopySpec.from_json(json.dumps(item)) for item in items)
    except OSError as error:
        raise ValueError(f"cannot read the plan file {path}: {error.strerror}") from error
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a plan saved by 'rechunker-core plan --save'") from error
    if not specs:
        raise ValueError(f"{path} holds no plan")
    refuse_in_memory(specs, "run-part")
    return specs


def part_tasks(round_: Sequence[CopySpec], part: int, parts: int) -> list[tuple[CopySpec, range]]:
    """Return the tasks part ``part`` of ``parts`` runs: contiguous, and together exact.

    The round's tasks are numbered one after another, stage by stage; part
    ``i`` takes numbers ``i * total // parts`` up to ``(i + 1) * total // parts``.

    >>> from types import SimpleNamespace as NS
    >>> a, b = NS(name="a", num_tasks=3), NS(name="b", num_tasks=4)
    >>> [[(s.name, r) for s, r in part_tasks([a, b], i, 3)] for i in range(3)]
    [[('a', range(0, 2))], [('a', range(2, 3)), ('b', range(0, 1))], [('b', range(1, 4))]]
    """
    total = sum(stage.num_tasks for stage in round_)
    low, high = part * total // parts, (part + 1) * total // parts
    tasks, offset = [], 0
    for stage in round_:
        start, stop = max(low, offset), min(high, offset + stage.num_tasks)
        if start < stop:
            tasks.append((stage, range(start - offset, stop - offset)))
        offset += stage.num_tasks
    return tasks


def _cmd_run_part(args: argparse.Namespace) -> int:
    specs = load_plan(args.plan)
    rounds = list(stages_in_order(specs))
    if not 0 <= args.stage < len(rounds):
        raise ValueError(f"--stage {args.stage}: {args.plan} has stages 0 to {len(rounds) - 1}")
    if args.of < 1 or not 0 <= args.part < args.of:
        raise ValueError(f"--part {args.part} --of {args.of}: need 0 <= part < of")
    copied = sum(
        copy_tasks(stage, tasks)
        for stage, tasks in part_tasks(rounds[args.stage], args.part, args.of)
    )
    print(f"stage {args.stage}, part {args.part} of {args.of}: copied {copied} tasks")
    return 0


def _cmd_finish(args: argparse.Namespace) -> int:
    finish(load_plan(args.plan))
    print("intermediates deleted")
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (status 2), like every bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rechunker-core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target-chunks", required=True, help="dim=size,... or size,size,...")
        p.add_argument("--max-mem", required=True, type=_max_mem, help="e.g. 256MB, 1GiB")

    plan = sub.add_parser("plan", help="print the plan for rechunking SOURCE")
    plan.add_argument("source", help="path or URL of a zarr array or group")
    common(plan)
    plan.add_argument("--target", help="with --save: where to create the target")
    plan.add_argument("--temp", help="with --save: store for intermediates, when needed")
    plan.add_argument(
        "--save",
        metavar="PLAN_JSON",
        help="create the target and temp arrays and save the plan for run-part and finish",
    )
    plan.add_argument("--overwrite", action="store_true", help="replace an existing target")
    plan.set_defaults(run=_cmd_plan)

    run_part = sub.add_parser("run-part", help="run part I of N of one stage of a saved plan")
    run_part.add_argument("plan", help="the file written by 'plan --save'")
    run_part.add_argument("--stage", type=int, required=True, help="stage number, from 0")
    run_part.add_argument("--part", type=int, required=True, help="part number, from 0")
    run_part.add_argument("--of", type=int, required=True, help="number of parts")
    run_part.set_defaults(run=_cmd_run_part)

    finish_ = sub.add_parser(
        "finish", help="delete a saved plan's intermediates (after the last stage)"
    )
    finish_.add_argument("plan", help="the file written by 'plan --save'")
    finish_.set_defaults(run=_cmd_finish)

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
