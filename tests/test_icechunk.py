"""Icechunk targets (and sources) on a local-filesystem repository.

Every target is compared with its source element by element, and the branch
is read through a new read-only session, as any other reader would: it must
show the state before the rechunk until the one commit at its end, whatever
happened in between (a failed run, a run killed with SIGKILL mid-stage).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.testing as npt
import pytest
import zarr

from rechunker_core import rechunk
from tests.helpers import (
    MODES,
    ArrayFactory,
    GroupFactory,
    Mode,
    assert_same_group,
    run_cli,
    run_stages,
)

icechunk = pytest.importorskip("icechunk")

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (41, 37), (41, 1), (1, 37)
#: Small enough that (41, 1) -> (1, 37) needs an intermediate.
TWO_STAGES = 3000
#: One mode per executor (dask on the warm session cluster), and for Beam both
#: tasks in this process (writing the run's fork directly) and in others
#: (leaving forks as files).
EXECUTORS = [
    m
    for m in MODES
    if m.name
    in (
        "python",
        "threads",
        "dask-distributed",
        "prefect",
        "beam-threads",
        # Other processes: dask-distributed here; the parts workflow in
        # test_a_saved_plan_is_finished_only_by_the_process_that_made_it.
    )
]


def new_repo(path: Path) -> Any:
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))


def branch_arrays(repo: Any) -> list[str]:
    """What a new reader of ``main`` sees: the names of its arrays (a new repository: none)."""
    try:
        root = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
    except zarr.errors.GroupNotFoundError:
        return []
    return sorted(name for name, _ in root.arrays())


def committed(repo: Any, path: str) -> zarr.Array[Any]:
    return zarr.open_array(repo.readonly_session(branch="main").store, path=path, mode="r")


@pytest.fixture
def source(tmp_path: Path, make_array: ArrayFactory) -> zarr.Array[Any]:
    return make_array(
        tmp_path / "source.zarr",
        SHAPE,
        SOURCE_CHUNKS,
        dtype="f4",
        fill_value=-1.25,
        attributes={"units": "K"},
        dimension_names=("time", "space"),
    )


@pytest.mark.parametrize("mode", EXECUTORS, ids=lambda m: m.name)
def test_array_into_a_session_on_every_executor(
    mode: Mode, request: pytest.FixtureRequest, tmp_path: Path, source: zarr.Array[Any]
) -> None:
    repo = new_repo(tmp_path / "repo")
    before = repo.lookup_branch("main")
    session = repo.writable_session("main")
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        TWO_STAGES,
        session,
        temp_store=str(tmp_path / "temp.zarr"),
        executor=mode.make(request),
        array_name="air",
    )
    assert len(rechunked.spec[0].stages) == 2  # through an intermediate
    assert branch_arrays(repo) == [] and not session.has_uncommitted_changes
    target = rechunked.execute(commit="rechunk air")
    assert repo.lookup_branch("main") != before
    air = committed(repo, "air")
    assert air.chunks == TARGET_CHUNKS
    npt.assert_array_equal(air[...], source[...])
    assert dict(air.attrs) == {"units": "K"}
    assert air.metadata.dimension_names == ("time", "space")
    npt.assert_array_equal(target[...], source[...])
    assert not (tmp_path / "temp.zarr").exists()  # intermediates and workers' forks are gone


@pytest.mark.parametrize("name", ["python", "dask-distributed"])  # here; forks as files
def test_group_into_a_session(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, make_group: GroupFactory
) -> None:
    (mode,) = [m for m in MODES if m.name == name]
    source = make_group(tmp_path / "source.zarr")
    repo = new_repo(tmp_path / "repo")
    rechunked = rechunk(
        source,
        {"temp": (1, 45), "sub/deeper/counts": (10,), "sub/mask": (9, 1, 5)},
        2500,
        repo.writable_session("main"),
        temp_store=str(tmp_path / "temp.zarr"),
        executor=mode.make(request),
    )
    assert any(len(spec.stages) > 1 for spec in rechunked.spec)
    rechunked.execute(commit="rechunk the group")
    target = zarr.open_group(repo.readonly_session(branch="main").store, mode="r")
    assert_same_group(target, source)
    assert target["temp"].chunks == (1, 45)
    assert target["sub/mask"].chunks == (9, 1, 5)


def test_dataset_opens_identical_from_the_committed_snapshot(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(0)
    dataset = xr.Dataset(
        {"air": (("time", "lat"), rng.random((20, 12)).astype("f4"), {"units": "K"})},
        coords={"time": np.arange(20), "lat": np.linspace(-55, 55, 12)},
        attrs={"title": "sample"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata on format 3
        dataset.chunk({"time": 1}).to_zarr(tmp_path / "source.zarr", mode="w")
        source = xr.open_zarr(tmp_path / "source.zarr")
    repo = new_repo(tmp_path / "repo")
    rechunk(
        source, {"time": -1, "lat": 3}, "1MB", repo.writable_session("main"), executor="threads"
    ).execute(commit="rechunk the dataset")
    target = xr.open_zarr(repo.readonly_session(branch="main").store, consolidated=False)
    xr.testing.assert_identical(target, source)
    assert target["air"].encoding["chunks"] == (20, 3)


def test_without_commit_the_changes_stay_in_the_session(
    tmp_path: Path, source: zarr.Array[Any]
) -> None:
    repo = new_repo(tmp_path / "repo")
    before = repo.lookup_branch("main")
    session = repo.writable_session("main")
    rechunk(source, (10, 37), "1MB", session.store, array_name="air").execute()
    assert session.has_uncommitted_changes
    assert repo.lookup_branch("main") == before and branch_arrays(repo) == []
    npt.assert_array_equal(zarr.open_array(session.store, path="air")[...], source[...])
    session.commit("mine")
    npt.assert_array_equal(committed(repo, "air")[...], source[...])


class Stop(Exception):
    """Raised by a progress callback to fail a run partway."""


def test_a_failed_run_changes_nothing_and_may_run_again(
    tmp_path: Path, source: zarr.Array[Any]
) -> None:
    repo = new_repo(tmp_path / "repo")
    before = repo.lookup_branch("main")
    session = repo.writable_session("main")
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        TWO_STAGES,
        session,
        temp_store=str(tmp_path / "temp.zarr"),
        executor="python",
        array_name="air",
    )
    first, last = rechunked.spec[0].stages
    middle = first.num_tasks + last.num_tasks // 2

    def fail_midway(done: int, total: int) -> None:
        if done == middle:  # half the last stage written into the run's fork
            raise Stop

    with pytest.raises(Stop):
        rechunked.execute(commit="never", progress=fail_midway)
    assert not session.has_uncommitted_changes
    assert repo.lookup_branch("main") == before and branch_arrays(repo) == []
    rechunked.execute(commit="second try")
    npt.assert_array_equal(committed(repo, "air")[...], source[...])


KILLED_RUN = """
import pathlib, sys, time
import icechunk, zarr
from rechunker_core import rechunk

repo_path, source_path, temp_path, marker = sys.argv[1:5]
repo = icechunk.Repository.open(icechunk.local_filesystem_storage(repo_path))
rechunked = rechunk(zarr.open_array(source_path, mode="r"), (1, 37), 3000,
                    repo.writable_session("main"), temp_store=temp_path,
                    executor="python", array_name="air")
first = rechunked.spec[0].stages[0].num_tasks

def stall(done, total):
    if done == first + 5:  # mid-way through the stage that writes into the repository
        pathlib.Path(marker).touch()
        time.sleep(600)

rechunked.execute(commit="killed before this", progress=stall)
"""


def test_a_killed_run_leaves_the_branch_at_its_snapshot(
    tmp_path: Path, source: zarr.Array[Any]
) -> None:
    repo = new_repo(tmp_path / "repo")
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="kept", shape=(3,), chunks=(3,), dtype="i4")[:] = 7
    before = session.commit("before the rechunk")
    marker = tmp_path / "mid-stage"
    script = [sys.executable, "-c", textwrap.dedent(KILLED_RUN)]
    paths = [tmp_path / "repo", source.store.root, tmp_path / "temp.zarr", marker]
    child = subprocess.Popen([*script, *map(str, paths)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120  # a bound on waiting, not a measurement
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), child.stderr.read() if child.poll() is not None else "stuck"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert repo.lookup_branch("main") == before
    assert branch_arrays(repo) == ["kept"]
    npt.assert_array_equal(committed(repo, "kept")[...], [7, 7, 7])


def test_a_read_only_snapshot_is_a_source_for_other_processes(
    request: pytest.FixtureRequest, tmp_path: Path, source: zarr.Array[Any]
) -> None:
    repo = new_repo(tmp_path / "repo")
    session = repo.writable_session("main")
    copy = zarr.create_array(
        session.store, name="air", shape=SHAPE, chunks=SOURCE_CHUNKS, dtype="f4"
    )
    copy[...] = source[...]
    session.commit("source")
    snapshot = zarr.open_array(repo.readonly_session(branch="main").store, path="air", mode="r")
    (mode,) = [m for m in MODES if m.name == "dask-distributed"]
    target = rechunk(
        snapshot,
        TARGET_CHUNKS,
        TWO_STAGES,
        str(tmp_path / "target.zarr"),
        temp_store=str(tmp_path / "temp.zarr"),
        executor=mode.make(request),
    ).execute()
    npt.assert_array_equal(target[...], source[...])


def test_a_session_with_changes_of_its_own(tmp_path: Path, source: zarr.Array[Any]) -> None:
    repo = new_repo(tmp_path / "repo")
    session = repo.writable_session("main")
    zarr.create_array(session.store, name="mine", shape=(3,), chunks=(3,), dtype="i4")[:] = 1
    if int(icechunk.__version__.split(".")[0]) < 2:
        # icechunk 1.x forks only sessions without uncommitted changes.
        with pytest.raises(ValueError, match=r"uncommitted changes.*icechunk>=2"):
            rechunk(source, (10, 37), "1MB", session, array_name="air")
        return
    rechunk(source, (10, 37), "1MB", session, array_name="air").execute(commit="both")
    assert branch_arrays(repo) == ["air", "mine"]
    npt.assert_array_equal(committed(repo, "air")[...], source[...])


def test_bad_input_is_refused_before_anything_is_written(
    tmp_path: Path, source: zarr.Array[Any]
) -> None:
    repo = new_repo(tmp_path / "repo")
    before = repo.lookup_branch("main")
    with pytest.raises(ValueError, match="read-only Icechunk session"):
        rechunk(source, (10, 37), "1MB", repo.readonly_session(branch="main"), array_name="a")
    with pytest.raises(ValueError, match="temp_store is an Icechunk session"):
        rechunk(source, TARGET_CHUNKS, TWO_STAGES, str(tmp_path / "t.zarr"),
                temp_store=repo.writable_session("main"))  # fmt: skip
    with pytest.raises(ValueError, match="array_name is required"):
        rechunk(source, (10, 37), "1MB", repo.writable_session("main"))
    ordinary = rechunk(source, (10, 37), "1MB", str(tmp_path / "t.zarr"))
    with pytest.raises(ValueError, match="commit='x' is for Icechunk targets"):
        ordinary.execute(commit="x")
    assert repo.lookup_branch("main") == before and branch_arrays(repo) == []
    assert not (tmp_path / "t.zarr" / "c").exists()  # metadata only: nothing ran


def test_an_array_of_the_repository_is_replaced_only_when_asked(
    tmp_path: Path, source: zarr.Array[Any]
) -> None:
    repo = new_repo(tmp_path / "repo")
    rechunk(source, (1, 37), "1MB", repo.writable_session("main"), array_name="air").execute(
        commit="first"
    )
    first = repo.lookup_branch("main")
    with pytest.raises(ValueError, match="already holds data"):
        rechunk(source, (10, 37), "1MB", repo.writable_session("main"), array_name="air")
    assert repo.lookup_branch("main") == first
    again = rechunk(source, (10, 37), "1MB", repo.writable_session("main"), array_name="air",
                    target_options={"overwrite": True})  # fmt: skip
    again.execute(commit="second")
    air = committed(repo, "air")
    assert air.chunks == (10, 37)
    npt.assert_array_equal(air[...], source[...])


def test_a_saved_plan_is_finished_only_by_the_process_that_made_it(
    tmp_path: Path, source: zarr.Array[Any]
) -> None:
    from rechunker_core.executors.parts import PartsExecutor

    repo = new_repo(tmp_path / "repo")
    before = repo.lookup_branch("main")
    plan = tmp_path / "plan.json"
    rechunked = rechunk(source, (10, 37), "1MB", repo.writable_session("main"),
                        array_name="air", executor=PartsExecutor(plan, parts=1))  # fmt: skip
    run_stages(plan, stages=1, parts=1)  # as a batch system would
    done = run_cli("finish", plan)
    assert done.returncode == 2
    assert "only the process that made the plan can merge and commit" in done.stderr
    assert repo.lookup_branch("main") == before
    rechunked.execute(commit="from the driver")  # runs the part again, then merges
    npt.assert_array_equal(committed(repo, "air")[...], source[...])
