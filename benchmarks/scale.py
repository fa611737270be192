"""The scale case: planning an ERA5-sized archive for dask, and running such a plan.

A metadata-only Zarr group (no chunk is written: every read gives the fill
value) of ``job.scale_arrays`` arrays of ``job.shape`` float32, chunked one
time step per chunk, is rechunked to ``{"time": 8760, "lat": 1, "lon": 1}``
with ``max_mem=64MB`` and the temp store on local disk. Timed: the
``rechunk(..., executor="dask")`` call alone. Reported: its wall time, the
dask graph's node count, the copy tasks (sum of ``spec.num_tasks``) and the
client's peak RSS. Then a plan for the first ``job.scale_run_arrays`` arrays
(the same plan when that is all of them) runs on a LocalCluster of
``job.workers`` processes x 1 thread: copy tasks per second.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from catalog import MIB, Job
from measure import Outcome, Usage, measured
from rechunker_core import Rechunked, rechunk
from w1 import local_cluster, warm_dask
from workloads import DIMS

MAX_MEM = "64MB"
TARGET_CHUNKS = {"time": 8760, "lat": 1, "lon": 1}
#: Target chunks compared with the source after the run (the data is all fill
#: values, so comparing every chunk would only re-read fill values).
SAMPLED_CHUNKS = 8


def metadata_group(path: Path, arrays: int, shape: tuple[int, ...]) -> zarr.Group:
    """A group of ``arrays`` empty float32 arrays, one time step per chunk."""
    group = zarr.open_group(str(path), mode="w")
    for i in range(arrays):
        group.create_array(
            f"v{i:03d}",
            shape=shape,
            dtype="float32",
            chunks=(1, *shape[1:]),
            dimension_names=DIMS,
            fill_value=np.float32(280.0),
        )
    return group


def plan(group: zarr.Group, work_dir: Path, name: str) -> Rechunked:
    return rechunk(
        group,
        TARGET_CHUNKS,
        MAX_MEM,
        str(work_dir / f"{name}-target.zarr"),
        temp_store=str(work_dir / f"{name}-temp.zarr"),
        executor="dask",
    )


def sampled_check(source: zarr.Group, target: zarr.Group, outcome: Outcome) -> None:
    """Compare a few random target chunks of every array with the source."""
    rng = random.Random(9)
    for name, array in source.arrays():
        written = target[name]
        assert isinstance(written, zarr.Array)
        for _ in range(SAMPLED_CHUNKS):
            start = [rng.randrange(0, n, c) for n, c in zip(written.shape, written.chunks)]
            region = tuple(slice(s, s + c) for s, c in zip(start, written.chunks))
            if not np.array_equal(array[region], written[region]):
                outcome.status = "FAIL"
                outcome.notes.append(f"{name} at {start}: the target differs from the source")
                return
    outcome.status = "OK"
    outcome.notes.append(f"checked {SAMPLED_CHUNKS} random target chunks per array")


def run_plan(rechunked: Rechunked, source: zarr.Group, workers: int, outcome: Outcome) -> None:
    """Run ``rechunked`` on a fresh LocalCluster; record the tasks per second."""
    tasks = sum(spec.num_tasks for spec in rechunked.spec)
    run = Usage()
    with local_cluster(workers) as client, measured(run):
        target = rechunked.execute(scheduler=client)
    outcome.extra |= {
        "run_arrays": len(rechunked.spec),
        "run_tasks": tasks,
        "run_s": run.wall,
        "tasks_per_s": tasks / run.wall,
        "run_cpu_util": run.cpu_util,
        "run_rss_increase_mib": (run.peak_rss - run.baseline_rss) / MIB,
    }
    assert isinstance(target, zarr.Group)
    sampled_check(source, target, outcome)


def run_scale(job: Job, work_dir: Path) -> Outcome:
    """Time ``rechunk()`` of the group for dask; then run a plan of it (see the module)."""
    start = time.perf_counter()
    warm_dask()
    group = metadata_group(work_dir / "source.zarr", job.scale_arrays, job.shape)
    outcome = Outcome(setup_s=time.perf_counter() - start)
    with measured(outcome.usage):
        rechunked = plan(group, work_dir, "all")
    graph: Any = rechunked.plan.__dask_graph__()
    outcome.extra = {
        "arrays": job.scale_arrays,
        "shape": list(job.shape),
        "graph_nodes": len(graph),
        "copy_tasks": sum(spec.num_tasks for spec in rechunked.spec),
        "stages": max(len(spec.stages) for spec in rechunked.spec),
    }
    del graph
    outcome.status = "OK"
    if 0 < job.scale_run_arrays < job.scale_arrays:
        group = metadata_group(work_dir / "few.zarr", job.scale_run_arrays, job.shape)
        rechunked = plan(group, work_dir, "few")
    if job.scale_run_arrays > 0:
        run_plan(rechunked, group, job.workers, outcome)
    else:
        outcome.notes.append("the plan was not run (--scale-run-arrays 0): nothing checked")
    return outcome
