"""End-to-end rechunk benchmark: rechunker_core's executors against a plain copy and dask.

Run from the repository root::

    .venv/bin/python benchmarks/run.py                      # every case, both codecs
    .venv/bin/python benchmarks/run.py --shape 2190,90,180  # a quick small run
    .venv/bin/python benchmarks/run.py --only threads,dask-array --codec blosc
    .venv/bin/python benchmarks/run.py --list

Every case runs in this one process, one after another, on the same source
array (generated once into ``benchmarks/data/`` and reused). For each case it
prints wall time, MB/s, the peak RSS of the whole process tree, the RSS before
the case, the ratios to the ``copy`` case, whether the peak RSS meets the goal
bound, and whether the target equals the source. See benchmarks/README.md.

Adding a case: write a function taking a :class:`Context` and returning the
target ``zarr.Array``, and decorate it with ``@case(name, label)``; use
``@case_with_setup`` for a generator that does untimed setup, yields the timed
callable, then tears down. Raise :class:`Skip` when the case cannot run here.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import gc
import importlib
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zarr
from zarr.codecs import BloscCodec

from rechunker_core import rechunk
from rechunker_core.api import describe_plan
from rechunker_core.executors.prefect import QUIET_SETTINGS
from rechunker_core.options import parse_bytes
from rechunker_core.storage import clear_cache

MB = 1e6  # decimal megabytes, as parse_bytes("256MB") counts them

DEFAULT_SHAPE = (8760, 180, 360)
DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "data"

#: The compressed variant: Blosc with LZ4 at level 5 and byte shuffle (fast to
#: encode and decode, about 1.6x on this data). The target of every case uses
#: the source's codec; rechunker_core's intermediates are always uncompressed.
CODECS: dict[str, Callable[[], Any]] = {
    "blosc": lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "none": lambda: None,
}


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


class Skip(Exception):
    """Raised by a case that cannot run here (engine or executor not available)."""


@dataclass
class Context:
    """What a case gets: the source, where to write, and the knobs."""

    codec: str
    compressors: Any
    source: zarr.Array[Any]
    source_path: Path
    work_dir: Path
    target_chunks: tuple[int, ...]
    max_mem: int
    workers: int
    notes: list[str] = field(default_factory=list)

    @property
    def target_path(self) -> Path:
        return self.work_dir / "target.zarr"

    @property
    def temp_path(self) -> Path:
        return self.work_dir / "temp.zarr"

    def note(self, text: str) -> None:
        """Attach a remark to this case's result (printed and put in the table)."""
        self.notes.append(text)

    def create_target(self, chunks: tuple[int, ...]) -> zarr.Array[Any]:
        """An empty target like the source (dtype, codec, names), with ``chunks``."""
        return zarr.create_array(
            store=str(self.target_path),
            shape=self.source.shape,
            dtype=self.source.dtype,
            chunks=chunks,
            compressors=self.compressors,
            fill_value=self.source.fill_value,
            dimension_names=self.source.metadata.dimension_names,
            overwrite=True,
        )


#: The timed part of a case: returns the target to verify against the source.
RunFn = Callable[[], zarr.Array[Any]]


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    setup: Callable[[Context], contextlib.AbstractContextManager[RunFn]]


CASES: dict[str, Case] = {}


def case(name: str, label: str) -> Callable[[Callable[[Context], Any]], Callable[[Context], Any]]:
    """Register ``fn(ctx) -> target``; its whole body is timed."""

    def register(fn: Callable[[Context], Any]) -> Callable[[Context], Any]:
        @contextlib.contextmanager
        def setup(ctx: Context) -> Iterator[RunFn]:
            yield lambda: fn(ctx)

        CASES[name] = Case(name, label, setup)
        return fn

    return register


def case_with_setup(
    name: str, label: str
) -> Callable[[Callable[[Context], Iterator[RunFn]]], Callable[[Context], Iterator[RunFn]]]:
    """Register a generator: untimed setup, ``yield`` the timed callable, teardown."""

    def register(fn: Callable[[Context], Iterator[RunFn]]) -> Callable[[Context], Iterator[RunFn]]:
        CASES[name] = Case(name, label, contextlib.contextmanager(fn))
        return fn

    return register


@case("copy", "(a) zarr copy, unchanged chunks: the practical limit")
def copy_case(ctx: Context) -> zarr.Array[Any]:
    """Each task reads one whole source chunk and writes it to the same place in a
    target with identical chunks and codec; ``workers`` threads run the tasks."""
    source = ctx.source
    target = ctx.create_target(tuple(source.chunks))
    grid = [range(0, n, c) for n, c in zip(source.shape, source.chunks)]
    regions = [
        tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, source.chunks, source.shape))
        for start in product(*grid)
    ]

    def copy_one(region: tuple[slice, ...]) -> None:
        target[region] = source[region]

    with ThreadPoolExecutor(ctx.workers, thread_name_prefix="copy") as pool:
        for _ in pool.map(copy_one, regions):
            pass
    return target


def run_rechunk(ctx: Context, executor: Any, **execute_kwargs: Any) -> zarr.Array[Any]:
    """rechunker_core.rechunk(...).execute() into ctx's target and temp paths."""
    rechunked = rechunk(
        ctx.source,
        ctx.target_chunks,
        ctx.max_mem,
        str(ctx.target_path),
        target_options={"compressors": ctx.compressors},
        temp_store=str(ctx.temp_path),
        executor=executor,
    )
    target = rechunked.execute(**execute_kwargs)
    assert isinstance(target, zarr.Array)
    return target


def make_executor(name: str, **kwargs: Any) -> Any:
    """Build the executor registered as ``name`` with ``kwargs``.

    Raises :class:`Skip` when its engine is not installed.
    """
    from rechunker_core.executors import get_executor, registered_executors

    module_name, _, attribute = registered_executors()[name].partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise Skip(f"`import {module_name}` failed: {error}") from error
    return factory(**kwargs) if kwargs else get_executor(name)


@case("threads", "(c) rechunker_core, threads executor")
def threads_case(ctx: Context) -> zarr.Array[Any]:
    return run_rechunk(ctx, make_executor("threads", max_workers=ctx.workers))


@case("python", "(c) rechunker_core, python executor (sequential)")
def python_case(ctx: Context) -> zarr.Array[Any]:
    return run_rechunk(ctx, make_executor("python"))


@case("dask-array", "(b) dask.array from_zarr().rechunk().to_zarr(), threaded scheduler")
def dask_array_case(ctx: Context) -> zarr.Array[Any]:
    import dask
    import dask.array as da

    target = ctx.create_target(ctx.target_chunks)
    with dask.config.set(scheduler="threads", num_workers=ctx.workers):
        da.from_zarr(ctx.source).rechunk(ctx.target_chunks).to_zarr(target)
    return target


@case("dask-threads", "(c) rechunker_core, dask executor, threaded scheduler")
def dask_threads_case(ctx: Context) -> zarr.Array[Any]:
    executor = make_executor("dask", scheduler="threads", num_workers=ctx.workers)
    return run_rechunk(ctx, executor)


@case_with_setup(
    "dask-distributed", "(c) rechunker_core, dask executor, distributed LocalCluster of processes"
)
def dask_distributed_case(ctx: Context) -> Iterator[RunFn]:
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise Skip(f"distributed is not installed: {error}") from error
    make_executor("dask")  # skip before starting a cluster if the executor is missing
    with (
        LocalCluster(
            processes=True,
            n_workers=ctx.workers,
            threads_per_worker=1,
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        ctx.notes.clear()
        # The client is also the default scheduler while it is open.
        executor = make_executor("dask", scheduler=client)
        yield lambda: run_rechunk(ctx, executor)


@case_with_setup("beam", "(c) rechunker_core, beam executor, DirectRunner")
def beam_case(ctx: Context) -> Iterator[RunFn]:
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as error:
        raise Skip(f"apache-beam is not installed: {error}") from error
    options = PipelineOptions(
        flags=[],
        runner="DirectRunner",
        direct_num_workers=ctx.workers,
        direct_running_mode="multi_threading",
    )
    executor = make_executor("beam", options=options)
    yield lambda: run_rechunk(ctx, executor)


def prepare_prefect_env() -> None:
    """Point PREFECT_HOME at a temp dir and set the quiet settings, unless already set."""
    if "prefect" in sys.modules:
        return
    if "PREFECT_HOME" not in os.environ:
        home = tempfile.mkdtemp(prefix="rechunk-bench-prefect-")
        atexit.register(shutil.rmtree, home, ignore_errors=True)
        os.environ["PREFECT_HOME"] = home
    for key, value in QUIET_SETTINGS.items():
        os.environ.setdefault(key, value)


@case_with_setup("prefect", "(c) rechunker_core, prefect executor (temporary local server)")
def prefect_case(ctx: Context) -> Iterator[RunFn]:
    try:
        import prefect
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    except ImportError as error:
        raise Skip(f"prefect is not installed: {error}") from error
    executor = make_executor("prefect")

    @prefect.flow
    def warm_up() -> int:
        return 1

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        warm_up()  # starts the temporary server: setup, not timed
        ctx.note("server started by an untimed warm-up flow; heartbeat off")
        yield lambda: run_rechunk(ctx, executor)


# --------------------------------------------------------------------------
# Other sources: an xarray Dataset, and S3
# --------------------------------------------------------------------------

DIMS = ("time", "lat", "lon")


def source_dataset(ctx: Context) -> Any:
    """The source as a lazy xarray Dataset: hourly ``time``, ``lat`` and ``lon``
    coordinates and one variable that dask reads from the source array chunk by chunk."""
    try:
        import dask.array as da
        import pandas as pd
        import xarray as xr
    except ImportError as error:
        raise Skip(f"xarray is not installed: {error}") from error
    hours, ny, nx = ctx.source.shape
    return xr.Dataset(
        {"temperature": (DIMS, da.from_zarr(ctx.source), {"units": "K"})},
        coords={
            "time": pd.date_range("2025-01-01", periods=hours, freq="h"),
            "lat": np.linspace(-90 + 90 / ny, 90 - 90 / ny, ny),
            "lon": np.linspace(0, 360, nx, endpoint=False),
        },
    )


@case_with_setup("xarray", "(c) rechunker_core on an xarray Dataset, threads executor")
def xarray_case(ctx: Context) -> Iterator[RunFn]:
    dataset = source_dataset(ctx)
    executor = make_executor("threads", max_workers=ctx.workers)

    def run() -> zarr.Array[Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr: consolidated metadata is not in Zarr 3
            group = rechunk(
                dataset,
                dict(zip(DIMS, ctx.target_chunks)),
                ctx.max_mem,
                str(ctx.target_path),
                target_options={"compressors": ctx.compressors},
                temp_store=str(ctx.temp_path),
                executor=executor,
            ).execute()
        return group["temperature"]

    yield run


@case_with_setup("xarray-to-zarr", "(b) ds.chunk(target_chunks).to_zarr(target), dask threads")
def xarray_to_zarr_case(ctx: Context) -> Iterator[RunFn]:
    import dask

    dataset = source_dataset(ctx)

    def run() -> zarr.Array[Any]:
        with (
            dask.config.set(scheduler="threads", num_workers=ctx.workers),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            dataset.chunk(dict(zip(DIMS, ctx.target_chunks))).to_zarr(
                str(ctx.target_path),
                mode="w",
                encoding={"temperature": {"compressors": ctx.compressors}},
            )
        return zarr.open_group(str(ctx.target_path), mode="r")["temperature"]

    yield run


@contextlib.contextmanager
def moto_server() -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 with a bucket ``bench``; yields storage_options.

    The server runs in a process of its own that is not a child of this one, so
    its memory (it keeps the objects) is not counted in the peak RSS.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    launcher = (
        "import subprocess, sys; "
        f"p = subprocess.Popen({server!r}, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL, start_new_session=True); print(p.pid)"
    )
    pid = int(
        subprocess.run(
            [sys.executable, "-c", launcher], capture_output=True, text=True, check=True
        ).stdout
    )
    try:
        import boto3

        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
            region_name="us-east-1",
        )
        for _ in range(600):
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"moto server on port {port} did not start")
        yield {
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).terminate()


@case_with_setup("s3-threads", "(c) rechunker_core s3 -> s3 (moto server), temp on s3, threads")
def s3_threads_case(ctx: Context) -> Iterator[RunFn]:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as error:
        raise Skip(f"s3fs, boto3 or moto[server] is not installed: {error}") from error
    executor = make_executor("threads", max_workers=ctx.workers)
    with moto_server() as options:
        source = zarr.create_array(
            "s3://bench/source.zarr",
            shape=ctx.source.shape,
            dtype=ctx.source.dtype,
            chunks=ctx.source.chunks,
            compressors=ctx.compressors,
            dimension_names=ctx.source.metadata.dimension_names,
            storage_options=options,
        )
        step = ctx.source.chunks[0] * 10
        for start in range(0, ctx.source.shape[0], step):  # untimed upload
            source[start : start + step] = ctx.source[start : start + step]
        ctx.note("source uploaded untimed; moto runs in its own process, not in the RSS")
        source = zarr.open_array("s3://bench/source.zarr", mode="r", storage_options=options)

        def run() -> zarr.Array[Any]:
            rechunk(
                source,
                ctx.target_chunks,
                ctx.max_mem,
                "s3://bench/target.zarr",
                target_options={"compressors": ctx.compressors, "storage_options": options},
                temp_store="s3://bench/temp.zarr",
                temp_options={"storage_options": options},
                executor=executor,
            ).execute()
            return zarr.open_array("s3://bench/target.zarr", mode="r", storage_options=options)

        yield run


# --------------------------------------------------------------------------
# Source data
# --------------------------------------------------------------------------


def parse_chunks(text: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """``"24,-1,-1"`` -> chunk sizes, ``-1`` being the whole dimension."""
    values = [int(v) for v in text.split(",")]
    if len(values) != len(shape):
        raise SystemExit(f"chunks {text!r} must have {len(shape)} entries for shape {shape}")
    return tuple(n if v == -1 else min(v, n) for v, n in zip(values, shape))


def source_path(
    data_dir: Path, shape: tuple[int, ...], chunks: tuple[int, ...], codec: str
) -> Path:
    dims = "x".join(map(str, shape))
    return data_dir / f"source_{dims}_c{'x'.join(map(str, chunks))}_{codec}.zarr"


def ensure_sources(
    data_dir: Path, shape: tuple[int, int, int], chunks: tuple[int, ...], codecs: list[str]
) -> dict[str, zarr.Array[Any]]:
    """Open each codec's source, writing the missing ones (all in one pass)."""
    arrays: dict[str, zarr.Array[Any]] = {}
    missing: dict[str, zarr.Array[Any]] = {}
    for codec in codecs:
        path = source_path(data_dir, shape, chunks, codec)
        with contextlib.suppress(Exception):
            array = zarr.open_array(str(path), mode="r")
            if array.attrs.get("complete") and array.shape == shape and array.chunks == chunks:
                arrays[codec] = array
                continue
        missing[codec] = zarr.create_array(
            store=str(path),
            shape=shape,
            dtype="float32",
            chunks=chunks,
            compressors=CODECS[codec](),
            dimension_names=("time", "lat", "lon"),
            attributes={"units": "K", "long_name": "synthetic hourly temperature"},
            overwrite=True,
        )
    if missing:
        start = time.perf_counter()
        print(f"generating source data ({', '.join(missing)}) in {data_dir} ...", flush=True)
        write_field(list(missing.values()), shape, chunks[0])
        for codec, array in missing.items():
            array.attrs["complete"] = True
            arrays[codec] = zarr.open_array(
                str(source_path(data_dir, shape, chunks, codec)), mode="r"
            )
        print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)
    return arrays


def write_field(arrays: list[zarr.Array[Any]], shape: tuple[int, int, int], step: int) -> None:
    """Write the same smooth random float32 field to every array, ``step`` hours at a time.

    A latitude-dependent climate and seasonal cycle, a daily cycle that follows
    the sun around the globe, weather as a slowly varying random field, and a
    little measurement noise: compression behaves roughly as on real data.
    """
    hours, ny, nx = shape
    rng = np.random.default_rng(20261121)
    lat = np.linspace(-np.pi / 2, np.pi / 2, ny)[:, None]
    lon = np.linspace(0, 2 * np.pi, nx, endpoint=False)[None, :]
    climate = 300 - 45 * np.sin(lat) ** 2 + 3 * np.cos(3 * lon) * np.cos(lat)
    season_amplitude = 15 * np.sin(lat)
    weather = np.zeros((ny, nx))

    def smooth_noise() -> np.ndarray[Any, Any]:
        walk = rng.standard_normal((ny, nx)).cumsum(axis=0).cumsum(axis=1)
        walk -= walk.mean()
        return walk / (walk.std() + 1e-12)

    for start in range(0, hours, step):
        t = np.arange(start, min(start + step, hours), dtype=np.float64)[:, None, None]
        weather = 0.9 * weather + 0.5 * smooth_noise()
        field = (
            climate
            + season_amplitude * np.sin(2 * np.pi * (t / 8760 - 0.25))
            + 5 * np.cos(lat) * np.cos(lon + 2 * np.pi * t / 24)
            + weather
            + 0.02 * rng.standard_normal((len(t), ny, nx))
        ).astype(np.float32)
        for array in arrays:
            array[start : start + len(t)] = field


def stored_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def warm_up(source: zarr.Array[Any], compressors: Any, work_dir: Path) -> None:
    """Decode one source chunk and encode one chunk, untimed: starts zarr's event
    loop and thread pool and loads the codec before the first case."""
    region = tuple(slice(0, c) for c in source.chunks)
    data = source[region]
    scratch = work_dir / "warm-up.zarr"
    array = zarr.create_array(
        store=str(scratch),
        shape=data.shape,
        dtype=data.dtype,
        chunks=data.shape,
        compressors=compressors,
        overwrite=True,
    )
    array[...] = data
    shutil.rmtree(scratch, ignore_errors=True)


def warm_page_cache(path: Path) -> None:
    """Read every file of the source once, so no case pays for the first disk read."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------


def tree_rss() -> int:
    """RSS of this process plus all its descendants, in bytes (nothing subtracted)."""
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


class RssSampler:
    """Samples :func:`tree_rss` every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_rss())
            if self._stop.wait(self.interval):
                break

    def __enter__(self) -> RssSampler:
        self.peak = tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss())


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS between cases."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def verify(source: zarr.Array[Any], target: zarr.Array[Any], limit: float = 1e9) -> bool:
    """Whether target == source element by element, compared in blocks of at most
    ``limit`` bytes made of whole target chunks."""
    if target.shape != source.shape or target.dtype != source.dtype:
        return False
    shape = source.shape
    units = [min(c, n) for c, n in zip(target.chunks, shape)]
    block = list(shape)
    itemsize = source.dtype.itemsize
    while math.prod(block) * itemsize > limit:
        d = max(range(len(shape)), key=lambda i: block[i] / units[i])
        if block[d] <= units[d]:
            break
        pieces = math.ceil(math.prod(block) * itemsize / limit)
        block[d] = max(units[d], math.ceil(math.ceil(block[d] / pieces) / units[d]) * units[d])
    equal_nan = source.dtype.kind in "fc"
    for start in product(*(range(0, n, b) for n, b in zip(shape, block))):
        region = tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))
        if not np.array_equal(source[region], target[region], equal_nan=equal_nan):
            return False
    return True


@dataclass
class Result:
    codec: str
    case: str
    status: str  # OK, FAIL, SKIP, ERROR
    wall: float = math.nan
    setup: float = math.nan
    baseline: int = 0
    peak: int = 0
    notes: list[str] = field(default_factory=list)


def run_case(spec: Case, ctx: Context) -> Result:
    shutil.rmtree(ctx.work_dir, ignore_errors=True)
    ctx.work_dir.mkdir(parents=True)
    clear_cache()
    release_memory()
    result = Result(ctx.codec, spec.name, "ERROR")
    try:
        start = time.perf_counter()
        with spec.setup(ctx) as run:
            result.setup = time.perf_counter() - start
            result.baseline = tree_rss()
            with RssSampler() as sampler:
                start = time.perf_counter()
                target = run()
                result.wall = time.perf_counter() - start
            result.peak = sampler.peak
            result.status = "OK" if verify(ctx.source, target) else "FAIL"
    except Skip as skip:
        result.status = "SKIP"
        ctx.note(str(skip))
    except Exception as error:
        traceback.print_exc()
        ctx.note(f"{type(error).__name__}: {error}"[:200])
    finally:
        result.notes = list(ctx.notes)
        clear_cache()
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def rss_bound(max_mem: int, workers: int) -> float:
    """The goal: peak RSS under 1.2 x max_mem x workers + 200 MB."""
    return 1.2 * max_mem * workers + 200 * MB


def _ratio(value: float, reference: float | None) -> str:
    if reference is None or not reference or math.isnan(value) or math.isnan(reference):
        return "n/a"
    return f"{value / reference:.2f}x"


def describe(result: Result, reference: Result | None, nbytes: int, bound: float) -> list[str]:
    """The table cells of one result."""
    ran = result.status in ("OK", "FAIL")
    ref_wall = reference.wall if reference and reference.status == "OK" else None
    ref_peak = float(reference.peak) if reference and reference.status == "OK" else None
    return [
        result.codec,
        result.case,
        f"{result.wall:.1f}" if ran else "-",
        f"{nbytes / result.wall / MB:.0f}" if ran else "-",
        _ratio(result.wall, ref_wall) if ran else "-",
        f"{result.peak / MB:.0f}" if ran else "-",
        f"{result.baseline / MB:.0f}" if ran else "-",
        _ratio(float(result.peak), ref_peak) if ran else "-",
        ("yes" if result.peak < bound else "NO") if ran else "-",
        f"{result.setup:.1f}" if ran else "-",
        result.status,
        "; ".join(result.notes),
    ]


HEADER = [
    "codec",
    "case",
    "wall s",
    "MB/s",
    "wall/copy",
    "peak RSS MB",
    "baseline MB",
    "RSS/copy",
    "RSS bound",
    "setup s",
    "check",
    "notes",
]


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--only", help="comma-separated case names (see --list)")
    parser.add_argument("--codec", choices=("blosc", "none", "both"), default="both")
    parser.add_argument("--shape", default=",".join(map(str, DEFAULT_SHAPE)), help="T,Y,X")
    parser.add_argument("--source-chunks", default="24,-1,-1", help="-1: whole dimension")
    parser.add_argument("--target-chunks", default="-1,10,10", help="-1: whole dimension")
    parser.add_argument("--workers", type=int, default=2, help="threads / processes per case")
    parser.add_argument("--max-mem", default="256MB")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument(
        "--no-reference", action="store_true", help="do not add the copy case to --only"
    )
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.list:
        for spec in CASES.values():
            print(f"{spec.name:18} {spec.label}")
        return 0
    names = list(CASES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in CASES]
        if unknown:
            raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
        if "copy" not in names and not args.no_reference:
            names.insert(0, "copy")
    if "prefect" in names:
        prepare_prefect_env()
    shape = tuple(int(v) for v in args.shape.split(","))
    if len(shape) != 3:
        raise SystemExit("--shape must be T,Y,X")
    source_chunks = parse_chunks(args.source_chunks, shape)
    target_chunks = parse_chunks(args.target_chunks, shape)
    max_mem = parse_bytes(args.max_mem)
    codecs = ["blosc", "none"] if args.codec == "both" else [args.codec]
    bound = rss_bound(max_mem, args.workers)

    args.data_dir.mkdir(parents=True, exist_ok=True)
    sources = ensure_sources(args.data_dir, shape, source_chunks, codecs)  # type: ignore[arg-type]
    nbytes = next(iter(sources.values())).nbytes
    print(
        f"python {sys.version.split()[0]}, zarr {zarr.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, zarr async.concurrency {zarr.config.get('async.concurrency')}"
    )
    print(
        f"array {shape} float32 = {nbytes / MB:.0f} MB, chunks {source_chunks} -> "
        f"{target_chunks}, max_mem {max_mem / MB:.0f} MB, workers {args.workers}, "
        f"RSS bound 1.2 x max_mem x workers + 200 MB = {bound / MB:.0f} MB"
    )
    for codec, array in sources.items():
        path = source_path(args.data_dir, shape, source_chunks, codec)
        warm_page_cache(path)
        warm_up(array, CODECS[codec](), args.data_dir)
        stored = stored_bytes(path)
        print(
            f"source [{codec}]: {path.name}, {stored / MB:.0f} MB stored "
            f"(ratio {nbytes / stored:.2f}), codecs {array.compressors}"
        )
    print(describe_plan(next(iter(sources.values())), target_chunks, max_mem))
    print(flush=True)

    work_dir = args.data_dir / "work"
    results: list[Result] = []
    for name in names:
        spec = CASES[name]
        for codec in codecs:
            ctx = Context(
                codec=codec,
                compressors=CODECS[codec](),
                source=sources[codec],
                source_path=source_path(args.data_dir, shape, source_chunks, codec),
                work_dir=work_dir,
                target_chunks=target_chunks,
                max_mem=max_mem,
                workers=args.workers,
            )
            print(f"[{codec}] {name}: {spec.label} ...", flush=True)
            result = run_case(spec, ctx)
            results.append(result)
            reference = next((r for r in results if r.case == "copy" and r.codec == codec), None)
            cells = dict(zip(HEADER, describe(result, reference, nbytes, bound)))
            if result.status in ("OK", "FAIL"):
                print(
                    f"    {cells['wall s']} s, {cells['MB/s']} MB/s, "
                    f"peak RSS {cells['peak RSS MB']} MB (baseline {cells['baseline MB']} MB), "
                    f"{cells['wall/copy']} copy wall, {cells['RSS/copy']} copy RSS, "
                    f"RSS bound {bound / MB:.0f} MB met: {cells['RSS bound']}, "
                    f"setup {cells['setup s']} s, check {result.status}"
                )
            else:
                print(f"    {result.status}")
            for note in result.notes:
                print(f"    note: {note}")
            sys.stdout.flush()

    rows = []
    for codec in codecs:
        reference = next((r for r in results if r.case == "copy" and r.codec == codec), None)
        rows += [describe(r, reference, nbytes, bound) for r in results if r.codec == codec]
    print()
    print(markdown_table(rows))
    print()
    for codec in codecs:
        reference = next((r for r in results if r.case == "copy" and r.codec == codec), None)
        threads = next((r for r in results if r.case == "threads" and r.codec == codec), None)
        if threads is None or threads.status not in ("OK", "FAIL") or reference is None:
            continue
        ratio = threads.wall / reference.wall
        print(
            f"GOAL [{codec}]: threads wall {ratio:.2f}x copy (goal <= 1.3x: "
            f"{'met' if ratio <= 1.3 else 'MISSED'}), peak RSS {threads.peak / MB:.0f} MB "
            f"(goal < {bound / MB:.0f} MB: {'met' if threads.peak < bound else 'MISSED'}), "
            f"check {threads.status}"
        )
    failed = [r for r in results if r.status in ("FAIL", "ERROR")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
