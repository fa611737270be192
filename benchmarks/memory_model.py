"""Is the plan's memory model honest on every executor? (issue 9, goal 5)

For each executor, a fresh process rechunks a W1-like array (float32
``(2190, 180, 360)``, 568 MB, W1's generated values, Blosc lz4, chunks
``(24, 180, 360)`` -> ``(2190, 10, 10)``) with ``max_mem=64MB`` (or
``--max-mem``) and measures, per worker, while the plan runs:

- the tracemalloc peak (numpy's buffers and encoded chunks), in every
  process that runs tasks: this one for in-process executors (divided by
  the workers), each dask worker for the LocalCluster;
- the peak RSS over the RSS just before the run, sampled every 5 ms (the
  sum of the worker processes' for the LocalCluster), divided by the workers.

Each case first runs something trivial on its engine, then a small
two-stage rechunk of the same codec on the same executor, so imports, the
engine's own start and what a process pays once for its first rechunk (code
pages of the copy path, its worker threads) are not counted. Each figure is
printed as a share of the plan's ``peak task memory``; the goal is 60-100%.
The two are measured in separate processes: tracemalloc's own records (one
per live allocation) would count in the RSS.

Usage, from the repository root::

    .venv/bin/python benchmarks/memory_model.py                # every case
    .venv/bin/python benchmarks/memory_model.py --only threads,dask-distributed
    .venv/bin/python benchmarks/memory_model.py --max-mem 128000000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zarr

from measure import TreeMonitor, release_memory, same_values
from w1 import local_cluster, one, quiet_prefect_home
from workloads import ensure_sources, open_source

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (2190, 180, 360), (24, 180, 360), (2190, 10, 10)
MAX_MEM = 64_000_000
CASES = ("python", "threads", "dask-threads", "dask-distributed", "beam", "prefect")
DATA = Path(__file__).parent / "data" / "memory-model"


def make_source() -> zarr.Array[Any]:
    """The W1-like source (W1's generated values, Blosc), made once."""
    ensure_sources(DATA, SHAPE, SOURCE_CHUNKS, ["blosc"])
    source = open_source(DATA, SHAPE, SOURCE_CHUNKS, "blosc")
    assert source is not None
    return source


def _traced_peak() -> int:
    return tracemalloc.get_traced_memory()[1]


@contextlib.contextmanager
def executor_for(case: str) -> Iterator[tuple[Any, int, Callable[[], list[int]] | None, Any]]:
    """(executor, workers, worker pids or None for this process, dask client or None)."""
    if case == "python":
        yield "python", 1, None, None
    elif case == "threads":
        from rechunker_core.executors.threads import ThreadsExecutor

        yield ThreadsExecutor(max_workers=2), 2, None, None
    elif case == "dask-threads":
        import dask

        from rechunker_core.executors.dask import DaskExecutor

        dask.compute(dask.delayed(one)(), scheduler="threads")  # imports what a run needs
        yield DaskExecutor(scheduler="threads", num_workers=2), 2, None, None
    elif case == "dask-distributed":
        from rechunker_core.executors.dask import DaskExecutor

        with local_cluster(2) as client:
            pids = list(client.run(os.getpid).values())
            yield DaskExecutor(scheduler=client), 2, lambda: pids, client
    elif case == "beam":
        import apache_beam as beam

        from rechunker_core.executors.beam import BeamExecutor

        options = {"direct_running_mode": "multi_threading", "direct_num_workers": 2}
        # An untimed pipeline first: it imports and starts the runner's machinery.
        with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(**options)) as p:
            p | beam.Create([1]) | beam.Map(int)
        yield BeamExecutor(options=options), 2, None, None
    elif case == "prefect":
        home = quiet_prefect_home()
        import prefect
        from prefect.task_runners import ThreadPoolTaskRunner

        from rechunker_core.executors.prefect import PrefectExecutor

        try:
            prefect.flow(name="warm-up")(one)()  # starts the temporary server, untimed
            _prefect_task_runs(prefect, ThreadPoolTaskRunner(max_workers=2))
            yield PrefectExecutor(task_runner=ThreadPoolTaskRunner(max_workers=2)), 2, None, None
        finally:
            shutil.rmtree(home, ignore_errors=True)
    else:
        raise SystemExit(f"unknown case {case!r}; one of {', '.join(CASES)}")


def _prefect_task_runs(prefect: Any, task_runner: Any) -> None:
    """Run a few trivial task runs on ``task_runner``, untimed.

    Prefect builds its task-run machinery (the engine, its clients, state and
    event models, the runner's threads) at the first task run of a process:
    the engine's own start, which the other cases' warm-ups also leave out.
    """
    task = prefect.task(name="warm-up task")(one)

    @prefect.flow(name="warm-up tasks", task_runner=task_runner)
    def runs() -> int:
        return sum(future.result() for future in [task.submit() for _ in range(4)])

    runs()


#: The warm-up rechunk: two stages of a few tiny tasks (:func:`warm_up`).
WARM_SHAPE, WARM_SOURCE_CHUNKS, WARM_TARGET_CHUNKS = (96, 40, 80), (4, 40, 80), (96, 5, 5)
WARM_MAX_MEM = 400_000


def warm_up(source: zarr.Array[Any], executor: Any, work: Path) -> None:
    """Run a small two-stage rechunk of a crop of ``source`` (same codec) on ``executor``."""
    from rechunker_core import rechunk

    crop = zarr.create_array(
        str(work / "warm-source.zarr"),
        shape=WARM_SHAPE,
        chunks=WARM_SOURCE_CHUNKS,
        dtype=source.dtype,
        zarr_format=source.metadata.zarr_format,
        compressors=list(source.compressors) or None,
    )
    crop[...] = source[tuple(slice(0, n) for n in WARM_SHAPE)]
    rechunk(
        crop, WARM_TARGET_CHUNKS, WARM_MAX_MEM, str(work / "warm-target.zarr"),
        temp_store=str(work / "warm-temp.zarr"), executor=executor,
    ).execute()  # fmt: skip


def measure(case: str, what: str, max_mem: int = MAX_MEM) -> dict[str, Any]:
    """Run one case in this process, measuring ``what`` ("traced" or "rss")."""
    from rechunker_core import rechunk

    source = make_source()
    work = Path(tempfile.mkdtemp(prefix=f"{case}-", dir=DATA))
    try:
        with executor_for(case) as (executor, workers, pids, client):
            warm_up(source, executor, work)
            plan = rechunk(
                source, TARGET_CHUNKS, max_mem, str(work / "target.zarr"),
                temp_store=str(work / "temp.zarr"), executor=executor,
            )  # fmt: skip
            monitor = TreeMonitor(interval=0.005, pids=pids() if pids else [os.getpid()])
            traced = what == "traced"
            if traced and client is not None:
                client.run(tracemalloc.start)
            elif traced:
                tracemalloc.start()
            release_memory()  # the heap the warm-up freed goes back: every run starts alike
            if client is not None:
                client.run(release_memory)
            start = time.perf_counter()
            base = monitor.sample()
            with monitor:
                target = plan.execute()
            wall = time.perf_counter() - start
            peak = monitor.peak - base
            if traced and client is not None:
                peak = sum(client.run(_traced_peak).values())
                client.run(tracemalloc.stop)
            elif traced:
                peak = _traced_peak()
                tracemalloc.stop()
            same = same_values(source, target)
            return {
                "case": case,
                "workers": workers,
                "planned": plan.peak_task_memory,
                what: peak / workers,
                "wall": wall,
                "check": "OK" if same else "DIFFERS",
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| case | workers | plan's peak task memory MB | tracemalloc peak per worker MB "
        "| share | RSS increase per worker MB | share | wall s (RSS run) | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        planned = r["planned"]
        lines.append(
            f"| {r['case']} | {r['workers']} | {planned / 1e6:.1f} | {r['traced'] / 1e6:.1f} "
            f"| {r['traced'] / planned:.0%} | {r['rss'] / 1e6:.1f} | {r['rss'] / planned:.0%} "
            f"| {r['wall']:.2f} | {r['check']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--max-mem", type=int, default=MAX_MEM, help="bytes (default: %(default)s)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    DATA.mkdir(parents=True, exist_ok=True)
    if args.case:
        case, what = args.case.split(":")
        print(json.dumps(measure(case, what, args.max_mem)))
        return 0
    make_source()
    results = []
    for case in args.only.split(","):
        result: dict[str, Any] = {}
        for what in ("traced", "rss"):
            done = subprocess.run(
                [sys.executable, __file__, f"--case={case}:{what}", f"--max-mem={args.max_mem}"],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                print(f"{case} ({what}): failed\n{done.stderr[-3000:]}", file=sys.stderr)
                break
            one = json.loads(done.stdout.strip().splitlines()[-1])
            checks = {result.get("check", "OK"), one["check"]}
            result.update(one, check="OK" if checks == {"OK"} else "DIFFERS")
        else:
            results.append(result)
            print(f"{case}: done", file=sys.stderr)
    print(table(results))
    return 0 if all(r["check"] == "OK" for r in results) and results else 1


if __name__ == "__main__":
    sys.exit(main())
