"""How the dask executor scales with the number of tasks.

For each plan size this builds the dask graph of a two-stage rechunk with
one dask task per copy task (``batch_size=1``) and reports the build time;
for sizes up to ``--run-max`` it also runs the plan on a
``distributed.LocalCluster`` and reports tasks per second.

The arrays are one-dimensional with one-element chunks, so the task count is
large while the data is tiny. The source is never written: every read returns
the fill value and zarr skips writing chunks that hold only the fill value,
so the run measures scheduling, not I/O.

Run with::

    .venv/bin/python benchmarks/graph_scale.py [--sizes 10000,100000,1000000] [--run-max 10000]

Running 10**5 tasks takes a few minutes on two cores (``--run-max 100000``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from rechunker_core.executors.dask import DaskExecutor
from rechunker_core.locations import StoreLocation
from rechunker_core.spec import CopySpec, StagedCopySpec
from rechunker_core.storage import ZarrRef


def tiny_spec(tasks: int, directory: Path) -> StagedCopySpec:
    """Return a two-stage spec of ``tasks`` one-element copy tasks in all."""
    half = tasks // 2
    refs = []
    for name in ("source", "intermediate", "target"):
        location = StoreLocation(str(directory / f"{name}-{tasks}.zarr"))
        array = zarr.create_array(
            store=location.store, shape=(half,), chunks=(1,), dtype="u1", fill_value=7
        )
        refs.append(ZarrRef.from_array(array, location))
    stages = tuple(CopySpec(refs[i], refs[i + 1], (1,)) for i in range(2))
    return StagedCopySpec(stages)


def main() -> None:
    """Print one table row per plan size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="task counts")
    parser.add_argument("--run-max", type=int, default=10_000, help="run plans up to this size")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from distributed import Client, LocalCluster

    columns = ("tasks", 9), ("graph nodes", 11), ("build s", 8), ("nodes/s", 9), ("run s", 7)
    print(" ".join(f"{name:>{width}}" for name, width in columns), f"{'tasks/s':>8}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        for tasks in sizes:
            spec = tiny_spec(tasks, Path(tmp))
            executor = DaskExecutor(batch_size=1)
            start = time.perf_counter()
            plan = executor.prepare_plan([spec])
            build = time.perf_counter() - start
            nodes = len(plan.__dask_graph__())
            row = f"{spec.num_tasks:>9} {nodes:>11} {build:>8.2f} {nodes / build:>9.0f}"
            if spec.num_tasks <= args.run_max:
                start = time.perf_counter()
                executor.execute_plan(plan, scheduler=client)
                run = time.perf_counter() - start
                row += f" {run:>7.1f} {spec.num_tasks / run:>8.0f}"
                target = np.asarray(zarr.open_array(spec.target.location.store, mode="r")[:])
                assert (target == 7).all()
            else:
                row += f" {'-':>7} {'-':>8}"
            print(row, flush=True)
            del plan


if __name__ == "__main__":
    main()
