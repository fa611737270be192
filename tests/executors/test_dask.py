"""The dask executor: graph shape, embedding in user graphs, batching, refusals.

The shared suite (test_suite.py) runs it on the sync, threads, processes and
distributed schedulers; these tests cover what is particular to dask.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.storage import MemoryStore

from rechunker_core import CopySpec, StagedCopySpec, rechunk
from rechunker_core.executors.dask import BARRIER_FAN_IN, MAX_GRAPH_NODES, DaskExecutor
from rechunker_core.locations import StoreLocation
from rechunker_core.storage import ZarrRef
from tests.helpers import ArrayFactory, GroupFactory, Recorded, assert_same_array

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
from dask.delayed import Delayed  # noqa: E402
from dask.task_spec import GraphNode  # noqa: E402

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (41, 37), (41, 1), (1, 37)


def multi_stage(tmp_path: Path, make_array: ArrayFactory, name: str, **kwargs: Any) -> Any:
    """A two-stage rechunk of a fresh array on disk, planned for dask."""
    source = make_array(tmp_path / f"{name}-s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        2500,
        str(tmp_path / f"{name}-t.zarr"),
        temp_store=str(tmp_path / f"{name}-tmp.zarr"),
        executor=DaskExecutor(**kwargs),
    )
    assert len(rechunked.spec[0].stages) == 2
    return source, rechunked


def _barrier_roots(graph: dict[Any, Any]) -> dict[tuple[int, int], Any]:
    """(spec, stage) -> the root key of that stage's barrier tree."""
    barriers = {k for k in graph if isinstance(k, tuple) and "barrier" in k[0]}
    below = {d for k in barriers for d in graph[k].dependencies}
    roots = {}
    for key in barriers - below:
        *_, s, k = key[0].split("-")
        roots[(int(s), int(k))] = key
    return roots


def _leaves(graph: dict[Any, Any], key: Any) -> set[Any]:
    """The copy nodes a barrier (sub)tree waits for."""
    if "copy" in key[0]:
        return {key}
    return set().union(*(_leaves(graph, d) for d in graph[key].dependencies))


def test_graph_has_one_task_per_copy_and_a_barrier_per_stage(
    tmp_path: Path, make_group: GroupFactory
) -> None:
    source = make_group(tmp_path / "s.zarr")
    rechunked = rechunk(
        source,
        {"temp": (1, 45), "sub/mask": (9, 1, 5)},
        2500,
        str(tmp_path / "t.zarr"),
        temp_store=str(tmp_path / "tmp.zarr"),
        executor="dask",
    )
    specs, plan = rechunked.spec, rechunked.plan
    assert isinstance(plan, Delayed)
    graph = dict(plan.__dask_graph__())
    assert all(isinstance(node, GraphNode) for node in graph.values())
    copies = {k: v for k, v in graph.items() if isinstance(k, tuple) and "copy" in k[0]}
    stages = {k: v for k, v in graph.items() if isinstance(k, tuple) and "stage" in k[0]}
    assert len(copies) == sum(spec.num_tasks for spec in specs)
    roots = _barrier_roots(graph)
    assert sorted(roots) == sorted(
        (s, k) for s, spec in enumerate(specs) for k in range(len(spec.stages))
    )
    for (_, s, k, _), node in copies.items():
        # The stage's data, and the whole previous stage of the same array: nothing else.
        expected = {(next(iter(stages))[0], s, k)} | ({roots[(s, k - 1)]} if k else set())
        assert set(node.dependencies) == expected
    for (s, k), root in roots.items():
        assert _leaves(graph, root) == {key for key in copies if key[1:3] == (s, k)}
    last = {roots[(s, len(spec.stages) - 1)] for s, spec in enumerate(specs)}
    assert set(graph[plan.key].dependencies) == last

    dask.compute(plan, scheduler="sync")
    target = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    for name in ("temp", "sub/mask"):
        assert_same_array(target[name], source[name])
    assert not (tmp_path / "tmp.zarr").exists()


def test_stages_run_in_order(recorded: Recorded) -> None:
    plan = DaskExecutor().prepare_plan([recorded.spec])
    DaskExecutor().execute_plan(plan, scheduler="threads", num_workers=4)
    recorded.check()
    assert not recorded.spec.stages[0].target.location.exists()


def test_compute_with_another_collection(tmp_path: Path, make_array: ArrayFactory) -> None:
    source, rechunked = multi_stage(tmp_path, make_array, "a")
    other = da.arange(100, chunks=10).sum()
    done, total = dask.compute(rechunked.plan, other, scheduler="threads")
    assert done is None
    assert total == 4950
    assert_same_array(rechunked.target, source)
    assert not (tmp_path / "a-tmp.zarr").exists()


def test_several_plans_in_one_compute(tmp_path: Path, make_array: ArrayFactory) -> None:
    runs = [multi_stage(tmp_path, make_array, name) for name in "abc"]
    dask.compute(*[rechunked.plan for _, rechunked in runs], scheduler="threads")
    for source, rechunked in runs:
        assert_same_array(rechunked.target, source)
    assert not any(tmp_path.glob("*-tmp.zarr"))


def test_batch_size(tmp_path: Path, make_array: ArrayFactory) -> None:
    source, rechunked = multi_stage(tmp_path, make_array, "a", batch_size=4)
    (spec,) = rechunked.spec
    copies = [k for k in rechunked.plan.__dask_graph__() if isinstance(k, tuple) and len(k) == 4]
    assert len(copies) == sum(-(-stage.num_tasks // 4) for stage in spec.stages)
    rechunked.execute(scheduler="sync")
    assert_same_array(rechunked.target, source)
    with pytest.raises(ValueError, match="batch_size"):
        DaskExecutor(batch_size=0)


def test_builds_a_large_graph(tmp_path: Path) -> None:
    """10**5 tasks asked for one by one: every one in the graph, under 64-way barriers."""
    n = 10**5
    refs = [
        ZarrRef(StoreLocation(str(tmp_path / name)), (n,), np.dtype("u1"), (1,), (1,))
        for name in ("a", "b")
    ]
    spec = StagedCopySpec((CopySpec(refs[0], refs[1], (1,)),))
    graph = dict(DaskExecutor(batch_size=1).prepare_plan([spec]).__dask_graph__())
    assert sum(1 for k in graph if "copy" in k[0]) == n
    assert max(len(node.dependencies) for node in graph.values()) <= BARRIER_FAN_IN


def test_a_huge_plan_is_batched_to_a_bounded_graph(tmp_path: Path) -> None:
    """10**7 copy tasks of 4 MiB each (metadata only: nothing runs) become about
    at most 10**5 nodes of about 100 copy tasks."""
    shape, task = (10**7, 2**22), (1, 2**22)
    refs = [
        ZarrRef(StoreLocation(str(tmp_path / name)), shape, np.dtype("u1"), task, task)
        for name in ("a", "b")
    ]
    spec = StagedCopySpec((CopySpec(refs[0], refs[1], task),))
    graph = dict(DaskExecutor().prepare_plan([spec]).__dask_graph__())
    copies = [node for key, node in graph.items() if "copy" in key[0]]
    assert 0.95 * MAX_GRAPH_NODES < len(copies) < len(graph) <= MAX_GRAPH_NODES
    assert max(len(node.dependencies) for node in graph.values()) <= BARRIER_FAN_IN


def test_processes_refuse_in_memory_stores(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4", fill_value=-1)
    rechunked = rechunk(source, (10, 37), "1MB", MemoryStore(), executor="dask")
    with pytest.raises(ValueError, match="in-memory store"):
        rechunked.execute(scheduler="processes")
    # Embedded in a user's graph, the tasks themselves notice the other process.
    with pytest.raises(ValueError, match="in-memory store"):
        dask.compute(rechunked.plan, scheduler="processes", num_workers=1)
    assert (rechunked.target[...] == -1).all()
    rechunked.execute(scheduler="threads")
    npt.assert_array_equal(rechunked.target[...], source[...])


def test_engines_are_imported_lazily() -> None:
    code = (
        "import sys, rechunker_core.executors.dask, rechunker_core.executors.prefect\n"
        "import rechunker_core.executors.beam\n"
        "loaded = {'dask', 'prefect', 'apache_beam'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("module", "executor", "extra"),
    [("dask", "dask", "dask"), ("prefect", "prefect", "prefect"), ("apache_beam", "beam", "beam")],
)
def test_missing_engine_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make_array: ArrayFactory,
    module: str,
    executor: str,
    extra: str,
) -> None:
    source = make_array(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS)
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a missing module
    with pytest.raises(ImportError, match=rf'pip install "rechunker-core\[{extra}\]"'):
        rechunk(source, (10, 37), "1MB", str(tmp_path / "t.zarr"), executor=executor)
    assert not (tmp_path / "t.zarr").exists()


def test_helpers_stand_in_for_the_threads_dask_runs_here() -> None:
    """Idle workers' helpers (rechunker_core.assist) count dask's local threads."""
    import dask
    from dask.system import CPU_COUNT

    from rechunker_core.executors.dask import _threads_here

    assert _threads_here({"scheduler": "sync"}) == 1
    assert _threads_here({"scheduler": "threads", "num_workers": 3}) == 3
    with ThreadPoolExecutor(5) as pool:
        assert _threads_here({"scheduler": "threads", "pool": pool}) == 5
        assert _threads_here({"scheduler": pool}) == 5
    with dask.config.set(num_workers=4):
        assert _threads_here({"scheduler": "threads"}) == 4
    with dask.config.set(num_workers=None, pool=None):
        assert _threads_here({"scheduler": "threads"}) == CPU_COUNT
