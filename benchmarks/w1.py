"""The W1 cases: one rechunk of the source into a local target, by each tool.

A case is a generator taking a :class:`Context`: it does its untimed setup
(creating an empty target, starting a cluster or a server), yields the timed
callable, which returns the target ``zarr.Array`` to check, and tears down.
It raises :class:`Skip` when its engine is not installed. Engines are
imported inside the cases, so one missing engine skips only its cases.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from catalog import Job, resolve_chunks
from rechunker_core import rechunk
from rechunker_core.executors.prefect import QUIET_SETTINGS  # does not import prefect
from workloads import create_like, dimension_names, same_encoding


class Skip(Exception):
    """Raised by a case that cannot run here (its engine is not installed)."""


class StageClock:
    """A progress listener of ours that notes when the stages run.

    ``started`` is when the executor began the plan (after planning and
    creating the arrays); ``ends[i]`` is when the last task of round ``i``
    finished. The window between them is "during the stages"; what follows
    it (deleting what is left of the intermediates) is not.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.ends: list[float | None] = []
        self._left: list[int] = []

    def start(self, rounds: Sequence[Any]) -> None:
        self.started = time.perf_counter()
        self.ends = [None] * len(rounds)
        self._left = [r.tasks for r in rounds]

    def advance(self, round_number: int, tasks: int, nbytes: int) -> None:
        self._left[round_number] -= tasks
        if self._left[round_number] <= 0 and self.ends[round_number] is None:
            self.ends[round_number] = time.perf_counter()

    def close(self) -> None:
        pass

    def windows(self) -> list[tuple[float, float]]:
        """``(start, end)`` of each round, each starting when the one before ended."""
        if self.started is None or not self.ends or None in self.ends:
            return []
        bounds = [self.started, *(end for end in self.ends if end is not None)]
        return list(itertools.pairwise(bounds))


def need(module: str) -> Any:
    """Import ``module``, or skip the case naming what is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Skip(f"`import {module}` failed: {error}") from error


def warm_dask() -> Any:
    """Import dask and compute once, untimed: the first ``compute`` in a process
    imports distributed (if installed) to look for a client, which takes seconds."""
    dask = need("dask")
    dask.compute(dask.delayed(int)(1), scheduler="threads")
    return dask


@dataclass
class Context:
    """What a case gets: the job, its source, and where to write."""

    job: Job
    source: zarr.Array[Any]
    source_path: Path
    work_dir: Path
    notes: list[str] = field(default_factory=list)
    clock: StageClock = field(default_factory=StageClock)

    @property
    def target_path(self) -> Path:
        return self.work_dir / "target.zarr"

    @property
    def temp_path(self) -> Path:
        return self.work_dir / "temp.zarr"

    @property
    def target_chunks(self) -> tuple[int, ...]:
        return resolve_chunks(self.job.target_chunks, self.source.shape)

    @property
    def workers(self) -> int:
        return self.job.workers

    def target_like(self, chunks: tuple[int, ...]) -> zarr.Array[Any]:
        """An empty target with the source's format, codec and names, and ``chunks``."""
        return create_like(str(self.target_path), self.source, chunks)


#: The timed part of a case: it returns the target to check against the source.
RunFn = Callable[[], zarr.Array[Any]]
CaseFn = Callable[[Context], Iterator[RunFn]]

W1_CASES: dict[str, Callable[[Context], contextlib.AbstractContextManager[RunFn]]] = {}


def w1_case(name: str) -> Callable[[CaseFn], CaseFn]:
    """Register a case generator under ``name`` (see catalog.CASES for its label)."""

    def register(fn: CaseFn) -> CaseFn:
        W1_CASES[name] = contextlib.contextmanager(fn)
        return fn

    return register


def rechunk_into(ctx: Context, executor: Any, **execute: Any) -> zarr.Array[Any]:
    """Ours, timed whole: ``rechunk()`` (planning, target and temp metadata) and
    ``execute()`` (the copy and the deletion of the intermediates)."""
    target = rechunk(
        ctx.source,
        ctx.target_chunks,
        ctx.job.max_mem,
        str(ctx.target_path),
        target_options=same_encoding(ctx.source),
        temp_store=str(ctx.temp_path),
        executor=executor,
    ).execute(progress=ctx.clock, **execute)
    assert isinstance(target, zarr.Array)
    return target


# Baselines ---------------------------------------------------------------


@w1_case("copy")
def copy_case(ctx: Context) -> Iterator[RunFn]:
    """The reference every ratio divides by: dask's plain copy, chunks unchanged."""
    dask, da = warm_dask(), need("dask.array")
    performance = need("dask.array.core").PerformanceWarning
    target = ctx.target_like(ctx.source.chunks)

    def run() -> zarr.Array[Any]:
        with (
            dask.config.set(scheduler="threads", num_workers=ctx.workers),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always", performance)
            da.from_zarr(ctx.source).to_zarr(target)
        # dask rechunks (and warns) when it cannot write the source's chunks safely
        if any(issubclass(w.category, performance) for w in caught):
            ctx.notes.append("NOT a plain copy: dask rechunked (shape not a multiple of chunks)")
        return target

    yield run


@w1_case("dask-rechunk")
def dask_rechunk_case(ctx: Context) -> Iterator[RunFn]:
    """Dask's own rechunk: no memory bound, so its RSS shows what ours saves."""
    dask, da = warm_dask(), need("dask.array")
    target = ctx.target_like(ctx.target_chunks)

    def run() -> zarr.Array[Any]:
        with dask.config.set(scheduler="threads", num_workers=ctx.workers):
            da.from_zarr(ctx.source).rechunk(ctx.target_chunks).to_zarr(target)
        return target

    yield run


@w1_case("tensorstore")
def tensorstore_case(ctx: Context) -> Iterator[RunFn]:
    """One tensorstore write of the whole source into the target, in a Transaction
    (which holds everything in memory until the commit)."""
    ts = need("tensorstore")
    ctx.target_like(ctx.target_chunks)  # zarr-python writes the metadata tensorstore opens
    driver = "zarr" if ctx.source.metadata.zarr_format == 2 else "zarr3"
    context = ts.Context({"data_copy_concurrency": {"limit": ctx.workers}})

    def open_store(path: Path, **mode: bool) -> Any:
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}}
        return ts.open(spec, context=context, **mode).result()

    source, target = open_store(ctx.source_path, read=True), open_store(ctx.target_path, write=True)
    ctx.notes.append(f"data_copy_concurrency {ctx.workers}")

    def run() -> zarr.Array[Any]:
        with ts.Transaction() as transaction:
            target.with_transaction(transaction).write(source).result()
        return zarr.open_array(str(ctx.target_path), mode="r")

    yield run


# Ours on each executor ---------------------------------------------------


@w1_case("threads")
def threads_case(ctx: Context) -> Iterator[RunFn]:
    threads = need("rechunker_core.executors.threads")
    executor = threads.ThreadsExecutor(max_workers=ctx.workers)
    yield lambda: rechunk_into(ctx, executor)


@w1_case("python")
def python_case(ctx: Context) -> Iterator[RunFn]:
    executor = need("rechunker_core.executors.python").PythonExecutor()
    yield lambda: rechunk_into(ctx, executor)


@w1_case("dask-threads")
def dask_threads_case(ctx: Context) -> Iterator[RunFn]:
    warm_dask()
    executor = need("rechunker_core.executors.dask").DaskExecutor(
        scheduler="threads", num_workers=ctx.workers
    )
    yield lambda: rechunk_into(ctx, executor)


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A distributed Client on a LocalCluster of ``workers`` processes x 1 thread,
    with zarr and our dask executor already imported in every worker."""
    distributed = need("distributed")
    with (
        distributed.LocalCluster(
            processes=True, n_workers=workers, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(importlib.import_module, "rechunker_core.executors.dask")
        yield client


@w1_case("dask-distributed")
def dask_distributed_case(ctx: Context) -> Iterator[RunFn]:
    dask_executor = need("rechunker_core.executors.dask")
    with local_cluster(ctx.workers) as client:
        executor = dask_executor.DaskExecutor(scheduler=client)
        yield lambda: rechunk_into(ctx, executor)


@w1_case("beam")
def beam_case(ctx: Context) -> Iterator[RunFn]:
    beam = need("apache_beam")
    options = need("apache_beam.options.pipeline_options").PipelineOptions(
        flags=[],
        runner="DirectRunner",
        direct_num_workers=ctx.workers,
        direct_running_mode="multi_threading",
    )
    executor = need("rechunker_core.executors.beam").BeamExecutor(options=options)
    # An untimed pipeline first: it imports and starts the runner's machinery. On the
    # FnApiRunner, as the executor runs it: Beam's DirectRunner would try Prism first,
    # leaving a beam-temp folder behind when it cannot fetch it.
    with beam.Pipeline(runner="FnApiRunner", options=options) as pipeline:
        pipeline | beam.Create([1]) | beam.Map(int)
    yield lambda: rechunk_into(ctx, executor)


def quiet_prefect_home() -> str:
    """Point Prefect at a fresh home with the quiet settings; must precede ``import prefect``."""
    home = tempfile.mkdtemp(prefix="rechunk-bench-prefect-")
    os.environ["PREFECT_HOME"] = home
    os.environ.update(QUIET_SETTINGS)
    # The default (20 s) is too short for a busy 2-core machine; the start is untimed.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    return home


def one() -> int:
    """The warm-up flow's body: it only makes Prefect start its server."""
    return 1


@w1_case("prefect")
def prefect_case(ctx: Context) -> Iterator[RunFn]:
    home = quiet_prefect_home()
    try:
        prefect = need("prefect")
        settings = need("prefect.settings")
        runners = need("prefect.task_runners")
        executor = need("rechunker_core.executors.prefect").PrefectExecutor(
            task_runner=runners.ThreadPoolTaskRunner(max_workers=ctx.workers)
        )

        warm_up = prefect.flow(name="warm-up")(one)
        off = {settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with settings.temporary_settings(updates=off):
            warm_up()  # starts the temporary server: setup, not timed
            ctx.notes.append("server started by an untimed flow; heartbeat off")
            yield lambda: rechunk_into(ctx, executor)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@w1_case("xarray")
def xarray_case(ctx: Context) -> Iterator[RunFn]:
    """Ours on a lazy xarray Dataset whose one variable dask reads from the source."""
    xr, pd, da = need("xarray"), need("pandas"), need("dask.array")
    warm_dask()
    hours, ny, nx = ctx.source.shape
    dims = dimension_names(ctx.source)
    dataset = xr.Dataset(
        {"temperature": (dims, da.from_zarr(ctx.source), {"units": "K"})},
        coords={
            "time": pd.date_range("2025-01-01", periods=hours, freq="h"),
            "lat": np.linspace(-90 + 90 / ny, 90 - 90 / ny, ny),
            "lon": np.linspace(0, 360, nx, endpoint=False),
        },
    )
    executor = need("rechunker_core.executors.threads").ThreadsExecutor(max_workers=ctx.workers)

    def run() -> zarr.Array[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in Zarr 3
            group = rechunk(
                dataset,
                dict(zip(dims, ctx.target_chunks)),
                ctx.job.max_mem,
                str(ctx.target_path),
                target_options=same_encoding(ctx.source),
                temp_store=str(ctx.temp_path),
                executor=executor,
            ).execute(progress=ctx.clock)
        assert isinstance(group, zarr.Group)
        array = group["temperature"]
        assert isinstance(array, zarr.Array)
        return array

    yield run
