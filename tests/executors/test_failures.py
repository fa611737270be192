"""Engines under failure: a dask worker killed, a part killed or run twice, a task raising once.

Each engine's own mechanism takes care of what it can (dask reschedules a
dead worker's tasks, Prefect and Beam retry a failed task), and the journal
makes a part run again do only what is left. Sources are read through
read-only stores and hashed before and after (``frozen_source``); every
target is compared with its source element by element.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy.testing as npt
import pytest
import zarr
from zarr.storage import LocalStore

from rechunker_core import is_complete, rechunk
from rechunker_core.algorithm import plan_layout
from rechunker_core.cli import main
from rechunker_core.executors.parts import PartsExecutor, finish_plan, load_plan, run_part
from tests.faults import OnceStore, log_tasks
from tests.helpers import MODES, Mode

Source = Callable[..., Any]
REPO = Path(__file__).resolve().parents[2]
SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS, TWO_STAGES = (120, 96), (120, 1), (1, 96), 5000
#: Between local stores: 16 tasks writing 15 chunks each, then 15 tasks.
LOCAL = plan_layout(SHAPE, 4, SOURCE_CHUNKS, TARGET_CHUNKS, TWO_STAGES).stages
LOCAL_WRITES_PER_TASK = LOCAL[0].write_ops // LOCAL[0].num_tasks
#: Two stages when the intermediate is wrapped (OnceStore): a wrapped store is not a
#: local directory, so its tiny chunks go many at once and cost the plan more memory.
#: 16 tasks writing 15 chunks each (first_stage_writes checks it), then 15 tasks.
WRAPPED_TWO_STAGES = 10_000


def first_stage_writes(rechunked: Any) -> tuple[int, int]:
    """Chunk writes of a plan's first stage: in all, and per task (each task writes as many)."""
    stage = rechunked.spec[0].stages[0]
    per_task = math.prod(-(-t // c) for t, c in zip(stage.task_chunks, stage.target.chunks))
    assert stage.num_tasks > 4 and per_task > 4, "the plan is too small for this test"
    return stage.num_tasks * per_task, per_task


def wait_for(path: Path, running: threading.Thread) -> str:
    """Block until ``path`` holds something (written by another process); return it."""
    event = threading.Event()
    while not (path.exists() and path.read_text()):
        if not running.is_alive():
            raise AssertionError(f"the run ended before {path} was written")
        event.wait(0.02)
    return path.read_text()


# --------------------------------------------------------------------------
# dask.distributed: a worker killed with SIGKILL in the middle of a stage
# --------------------------------------------------------------------------


def test_dask_worker_killed_mid_stage(
    tmp_path: Path, frozen_source: Source, dask_client: Any, record_property: Any
) -> None:
    """On the session's LocalCluster (workers under nannies); it has both workers back after."""
    from rechunker_core.executors.dask import DaskExecutor

    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    flag, log = tmp_path / "stalled-worker", tmp_path / "writes"
    # A worker's chunk write of stage 0 just after 4 of its 8 tasks stalls it (15 writes
    # each through a wrapped store: the plan differs from LOCAL's). Writes take 0.5 s, all
    # of a task's at once: the 4 tasks take well over journal.FOLLOW_SECONDS (how late
    # other workers may see a finished task).
    after = 4 * 15 + 3
    temp = OnceStore(LocalStore(str(tmp_path / "tmp.zarr")), str(flag), True, after, str(log), 0.5)
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        WRAPPED_TWO_STAGES,
        str(tmp_path / "t.zarr"),
        temp_store=temp,
        executor=DaskExecutor(scheduler=dask_client),
    )
    writes_in_all, per_task = first_stage_writes(rechunked)
    assert (rechunked.spec[0].stages[0].num_tasks, per_task) == (16, 15)
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(out=rechunked.execute()))
    runner.start()
    try:
        pid = int(wait_for(flag, runner))
        assert pid in dask_client.run(os.getpid).values()  # a worker process, not this one
        os.kill(pid, signal.SIGKILL)
    finally:
        runner.join()
        dask_client.wait_for_workers(2, timeout=120)  # the nanny restarted it
    assert "out" in outcome, "the run did not complete"
    npt.assert_array_equal(outcome["out"][...], source[...])
    assert is_complete(tmp_path / "t.zarr") and not (tmp_path / "tmp.zarr").exists()
    # dask ran the dead worker's finished tasks again (their results died with it), but
    # the journal let those batches skip the copy: about the task in flight is redone.
    writes = log.read_text().split()
    redone = len(writes) - len(set(writes))
    record_property("chunk writes redone", redone)
    assert len(set(writes)) == writes_in_all
    # Without the journal, dask would redo the 8 tasks the dead worker finished; journals
    # are followed up to journal.FOLLOW_SECONDS late, so the last few (and the one in
    # flight) may be redone.
    assert redone <= 5 * per_task, redone


# --------------------------------------------------------------------------
# The parts workflow: a part killed and run again; one part run twice at once
# --------------------------------------------------------------------------


def saved_plan(tmp_path: Path, source: Any, parts: int = 2) -> Path:
    path = tmp_path / "plan.json"
    rechunk(
        source,
        TARGET_CHUNKS,
        TWO_STAGES,
        str(tmp_path / "t.zarr"),
        temp_store=str(tmp_path / "tmp.zarr"),
        executor=PartsExecutor(path, parts=parts),
    )
    return path


def part_command(plan: Path, log: Path, *extra: str, stage: int = 0, part: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.faults",
        "--log",
        str(log),
        *extra,
        "run-part",
        str(plan),
        "--stage",
        str(stage),
        "--part",
        str(part),
    ]


def test_a_killed_part_run_again_does_the_rest(
    tmp_path: Path, frozen_source: Source, record_property: Any
) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    plan = saved_plan(tmp_path, source)
    first = tmp_path / "first.log"
    # Part 0 of stage 0 has 8 tasks of 15 chunk writes each: stall (tearing) the 49th write,
    # in its 4th task.
    per_part, per_task = LOCAL[0].num_tasks // 2, LOCAL_WRITES_PER_TASK
    assert (per_part, per_task) == (8, 15)
    process = subprocess.Popen(
        part_command(plan, first, "--stall", "write", "--after", str(3 * per_task + 4)),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "STALLED"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    again: list[str] = []
    with log_tasks(again):  # the same command, run again (here, in this process)
        assert main(["run-part", str(plan), "--stage", "0", "--part", "0"]) == 0
    started = first.read_text().split()
    record_property("tasks redone", len(set(started) & set(again)))
    assert len(started) == 4 and len(again) == per_part - 3  # 3 tasks were done and recorded
    assert set(started) & set(again) == {started[-1]}  # only the one in flight is redone
    saved = load_plan(plan)
    run_part(saved, 0, 1)
    for part in (0, 1):
        run_part(saved, 1, part)
    finish_plan(saved)
    npt.assert_array_equal(zarr.open_array(tmp_path / "t.zarr")[...], source[...])
    assert is_complete(tmp_path / "t.zarr")


def test_one_part_run_twice_at_once(tmp_path: Path, frozen_source: Source) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    plan = saved_plan(tmp_path, source, parts=1)
    # Both copies pause on their first chunk write until both are there: they overlap.
    gate = ["--stall", "gate", "--after", "2", "--gate", str(tmp_path / "gate")]
    processes = [
        subprocess.Popen(
            part_command(plan, tmp_path / f"{i}.log", *gate),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process in processes:
        out, err = process.communicate()
        assert process.returncode == 0, err
        assert "stage 0, part 0 of 1" in out
    assert all((tmp_path / f"{i}.log").read_text() for i in range(2))  # both copied
    saved = load_plan(plan)
    run_part(saved, 1, 0)
    finish_plan(saved)
    npt.assert_array_equal(zarr.open_array(tmp_path / "t.zarr")[...], source[...])


# --------------------------------------------------------------------------
# Prefect and Beam: a task that raises once is retried by the engine itself
# --------------------------------------------------------------------------


def test_prefect_retries_a_task_that_failed_once(
    tmp_path: Path, frozen_source: Source, prefect_harness: None
) -> None:
    from rechunker_core.executors.prefect import PrefectExecutor

    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    flag = tmp_path / "failed-once"
    target = OnceStore(LocalStore(str(tmp_path / "t.zarr")), str(flag))
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        TWO_STAGES,
        target,
        temp_store=str(tmp_path / "tmp.zarr"),
        executor=PrefectExecutor(retries=1, retry_delay_seconds=0),
    )
    out = rechunked.execute()
    assert flag.exists()  # a task did fail
    npt.assert_array_equal(out[...], source[...])


def test_beam_retries_a_bundle_that_failed_once(tmp_path: Path, frozen_source: Source) -> None:
    pytest.importorskip("apache_beam")
    from rechunker_core.executors.beam import BeamExecutor

    source = frozen_source(tmp_path / "s.zarr", (8, 6), (8, 1), dtype="i4")
    flag = tmp_path / "failed-once"
    target = OnceStore(LocalStore(str(tmp_path / "t.zarr")), str(flag))
    # The bundle-based DirectRunner retries a failed bundle, as Dataflow retries work items.
    executor = BeamExecutor(runner="BundleBasedDirectRunner")
    rechunked = rechunk(source, (2, 6), "1MB", target, executor=executor)
    rechunked.execute()
    assert flag.exists()
    npt.assert_array_equal(zarr.open_array(tmp_path / "t.zarr")[...], source[...])


# --------------------------------------------------------------------------
# Every engine: a run that failed part way resumes, doing again only what was in flight
# --------------------------------------------------------------------------

#: One mode per engine (tests/helpers.py); the parts workflow resumes by running
#: its parts again (test_a_killed_part_run_again_does_the_rest).
ENGINES = ["python", "threads", "dask-distributed", "prefect", "beam-threads"]


@pytest.mark.parametrize("mode", [m for m in MODES if m.name in ENGINES], ids=lambda m: m.name)
def test_every_engine_resumes_a_failed_run(
    tmp_path: Path,
    frozen_source: Source,
    mode: Mode,
    request: pytest.FixtureRequest,
    record_property: Any,
) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    flag, log = tmp_path / "failed", tmp_path / "writes"
    # The 100th chunk write into the intermediate (in some process) fails, once: 16 tasks
    # of 15 writes each (first_stage_writes checks it).
    temp = OnceStore(LocalStore(str(tmp_path / "tmp.zarr")), str(flag), after=100, log=str(log))
    target = str(tmp_path / "t.zarr")
    rechunked = rechunk(
        source, TARGET_CHUNKS, WRAPPED_TWO_STAGES, target, temp_store=temp,
        executor=mode.make(request),
    )  # fmt: skip
    writes_in_all, per_task = first_stage_writes(rechunked)
    assert (rechunked.spec[0].stages[0].num_tasks, per_task) == (16, 15)
    with pytest.raises(Exception, match="injected failure"):
        rechunked.execute()
    assert flag.exists() and not is_complete(target)
    rechunk(
        source,
        TARGET_CHUNKS,
        WRAPPED_TWO_STAGES,
        target,
        temp_store=temp,
        executor=mode.make(request),
        resume=True,
    ).execute()
    npt.assert_array_equal(zarr.open_array(target)[...], source[...])
    assert is_complete(target) and not (tmp_path / "tmp.zarr").exists()
    writes = log.read_text().split()
    redone = len(writes) - len(set(writes))
    record_property("chunk writes redone", redone)
    assert len(set(writes)) == writes_in_all
    # At most the tasks in flight: the threads executor's 2 x 2, else 2.
    assert redone <= per_task * (4 if mode.name == "threads" else 2), redone


def test_a_replaced_target_is_copied_in_full(tmp_path: Path, frozen_source: Source) -> None:
    """A process that followed one job's journal takes nothing from it for the next job."""
    pytest.importorskip("dask")
    from rechunker_core.executors.dask import DaskExecutor

    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    target, temp = str(tmp_path / "t.zarr"), str(tmp_path / "tmp.zarr")
    executor = DaskExecutor(scheduler="sync")  # every batch in this very process
    for options in (None, {"overwrite": True}, {"overwrite": True}):
        written: list[str] = []
        with log_tasks(written):
            rechunked = rechunk(
                source,
                TARGET_CHUNKS,
                TWO_STAGES,
                target,
                target_options=options,
                temp_store=temp,
                executor=executor,
            )
            rechunked.execute()
        assert (
            len(written) == rechunked.spec[0].num_tasks == LOCAL[0].num_tasks + LOCAL[1].num_tasks
        )
        npt.assert_array_equal(zarr.open_array(target)[...], source[...])
