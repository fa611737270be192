"""The Prefect executor: real flows on a temporary Prefect server.

The shared suite runs it too (mode ``prefect``); these tests cover the flow
itself, batching, retries and task runners.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy.testing as npt
import pytest
from zarr.storage import MemoryStore

from rechunker_core import StagedCopySpec, rechunk
from rechunker_core.blocks import Blocks
from rechunker_core.executors.prefect import PrefectExecutor
from rechunker_core.geometry import Region
from rechunker_core.spec import ArrayRef
from tests.helpers import ArrayFactory, Recorded, assert_same_array, snapshot

pytest.importorskip("prefect")

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_plan_is_a_flow_run_by_calling_it(recorded: Recorded) -> None:
    from prefect import Flow

    plan = PrefectExecutor(batch_size=3).prepare_plan([recorded.spec])
    assert isinstance(plan, Flow)
    assert plan() is None
    recorded.check()
    assert not recorded.spec.stages[0].target.location.exists()


@dataclass(frozen=True)
class FailingOnce:
    """A source that fails the first read of each region: a transient store error."""

    inner: ArrayRef
    failed: set[str]
    lock: threading.Lock

    shape = property(lambda self: self.inner.shape)
    dtype = property(lambda self: self.inner.dtype)
    chunks = property(lambda self: self.inner.chunks)
    read_chunks = property(lambda self: self.inner.read_chunks)

    def read_into(self, region: Region, blocks: Blocks) -> None:
        with self.lock:
            first = repr(region) not in self.failed
            self.failed.add(repr(region))
        if first:
            raise OSError(f"transient failure reading {region}")
        self.inner.read_into(region, blocks)


def flaky_spec(tmp_path: Path, make_array: ArrayFactory) -> tuple[Any, StagedCopySpec]:
    source = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    (spec,) = rechunk(source, (41, 5), "1MB", str(tmp_path / "t.zarr"), executor="python").spec
    (stage,) = spec.stages
    flaky = FailingOnce(stage.source, set(), threading.Lock())
    return source, StagedCopySpec((replace(stage, source=flaky),))


def test_retries(tmp_path: Path, make_array: ArrayFactory) -> None:
    source, spec = flaky_spec(tmp_path, make_array)
    with pytest.raises(OSError, match="transient failure"):
        PrefectExecutor(retries=0).prepare_plan([spec])()
    source, spec = flaky_spec(tmp_path / "again", make_array)
    PrefectExecutor(retries=2, retry_delay_seconds=0, batch_size=1).prepare_plan([spec])()
    npt.assert_array_equal(spec.target.open()[...], source[...])


def test_task_runner_from_execute(tmp_path: Path, make_array: ArrayFactory) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    source = make_array(MemoryStore(), (41, 37), (41, 1), dtype="i4", fill_value=-1)
    rechunked = rechunk(source, (1, 37), 2500, MemoryStore(), temp_store=MemoryStore(),
                        executor=PrefectExecutor(task_runner=ThreadPoolTaskRunner(3)))  # fmt: skip
    target = rechunked.execute(task_runner=ThreadPoolTaskRunner(max_workers=1))
    assert_same_array(target, source)  # type: ignore[arg-type]


def test_helpers_stand_in_for_the_threads_prefect_runs_here() -> None:
    """Idle workers' helpers (rechunker_core.assist) count a thread pool's threads."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    from rechunker_core.executors.prefect import _threads_here

    assert _threads_here(ThreadPoolTaskRunner(max_workers=3)) == 3
    assert _threads_here(ProcessPoolTaskRunner(max_workers=2)) == 0


def test_process_pool_refuses_in_memory_stores(make_array: ArrayFactory) -> None:
    from prefect.task_runners import ProcessPoolTaskRunner

    source = make_array(MemoryStore(), (41, 37), (41, 1), dtype="i4", fill_value=-1)
    executor = PrefectExecutor(task_runner=ProcessPoolTaskRunner(max_workers=2))
    assert not executor.shares_memory
    target = MemoryStore()
    with pytest.raises(ValueError, match="in-memory store"):
        rechunk(source, (10, 37), "1MB", target, executor=executor)
    assert snapshot(target) == {}  # refused before anything was written
