"""Helpers shared by the tests: sample data, store comparisons, executor modes.

Every array made here holds ``sample_data(shape, dtype)``: distinct values in C
order, so a misplaced element shows up in an element-by-element comparison.
Fixtures live in the conftest files; they and the tests import from here.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from rechunker_core.blocks import Blocks
from rechunker_core.executors.python import PythonExecutor
from rechunker_core.executors.threads import ThreadsExecutor
from rechunker_core.geometry import Region
from rechunker_core.spec import StagedCopySpec
from rechunker_core.storage import ZarrRef
from rechunker_core.zarr_internals import sync

# --------------------------------------------------------------------------
# Sample arrays and groups, and comparing stores
# --------------------------------------------------------------------------

ArrayFactory = Callable[..., zarr.Array]
GroupFactory = Callable[..., zarr.Group]


def sample_data(shape: tuple[int, ...], dtype: Any = "f8") -> np.ndarray:
    """Return 0, 1, 2, ... in C order (distinct as far as the dtype's range allows)."""
    return np.arange(math.prod(shape)).astype(dtype).reshape(shape)


def _dims_kwargs(dims: tuple[str, ...] | None, zarr_format: int) -> dict[str, Any]:
    """Dimension names the way each format stores them."""
    if dims is None:
        return {}
    if zarr_format == 3:
        return {"dimension_names": dims}
    return {"attributes": {"_ARRAY_DIMENSIONS": list(dims)}}


def create_array(
    store: Any,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    *,
    name: str | None = None,
    dtype: Any = "f8",
    zarr_format: int = 3,
    shards: tuple[int, ...] | None = None,
    fill_value: Any = None,
    attributes: dict[str, Any] | None = None,
    dimension_names: tuple[str, ...] | None = None,
    data: np.ndarray | None = None,
) -> zarr.Array:
    """Create an array in ``store`` (a path, a Store or a Group) and fill it."""
    extra = _dims_kwargs(dimension_names, zarr_format)
    attrs = {**extra.pop("attributes", {}), **(attributes or {})}
    if fill_value is not None:
        extra["fill_value"] = fill_value
    if shards is not None:
        extra["shards"] = shards
    if isinstance(store, zarr.Group):
        array = store.create_array(
            name or "", shape=shape, chunks=chunks, dtype=dtype, attributes=attrs, **extra
        )
    else:
        array = zarr.create_array(
            store=str(store) if isinstance(store, Path) else store,
            name=name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            zarr_format=zarr_format,
            attributes=attrs,
            **extra,
        )
    array[...] = sample_data(shape, dtype) if data is None else data
    return array


def create_group(store: Any, zarr_format: int = 3) -> zarr.Group:
    """A nested group with attributes and three arrays of different shapes and dtypes.

    - ``/`` attrs ``{"title": "sample"}``; ``/sub`` and ``/sub/deeper`` have attrs too
    - ``/temp``: (60, 45) float64, chunks (60, 1), dims (y, x), fill 1.5, attrs
    - ``/sub/deeper/counts``: (33,) int16, chunks (7,), dims (x2,), fill 3
    - ``/sub/mask``: (9, 4, 5) uint8, chunks (2, 4, 5), no dimension names
    """
    root = zarr.open_group(
        str(store) if isinstance(store, Path) else store,
        mode="w",
        zarr_format=zarr_format,
        attributes={"title": "sample"},
    )
    sub = root.create_group("sub", attributes={"level": 1})
    deeper = sub.create_group("deeper", attributes={"level": 2})
    create_array(
        root,
        (60, 45),
        (60, 1),
        name="temp",
        zarr_format=zarr_format,
        fill_value=1.5,
        attributes={"units": "K"},
        dimension_names=("y", "x"),
    )
    create_array(
        deeper,
        (33,),
        (7,),
        name="counts",
        dtype="i2",
        zarr_format=zarr_format,
        fill_value=3,
        dimension_names=("x2",),
    )
    create_array(sub, (9, 4, 5), (2, 4, 5), name="mask", dtype="u1", zarr_format=zarr_format)
    return root


def snapshot(store_like: Any) -> dict[str, bytes]:
    """Every key and value in a store (a Store, a local path or a Group's store).

    A local path that does not exist is empty.
    """
    if isinstance(store_like, zarr.Group):
        store_like = store_like.store
    if isinstance(store_like, str | Path):
        if not Path(store_like).exists():
            return {}
        store_like = LocalStore(str(store_like), read_only=True)
    assert isinstance(store_like, Store)
    store: Store = store_like

    async def read_all() -> dict[str, bytes]:
        found = {}
        async for key in store.list():
            value = await store.get(key, prototype=default_buffer_prototype())
            assert value is not None
            found[key] = value.to_bytes()
        return found

    return sync(read_all())


def assert_same_array(target: zarr.Array, source: zarr.Array) -> None:
    """Target equals source element by element, and carries its metadata over."""
    assert target.shape == source.shape
    assert target.dtype == source.dtype
    npt.assert_array_equal(target[...], source[...])
    npt.assert_array_equal(target.fill_value, source.fill_value)
    assert dict(target.attrs) == dict(source.attrs)
    if target.metadata.zarr_format == 3 and source.metadata.zarr_format == 3:
        assert target.metadata.dimension_names == source.metadata.dimension_names


def assert_same_group(target: zarr.Group, source: zarr.Group) -> None:
    """Same hierarchy, group attributes and arrays (see :func:`assert_same_array`)."""
    source_members = dict(source.members(max_depth=None))
    target_members = dict(target.members(max_depth=None))
    assert sorted(target_members) == sorted(source_members)
    assert dict(target.attrs) == dict(source.attrs)
    for name, member in source_members.items():
        other = target_members[name]
        if isinstance(member, zarr.Group):
            assert isinstance(other, zarr.Group)
            assert dict(other.attrs) == dict(member.attrs)
        else:
            assert isinstance(other, zarr.Array)
            assert_same_array(other, member)


# --------------------------------------------------------------------------
# Watching the order of stages
# --------------------------------------------------------------------------

#: Reads and writes of each RecordingRef, by log name; this process only.
EVENTS: dict[str, list[str]] = {}


@dataclass(frozen=True)
class RecordingRef(ZarrRef):
    """A zarr array that notes every read and write in ``EVENTS[log]``.

    Used as the intermediate between two stages, it shows whether any task of
    the second stage read before every task of the first had written.
    """

    log: str = ""

    def read_counting(self, region: Region, blocks: Blocks) -> int:
        EVENTS[self.log].append("read")
        return super().read_counting(region, blocks)

    def write(self, region: Region, data: Blocks | np.ndarray[Any, Any]) -> None:
        super().write(region, data)
        EVENTS[self.log].append("write")


@dataclass(frozen=True)
class Recorded:
    """A two-stage spec whose intermediate records its reads and writes."""

    source: zarr.Array[Any]
    spec: StagedCopySpec
    target: ZarrRef
    log: str

    def check(self) -> None:
        """The target equals the source; every write came before every read."""
        npt.assert_array_equal(self.target.open()[...], self.source[...])
        events = EVENTS[self.log]
        writes = events.count("write")
        assert writes == self.spec.stages[0].num_tasks > 1
        assert events.count("read") == self.spec.stages[1].num_tasks > 1
        assert events[:writes] == ["write"] * writes, events


# --------------------------------------------------------------------------
# Plans run by independent processes (HPC array jobs)
# --------------------------------------------------------------------------

CLI = [sys.executable, "-m", "rechunker_core.cli"]


def run_cli(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``rechunker-core ARGS`` in a new process and return what it did."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd)


def run_cli_ok(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``rechunker-core ARGS`` in a new process; fail with its stderr if it fails."""
    done = run_cli(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done


def run_stages(plan: Path, stages: int, parts: int) -> None:
    """Run every stage as ``parts`` concurrent ``run-part`` processes (the plan's own N)."""
    for stage in range(stages):
        processes = [
            subprocess.Popen(
                [*CLI, *map(str, ("run-part", plan, "--stage", stage, "--part", i))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(parts)
        ]
        for process in processes:
            out, err = process.communicate()
            assert process.returncode == 0, err
            assert f"stage {stage}, part" in out


# --------------------------------------------------------------------------
# Every executor and mode the shared suite runs
# --------------------------------------------------------------------------

# Each :class:`Mode` builds an executor for one test. Modes whose tasks run in
# other processes set ``in_process=False``: the suite then gives them stores on
# disk, and checks that they refuse in-memory stores.


@dataclass(frozen=True)
class Mode:
    """One way of running a plan.

    ``make(request)`` returns the executor; it may use ``request.getfixturevalue``
    to reach session fixtures (a dask cluster, a Prefect harness).

    ``cases`` limits a mode to some of the shared suite's cases: test names,
    or ``name[zarr_format]`` for one format of a case run in both. ``None``
    runs every case. A mode whose every run starts processes pays seconds
    per case; it runs the cases that take the paths it alone adds (specs
    pickled or saved as JSON, tasks of one round spread over processes, the
    refusal of in-memory stores), while the engine's in-process mode, which
    builds the same plan, runs them all.
    """

    name: str
    make: Callable[[pytest.FixtureRequest], Any]
    in_process: bool = True
    cases: frozenset[str] | None = None

    def runs(self, case: str, zarr_format: int | None = None) -> bool:
        """Whether the shared suite runs ``case`` (in ``zarr_format``) in this mode.

        >>> mode = Mode("m", print, cases=frozenset({"test_a", "test_b[3]"}))
        >>> mode.runs("test_a", 2), mode.runs("test_b", 3), mode.runs("test_b", 2)
        (True, True, False)
        """
        if self.cases is None:
            return True
        return case in self.cases or f"{case}[{zarr_format}]" in self.cases


MODES: list[Mode] = [
    Mode("python", lambda request: PythonExecutor()),
    Mode("threads", lambda request: ThreadsExecutor(max_workers=2)),
]


# Engines: each ``make`` imports its executor lazily and reaches its session
# fixture (tests/conftest.py) through the request.


def _dask(**compute_kwargs: Any) -> Callable[[pytest.FixtureRequest], Any]:
    def make(request: pytest.FixtureRequest) -> Any:
        from rechunker_core.executors.dask import DaskExecutor

        return DaskExecutor(**compute_kwargs)

    return make


def _dask_distributed(request: pytest.FixtureRequest) -> Any:
    from rechunker_core.executors.dask import DaskExecutor

    return DaskExecutor(scheduler=request.getfixturevalue("dask_client"))


def _prefect(request: pytest.FixtureRequest) -> Any:
    from rechunker_core.executors.prefect import PrefectExecutor

    request.getfixturevalue("prefect_harness")
    return PrefectExecutor()


def _beam(mode: str) -> Callable[[pytest.FixtureRequest], Any]:
    def make(request: pytest.FixtureRequest) -> Any:
        from rechunker_core.executors.beam import BeamExecutor

        return BeamExecutor({"direct_running_mode": mode, "direct_num_workers": 2})

    return make


def _parts(request: pytest.FixtureRequest) -> Any:
    from rechunker_core.executors.parts import PartsExecutor

    return PartsExecutor(request.getfixturevalue("tmp_path") / "plan.json", parts=2)


#: The suite's cases for process-based modes: several arrays, each of several
#: stages (the barriers between rounds, finish in a worker), shards written by
#: different processes, and the refusal of in-memory stores.
_ACROSS_PROCESSES = frozenset(
    {"test_nested_group[3]", "test_sharded_target", "test_refuses_in_memory_stores"}
)

#: The cases for engines that pay seconds per run (a Beam pipeline, a Prefect
#: flow): each path of their translation once, not every format and spelling
#: (the in-process modes run those).
_ENGINE_CASES = _ACROSS_PROCESSES | {
    "test_single_stage[2]",
    "test_multi_stage_deletes_intermediates[3]",
    "test_keep_temp_keeps_intermediates",
    "test_sharded_source",
    "test_reports_progress",
}

MODES += [
    Mode("dask-sync", _dask(scheduler="sync")),
    Mode("dask-threads", _dask(scheduler="threads", num_workers=2)),
    Mode(
        "dask-processes",
        _dask(scheduler="processes", num_workers=2),
        in_process=False,
        cases=_ACROSS_PROCESSES | {"test_multi_stage_deletes_intermediates[2]"},
    ),
    Mode(
        "dask-distributed",
        _dask_distributed,
        in_process=False,
        cases=_ACROSS_PROCESSES | {"test_keep_temp_keeps_intermediates"},
    ),
    Mode("prefect", _prefect, cases=_ENGINE_CASES),
    # Beam runs unpickled copies of the plan even in one process, so a
    # MemoryStore's writes would be lost: it refuses them in every mode.
    Mode("beam-threads", _beam("multi_threading"), in_process=False, cases=_ENGINE_CASES),
    # The same pipeline as beam-threads; only its workers are processes (and
    # start in seconds: shards from several processes are dask's and parts').
    Mode(
        "beam-processes",
        _beam("multi_processing"),
        in_process=False,
        cases=frozenset({"test_single_stage[3]", "test_refuses_in_memory_stores"}),
    ),
    # Every case runs from a JSON plan: each kind of spec (formats, groups,
    # shards, kept intermediates) must survive the round trip.
    Mode(
        "parts",
        _parts,
        in_process=False,
        cases=_ACROSS_PROCESSES,
    ),
]


class EngineExecutor(PythonExecutor):
    """The python executor, declaring that its engine holds ``engine_memory`` per worker."""

    def __init__(self, engine_memory: Any) -> None:
        self.engine_memory = engine_memory


def in_process_executor(name: str, request: pytest.FixtureRequest) -> Any:
    """The executor ``name`` set to run every task in this process, on two threads."""
    if name == "dask-threads":
        pytest.importorskip("dask")
        from rechunker_core.executors.dask import DaskExecutor

        return DaskExecutor(scheduler="threads", num_workers=2)
    if name.startswith("beam-"):
        pytest.importorskip("apache_beam")
        from rechunker_core.executors.beam import BeamExecutor

        mode = name.removeprefix("beam-").replace("-", "_")
        return BeamExecutor(options={"direct_running_mode": mode, "direct_num_workers": 2})
    if name == "prefect-threads":
        request.getfixturevalue("prefect_harness")
        from prefect.task_runners import ThreadPoolTaskRunner

        from rechunker_core.executors.prefect import PrefectExecutor

        return PrefectExecutor(task_runner=ThreadPoolTaskRunner(max_workers=2))
    return name
