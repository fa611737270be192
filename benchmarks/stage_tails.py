"""Where the workers of a dask LocalCluster idle during W1, stage by stage.

The cluster's workers are processes of one thread each, so no helper can take
chunks of another worker's task (rechunker_core.assist): a worker whose share
of a stage is done idles until the stage's last task ends. For each run this
prints, per stage, the span from its first task's start to its last task's
end, the worker-seconds idle in it, the tail (from the first worker running
out of tasks to the stage's end), the spread of the task times, and the
seconds each worker's tasks spent freeing intermediate chunks (``free()``).
With ``--compare`` every other run frees them as before (each unlinked in
the task, which waits for the disk on a file system mounted with
``discard``):

    .venv/bin/python benchmarks/stage_tails.py --codec blosc --repeat 12 --compare

The W1 source must exist (``benchmarks/run.py`` writes it). Every target is
compared with its source after the last run.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from catalog import CODECS, W1_SHAPE
from measure import same_values, warm_page_cache
from rechunker_core import rechunk
from w1 import local_cluster, need
from workloads import open_source, same_encoding, source_path

SOURCE_CHUNKS = (24, 180, 360)
TARGET_CHUNKS = (8760, 10, 10)


def time_freeing() -> None:
    """In a worker: count the time ``ZarrRef.free`` takes, on the function itself
    (these functions reach the workers pickled by value, with copies of this
    module's globals, so a global here would not be shared)."""
    from rechunker_core.storage import ZarrRef

    real = ZarrRef.free
    if hasattr(real, "seconds"):
        return

    def free(self: ZarrRef, region: Any) -> None:
        start = time.perf_counter()
        try:
            real(self, region)
        finally:
            free.seconds += time.perf_counter() - start  # type: ignore[attr-defined]

    free.seconds = 0.0  # type: ignore[attr-defined]
    ZarrRef.free = free  # type: ignore[method-assign]


def freeing_seconds() -> float:
    """In a worker: the seconds counted since the last call."""
    from rechunker_core.storage import ZarrRef

    free: Any = ZarrRef.free
    seconds, free.seconds = free.seconds, 0.0
    return float(seconds)


def delete_in_task(in_task: bool) -> None:
    """In a worker: free chunks as before 2026-12-07 (unlinked in the task, one
    after another) when ``in_task``, else as now (set aside, unlinked on a thread)."""
    from rechunker_core import chunkio

    chunks: Any = chunkio._LocalChunks
    if not hasattr(chunks, "set_aside_many"):
        chunks.set_aside_many = chunks.delete_many

    def unlink_many(self: Any, keys: Any) -> None:
        self._for_each(list(keys), self._delete)

    chunks.delete_many = unlink_many if in_task else chunks.set_aside_many


def tree_cpu() -> float:
    """CPU seconds of this process and its children (the cluster's)."""
    me = psutil.Process()
    return sum(sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)])


def stage_rows(stream: list[dict[str, Any]], start: float, workers: int) -> list[str]:
    """One cell per stage from dask's task stream (times since ``start``)."""
    tasks: dict[int, list[tuple[float, float, str]]] = collections.defaultdict(list)
    for record in stream:
        key = record["key"]
        if not (isinstance(key, tuple) and str(key[0]).startswith("rechunk-copy")):
            continue
        for part in record["startstops"]:
            if part["action"] == "compute":
                tasks[key[2]].append(
                    (part["start"] - start, part["stop"] - start, record["worker"])
                )
    cells = []
    for stage in sorted(tasks):
        runs = tasks[stage]
        first, last = min(r[0] for r in runs), max(r[1] for r in runs)
        busy = sum(end - begin for begin, end, _ in runs)
        done: dict[str, float] = collections.defaultdict(float)
        for _, end, worker in runs:
            done[worker] = max(done[worker], end)
        times = sorted(end - begin for begin, end, _ in runs)
        cells.append(
            f"{last - first:.2f} s, idle {workers * (last - first) - busy:.2f}, "
            f"tail {last - min(done.values()):.2f}, "
            f"tasks {times[0]:.2f}/{times[len(times) // 2]:.2f}/{times[-1]:.2f}"
        )
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codec", choices=sorted(CODECS), default="blosc")
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-mem", default="256MB")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="every other run frees chunks in the task, one unlink after another (as before)",
    )
    args = parser.parse_args(argv)
    source = open_source(args.data_dir, W1_SHAPE, SOURCE_CHUNKS, args.codec)
    if source is None:
        print("the W1 source is missing: run benchmarks/run.py first", file=sys.stderr)
        return 2
    dask_executor = need("rechunker_core.executors.dask")
    distributed = need("distributed")
    warm_page_cache(source_path(args.data_dir, W1_SHAPE, SOURCE_CHUNKS, args.codec))
    work = args.data_dir / "work" / "stage-tails"
    print(
        "| run | freed | wall s | CPU | stage 0: span, idle worker-s, tail, task s "
        "min/median/max | stage 1 | free() s per worker |"
    )
    print("|---|---|---|---|---|---|---|")
    with local_cluster(args.workers) as client:
        client.run(time_freeing)
        try:
            for run in range(1, args.repeat + 1):
                shutil.rmtree(work, ignore_errors=True)
                plan = rechunk(
                    source,
                    TARGET_CHUNKS,
                    args.max_mem,
                    str(work / "target.zarr"),
                    target_options=same_encoding(source),
                    temp_store=str(work / "temp.zarr"),
                    executor=dask_executor.DaskExecutor(scheduler=client),
                )
                in_task = args.compare and run % 2 == 0
                client.run(delete_in_task, in_task)
                client.run(freeing_seconds)
                with distributed.get_task_stream(client) as stream:
                    cpu, start, clock = tree_cpu(), time.time(), time.perf_counter()
                    target = plan.execute()
                    wall = time.perf_counter() - clock
                    cpu = (tree_cpu() - cpu) / wall
                cells = stage_rows(stream.data, start, args.workers)
                freeing = ", ".join(f"{s:.3f}" for s in client.run(freeing_seconds).values())
                freed = "in the task" if in_task else "set aside"
                row = [str(run), freed, f"{wall:.2f}", f"{cpu:.2f}", *cells, freeing]
                print(f"| {' | '.join(row)} |")
            equal = same_values(source, target)
            print(f"\nlast target equal to its source: {equal}")
            return 0 if equal else 1
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
