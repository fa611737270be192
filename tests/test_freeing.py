"""Intermediate chunks freed as soon as read: what goes, what stays, and what a task
run twice, a kept temp store and a resumed run see.

A stage after the first deletes, once a task is recorded in its journal, the
intermediate chunks that task's region holds whole (no other task reads
them). The source of every test is read-only and hashed (``frozen_source``);
every target is compared with its source element by element.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy.testing as npt
import pytest
import zarr
from zarr.storage import MemoryStore

from rechunker_core import CopySpec, chunkio, is_complete, rechunk
from rechunker_core import copy as copy_module
from rechunker_core.algorithm import plan_layout
from rechunker_core.chunkio import DELETIONS
from rechunker_core.copy import Batch, copy_region, finish, run_batch
from rechunker_core.geometry import Region
from rechunker_core.storage import ZarrRef
from tests.helpers import in_process_executor, snapshot

Source = Callable[..., Any]
Coords = tuple[int, ...]

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (60, 48), (60, 1), (1, 48)
#: Second-stage tasks hold whole intermediate chunks: (5, 48) tasks, (5, 3) chunks.
ALIGNED = 1400
#: Second-stage tasks of (2, 48) cut through every (15, 6) intermediate chunk.
STRADDLING = 1120


def test_the_two_plans_are_what_the_tests_say() -> None:
    for max_mem, held in [(ALIGNED, True), (STRADDLING, False)]:
        first, second = plan_layout(SHAPE, 4, SOURCE_CHUNKS, TARGET_CHUNKS, max_mem).stages
        aligned = all(t % c == 0 for t, c in zip(second.task_chunks, first.write_chunks))
        assert aligned is held, (max_mem, first, second)


def plan(tmp_path: Path, source: zarr.Array, max_mem: int, **options: Any) -> Any:
    return rechunk(
        source,
        TARGET_CHUNKS,
        max_mem,
        str(tmp_path / "t.zarr"),
        temp_store=str(tmp_path / "tmp.zarr"),
        **({"executor": "python"} | options),
    )


def all_chunks(ref: ZarrRef) -> list[Coords]:
    counts = [-(-n // c) for n, c in zip(ref.shape, ref.chunks, strict=True)]
    return list(itertools.product(*map(range, counts)))


def stored(ref: ZarrRef) -> set[Coords]:
    """The chunks of ``ref`` (a local array) that are files on disk."""
    root, key = ref.location.local_path, ref.open().metadata.encode_chunk_key
    assert root is not None
    return {c for c in all_chunks(ref) if (root / key(c)).is_file()}


def held_whole(region: Region, ref: ZarrRef) -> set[Coords]:
    """The chunks of ``ref`` lying wholly inside ``region``, box against box."""
    found = set()
    for coords in all_chunks(ref):
        box = [
            (i * c, min((i + 1) * c, n))
            for i, c, n in zip(coords, ref.chunks, ref.shape, strict=True)
        ]
        if all(r.start <= lo and hi <= r.stop for (lo, hi), r in zip(box, region, strict=True)):
            found.add(coords)
    return found


@pytest.mark.parametrize("max_mem", [ALIGNED, STRADDLING])
def test_each_task_frees_exactly_the_chunks_it_alone_read(
    tmp_path: Path, frozen_source: Source, max_mem: int
) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = plan(tmp_path, source, max_mem)
    first, second = rechunked.spec[0].stages
    assert second.frees_source and not first.frees_source
    run_batch(Batch(first, range(first.num_tasks)))
    intermediate = first.target
    everything = set(all_chunks(intermediate))
    assert stored(intermediate) == everything  # the sample data holds no empty chunk

    freed: set[Coords] = set()
    for task in range(second.num_tasks):
        run_batch(Batch(second, range(task, task + 1)))
        freed |= held_whole(second.task_region(task), intermediate)
        assert stored(intermediate) == everything - freed, task
    if max_mem == ALIGNED:
        assert freed == everything
    else:
        assert freed == set()  # every chunk has two readers: the last step deletes them

    target = rechunked.execute()  # the journals say every task is done: only the last step
    npt.assert_array_equal(target[...], source[...])
    assert is_complete(tmp_path / "t.zarr") and not (tmp_path / "tmp.zarr").exists()


def test_a_task_run_twice_keeps_what_the_first_run_wrote(
    tmp_path: Path, frozen_source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine may run a task again while its first run frees the chunks it read
    (a worker thought dead, a retried bundle): the second run finds some of them
    absent, sees the task recorded, and writes nothing."""
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = plan(tmp_path, source, ALIGNED)
    first, second = rechunked.spec[0].stages
    run_batch(Batch(first, range(first.num_tasks)))
    task = 1
    region = second.task_region(task)
    held = sorted(held_whole(region, first.target))
    columns = region[1]
    half = (region[0], slice(columns.start, (columns.start + columns.stop) // 2))
    # The first run is caught halfway through freeing: half its chunks are gone
    # (and every run here frees only that half).
    freeing = ZarrRef.free
    monkeypatch.setattr(ZarrRef, "free", lambda ref, _: freeing(ref, half))
    run_batch(Batch(second, range(task, task + 1)))
    left = stored(first.target) & set(held)
    assert 0 < len(left) < len(held)

    run_batch(Batch(second, range(task, task + 1)))  # again, as an engine without recheck would
    target = second.target.open()
    npt.assert_array_equal(target[region], source[region])

    # Without the look at the journal, the second run would have written the fill value
    # where the first had freed the chunks it read.
    copy_region(second, region)
    assert (target[region] == source[region]).any()
    assert (target[region] != source[region]).any()


def test_chunks_absent_for_being_empty_are_read_as_the_fill_value(
    tmp_path: Path, make_array: Any
) -> None:
    """A stage that frees its source also meets chunks never written (all fill value):
    its journal does not record the task, so the task writes them as read."""
    made = make_array(str(tmp_path / "s.zarr"), SHAPE, SOURCE_CHUNKS, dtype="i4")
    made[:, : SHAPE[1] // 2] = 0
    source = zarr.open_array(str(tmp_path / "s.zarr"), mode="r")
    rechunked = plan(tmp_path, source, ALIGNED)
    first = rechunked.spec[0].stages[0]
    run_batch(Batch(first, range(first.num_tasks)))
    assert 0 < len(stored(first.target)) < len(all_chunks(first.target))
    npt.assert_array_equal(rechunked.execute()[...], source[...])


def test_a_task_whose_source_region_stores_nothing_deletes_nothing(
    tmp_path: Path, make_array: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse array's tasks over never-written regions free nothing: deleting
    their hundreds of absent chunks one by one made a metadata-only ERA5-sized
    rechunk 10 times slower (benchmarks/scale.py)."""
    made = make_array(str(tmp_path / "s.zarr"), SHAPE, SOURCE_CHUNKS, dtype="i4")
    made[: SHAPE[0] // 2] = 0  # the fill value: the intermediate's first rows stay unwritten
    source = zarr.open_array(str(tmp_path / "s.zarr"), mode="r")
    rechunked = plan(tmp_path, source, ALIGNED)
    first, second = rechunked.spec[0].stages
    run_batch(Batch(first, range(first.num_tasks)))
    written = stored(first.target)
    freed: list[Region] = []
    freeing = ZarrRef.free
    monkeypatch.setattr(
        ZarrRef, "free", lambda ref, region: freed.append(region) or freeing(ref, region)
    )
    for task in range(second.num_tasks):
        region = second.task_region(task)
        run_batch(Batch(second, range(task, task + 1)))
        assert (region in freed) == bool(held_whole(region, first.target) & written), task
    assert 0 < len(freed) < second.num_tasks
    assert stored(first.target) == set()
    npt.assert_array_equal(rechunked.execute()[...], source[...])


def test_keep_temp_keeps_every_intermediate_chunk(tmp_path: Path, frozen_source: Source) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = plan(tmp_path, source, ALIGNED, keep_temp=True)
    stages = rechunked.spec[0].stages
    assert not any(stage.frees_source for stage in stages)
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
    intermediate = stages[0].target
    assert stored(intermediate) == set(all_chunks(intermediate))
    npt.assert_array_equal(intermediate.open()[...], source[...])


def test_memory_intermediates_are_left_to_the_last_step(frozen_source: Source) -> None:
    """Freeing is for local directories: elsewhere each deletion is a request, and the
    last step deletes the whole intermediate at once."""
    source = frozen_source(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    temp = MemoryStore()
    rechunked = rechunk(
        source, TARGET_CHUNKS, ALIGNED, MemoryStore(), temp_store=temp, executor="python"
    )
    first, second = rechunked.spec[0].stages
    run_batch(Batch(first, range(first.num_tasks)))
    before = snapshot(temp)
    run_batch(Batch(second, range(second.num_tasks)))
    assert second.frees_source and snapshot(temp) == before
    npt.assert_array_equal(rechunked.execute()[...], source[...])
    assert snapshot(temp) == {}


def test_a_spec_that_frees_its_source_must_keep_a_journal(
    tmp_path: Path, frozen_source: Source
) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    second = plan(tmp_path, source, ALIGNED).spec[0].stages[1]
    assert CopySpec.from_dict(second.to_dict()) == second
    with pytest.raises(ValueError, match="frees_source needs a zarr source and a journal"):
        CopySpec(second.source, second.target, second.task_chunks, None, frees_source=True)


@pytest.mark.parametrize("spelling", ["relative", "trailing-slash", "symlinked-parent"])
def test_freeing_deletes_only_the_runs_chunks_however_the_temp_is_spelled(
    tmp_path: Path, frozen_source: Source, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    """The temp store holds the user's own files beside the run's intermediate; the
    stages free their chunks and the last step deletes the rest, and the user's
    files, the source and the target are what they should be."""
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "notes.txt").write_text("mine")
    (tmp_path / "scratch" / "0").write_text("also mine")  # named like a chunk
    (tmp_path / "link").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path)
    temp = {
        "relative": "scratch",
        "trailing-slash": f"{tmp_path}/scratch/",
        "symlinked-parent": str(tmp_path / "link" / "scratch"),
    }[spelling]
    rechunked = rechunk(
        source, TARGET_CHUNKS, ALIGNED, "t.zarr", temp_store=temp, executor="python"
    )
    spec = rechunked.spec[0]
    assert spec.stages[1].frees_source
    assert spec.stages[1].source.location in spec.cleanup  # only what the run deletes anyway
    npt.assert_array_equal(rechunked.execute()[...], source[...])
    assert sorted(os.listdir(tmp_path / "scratch")) == ["0", "notes.txt"]
    assert (tmp_path / "scratch" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "scratch" / "0").read_text() == "also mine"


# Deletions on a thread of their own ---------------------------------------------


def deleting_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that delete chunk files from now on (the real deletion runs)."""
    names: list[str] = []
    real = chunkio._LocalChunks._delete

    def spy(self: Any, key: str) -> None:
        names.append(threading.current_thread().name)
        real(self, key)

    monkeypatch.setattr(chunkio._LocalChunks, "_delete", spy)
    return names


def test_deferred_frees_are_gone_at_each_flush_and_when_the_block_ends(
    tmp_path: Path, frozen_source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = plan(tmp_path, source, ALIGNED)
    first, second = rechunked.spec[0].stages
    run_batch(Batch(first, range(first.num_tasks)))
    intermediate = first.target
    everything = set(all_chunks(intermediate))
    names = deleting_threads(monkeypatch)
    freed: set[Coords] = set()
    with DELETIONS.deferred():
        for task in range(second.num_tasks - 1):
            run_batch(Batch(second, range(task, task + 1)))
            freed |= held_whole(second.task_region(task), intermediate)
            DELETIONS.flush()
            assert stored(intermediate) == everything - freed, task
        run_batch(Batch(second, range(second.num_tasks - 1, second.num_tasks)))
    assert stored(intermediate) == set()  # the block waited for the last task's deletions
    assert names and set(names) == {"rechunk-delete"}
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])


@pytest.mark.parametrize(
    "executor",
    ["threads", "dask-threads", "beam-in-memory", "beam-multi-threading", "prefect-threads"],
)
def test_in_process_executors_free_on_the_deleting_thread(
    tmp_path: Path,
    frozen_source: Source,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    executor: str,
) -> None:
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    chosen = in_process_executor(executor, request)
    names = deleting_threads(monkeypatch)
    rechunked = plan(tmp_path, source, ALIGNED, executor=chosen)
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
    assert names and set(names) == {"rechunk-delete"}
    assert not (tmp_path / "tmp.zarr").exists() and is_complete(tmp_path / "t.zarr")
    assert DELETIONS.pending is None  # the thread stopped with the run


def test_beam_worker_processes_free_where_they_run(
    tmp_path: Path, frozen_source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``multi_processing`` the workers free the chunks themselves, at once:
    this process queues nothing, and everything is gone when the run returns."""
    pytest.importorskip("apache_beam")
    from rechunker_core.executors.beam import BeamExecutor

    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    options = {"direct_running_mode": "multi_processing", "direct_num_workers": 2}
    names = deleting_threads(monkeypatch)
    deferred: list[bool] = []
    real_deferred = DELETIONS.deferred

    def spy() -> Any:
        deferred.append(True)
        return real_deferred()

    monkeypatch.setattr(DELETIONS, "deferred", spy)
    rechunked = plan(tmp_path, source, ALIGNED, executor=BeamExecutor(options=options))
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
    assert names == [] and deferred == []
    assert not (tmp_path / "tmp.zarr").exists() and is_complete(tmp_path / "t.zarr")


def aside_files(folder: Path) -> list[Path]:
    """The chunk files set aside in ``folder`` and not yet unlinked."""
    return [p for p in folder.rglob(".*.freed") if p.is_file()]


def test_outside_a_run_freed_chunks_go_at_once_and_are_unlinked_on_a_thread(
    tmp_path: Path, frozen_source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process of another engine frees chunks outside any run of its own:
    each is renamed aside at once, so it is gone when the batch returns, and
    unlinked on the process's unlinking thread, not the task's."""
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = plan(tmp_path, source, ALIGNED)
    first, second = rechunked.spec[0].stages
    run_batch(Batch(first, range(first.num_tasks)))
    intermediate = first.target
    folder = intermediate.location.local_path
    assert folder is not None
    everything = set(all_chunks(intermediate))
    unlinked: list[tuple[str, str]] = []
    real_unlink = os.unlink

    def spy(path: Any, *args: Any, **kwargs: Any) -> None:
        unlinked.append((os.fspath(path), threading.current_thread().name))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", spy)
    freed = held_whole(second.task_region(0), intermediate)
    run_batch(Batch(second, range(1)))
    assert freed and stored(intermediate) == everything - freed
    DELETIONS.unlinked()
    assert aside_files(folder) == []
    gone = [(path, name) for path, name in unlinked if path.endswith(".freed")]
    assert len(gone) == len(freed) and {name for _, name in gone} == {"rechunk-unlink"}
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
    assert is_complete(tmp_path / "t.zarr") and not (tmp_path / "tmp.zarr").exists()


def test_chunks_set_aside_by_a_process_that_died_go_with_the_intermediate(
    tmp_path: Path, frozen_source: Source
) -> None:
    """A worker killed between renaming a freed chunk aside and unlinking it leaves
    the file in the intermediate: the resumed run's last step deletes it."""
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = plan(tmp_path, source, ALIGNED)
    first, second = rechunked.spec[0].stages
    run_batch(Batch(first, range(first.num_tasks)))
    run_batch(Batch(second, range(2)))
    folder = first.target.location.local_path
    assert folder is not None
    chunk = next(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    left = chunk.with_name(f".{chunk.name}.0123456789ab.freed")
    left.write_bytes(b"set aside, never unlinked")
    target = plan(tmp_path, source, ALIGNED, resume=True).execute()
    npt.assert_array_equal(target[...], source[...])
    assert is_complete(tmp_path / "t.zarr") and not (tmp_path / "tmp.zarr").exists()


def test_a_process_that_exits_unlinks_what_it_set_aside_first(tmp_path: Path) -> None:
    """A part of an array job exits right after its last task: the chunks it freed
    must not keep their disk space until the last step."""
    folder = tmp_path / "tmp.zarr" / "c"
    folder.mkdir(parents=True)
    keys = [f"c/{i}" for i in range(3000)]
    for key in keys:
        (tmp_path / "tmp.zarr" / key).write_bytes(b"x" * 4096)
    script = (
        "import sys; from pathlib import Path\n"
        "from rechunker_core.chunkio import _LocalChunks\n"
        "root = Path(sys.argv[1])\n"
        "_LocalChunks(root, None).delete_many(f'c/{i}' for i in range(3000))\n"
        "assert all(p.name.startswith('.') for p in (root / 'c').iterdir())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "tmp.zarr")], check=True)
    assert list(folder.iterdir()) == []


def unlink_all(paths: list[str], started: threading.Event) -> None:
    started.set()
    for path in reversed(paths):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def test_deleting_an_intermediate_tolerates_files_vanishing_meanwhile(tmp_path: Path) -> None:
    """The last step deletes an intermediate whole while worker processes may still
    unlink chunks they set aside in it: a file gone under the deletion is no error."""
    from rechunker_core.locations import resolve_location

    for attempt in range(20):
        folder = tmp_path / f"tmp{attempt}.zarr"
        files = []
        for i in range(40):
            (folder / "c" / str(i)).mkdir(parents=True)
            for j in range(40):
                path = folder / "c" / str(i) / f".{j}.0123456789ab.freed"
                path.write_bytes(b"x")
                files.append(str(path))
        started = threading.Event()
        unlinker = threading.Thread(target=unlink_all, args=(files, started))
        unlinker.start()
        started.wait(10)
        resolve_location(str(folder)).delete()
        unlinker.join()
        assert not folder.exists()


def test_a_deferred_deletion_that_fails_is_raised_by_the_next_flush() -> None:
    def fails() -> None:
        raise OSError(5, "the disk went away")

    done: list[int] = []
    with pytest.raises(OSError, match="the disk went away"), DELETIONS.deferred():
        assert DELETIONS.queued(fails)
        assert DELETIONS.queued(lambda: done.append(1))
        with pytest.raises(OSError, match="the disk went away"):
            DELETIONS.flush()
        assert done == [1]  # a failure does not stop the deletions after it
        assert DELETIONS.queued(fails)
    DELETIONS.flush()  # raised once, by the block's end: nothing left over
    with DELETIONS.deferred():
        pass  # a later run does not inherit an error


def test_a_run_that_raises_keeps_its_own_error_and_forgets_the_deletions() -> None:
    def fails() -> None:
        raise OSError(5, "the disk went away")

    with pytest.raises(KeyError, match="the run's own"), DELETIONS.deferred():
        assert DELETIONS.queued(fails)
        raise KeyError("the run's own")
    with DELETIONS.deferred():
        pass


def test_outside_a_run_nothing_is_queued() -> None:
    done: list[int] = []
    assert not DELETIONS.queued(lambda: done.append(1))
    assert done == [] and DELETIONS.pending is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_frees_with_threads_of_its_own(tmp_path: Path) -> None:
    """A child forked during a run has none of the parent's threads: it must not
    queue for the deleting thread, and sets chunks aside for an unlinking thread
    it starts itself."""
    (tmp_path / "chunk").write_bytes(b"x")
    DELETIONS.unlink_soon([str(tmp_path / "absent")])  # the parent's unlinking thread runs
    with DELETIONS.deferred(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
        if pid == 0:  # the child: exits without returning to pytest
            signal.alarm(20)  # killed, not hung, if it waits for a thread it lacks
            chunkio._LocalChunks(tmp_path, None).delete_many(["chunk"])
            DELETIONS.unlinked()
            os._exit(0 if not any(tmp_path.iterdir()) and DELETIONS.pending is None else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_last_step_waits_for_the_deletions_queued_before_it() -> None:
    """``finish`` deletes the intermediates; a queued free must not race it."""
    started, done = threading.Event(), []

    def slow() -> None:
        started.set()
        time.sleep(0.2)
        done.append(1)

    with DELETIONS.deferred():
        assert DELETIONS.queued(slow)
        assert started.wait(10)
        finish(())
        assert done == [1]


def test_a_deletion_that_exits_does_not_stop_the_deleting_thread() -> None:
    """Whatever a deletion raises, the thread goes on: a flush must never wait forever."""
    done: list[int] = []

    def exits() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit), DELETIONS.deferred():
        assert DELETIONS.queued(exits)
        assert DELETIONS.queued(lambda: done.append(1))
        DELETIONS.flush()
    assert done == [1]


def test_a_batch_keeps_freed_memory_for_reuse_wherever_it_runs(
    tmp_path: Path, frozen_source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process of dask or Beam runs batches outside any run of its own: each
    batch keeps freed heap memory for reuse while it copies, and gives it back after."""
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    rechunked = plan(tmp_path, source, ALIGNED)
    seen: list[int] = []
    real = copy_module.copy_region

    def spy(*args: Any) -> Any:
        seen.append(chunkio.FREED_MEMORY._runs)
        return real(*args)

    monkeypatch.setattr(copy_module, "copy_region", spy)
    assert chunkio.FREED_MEMORY._runs == 0
    for stage in rechunked.spec[0].stages:
        run_batch(Batch(stage, range(stage.num_tasks)))
    assert seen and all(runs == 1 for runs in seen)
    assert chunkio.FREED_MEMORY._runs == 0  # given back when the batch ended
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
