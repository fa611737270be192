"""The journal: what it records, what it never claims, and what it costs.

A journal may lose records (a task is then done again) but must never
claim a task that was not recorded: not from a torn file, not from another
plan's journal, not from another run's stale writer.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from zarr.storage import MemoryStore

import rechunker_core.journal as journal_module
from rechunker_core.geometry import TaskGrid
from rechunker_core.journal import (
    JournalRef,
    TaskSet,
    discard,
    finished,
    record_all,
    recorder,
)
from rechunker_core.locations import StoreLocation
from rechunker_core.retry import RetryPolicy
from tests.faults import FaultyStore

GRID = TaskGrid((100, 40), (10, 40))  # 10 tasks


def journal_at(kind: str, tmp_path: Path) -> JournalRef:
    store = str(tmp_path / "a.zarr") if kind == "file" else MemoryStore()
    return JournalRef(StoreLocation(store, ".rechunker-journal"), run=kind)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), max_size=30))
@settings(max_examples=100, deadline=None)
def test_a_task_set_holds_exactly_the_union(pairs: list[tuple[int, int]]) -> None:
    ranges = [(start, start + length) for start, length in pairs]
    done = TaskSet.union(ranges)
    expected = {t for a, b in ranges for t in range(a, b)}
    assert {t for a, b in done.ranges for t in range(a, b)} == expected
    assert done.count == len(expected)
    missing = {t for a, b in done.missing(0, 90) for t in range(a, b)}
    assert missing == set(range(90)) - expected
    # Sorted, disjoint and not touching: the smallest description.
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(done.ranges, done.ranges[1:]))


@pytest.mark.parametrize("kind", ["file", "object"])
def test_recorded_tasks_are_found_by_any_process_and_run(tmp_path: Path, kind: str) -> None:
    ref = journal_at(kind, tmp_path)
    journal = recorder(ref, GRID)
    for task in (0, 1, 2, 5, 9):
        journal.add(task)
    journal.commit()
    later = JournalRef(ref.location, run="a later run")
    other = recorder(later, GRID)
    other.add(3)
    other.commit()
    assert finished(ref, GRID).ranges == [(0, 4), (5, 6), (9, 10)]
    # Another task grid (another plan) numbers tasks otherwise: nothing is taken from it.
    assert finished(ref, TaskGrid((100, 40), (5, 40))).ranges == []
    discard(ref)
    assert finished(ref, GRID).ranges == []


def test_a_torn_journal_file_never_claims_more(tmp_path: Path) -> None:
    ref = journal_at("file", tmp_path)
    journal = recorder(ref, GRID)
    for task in (4, 7, 8):
        journal.add(task)
    (name,) = os.listdir(tmp_path / "a.zarr" / ".rechunker-journal")
    path = tmp_path / "a.zarr" / ".rechunker-journal" / name
    whole = path.read_bytes()
    for cut in range(len(whole) + 1):
        path.write_bytes(whole[:cut])
        found = {t for a, b in finished(ref, GRID).ranges for t in range(a, b)}
        assert found <= {4, 7, 8}
        assert len(found) == max(0, (cut - 16) // 16)  # whole records only
    # Garbage in place of a record fails its check.
    path.write_bytes(whole[:16] + bytes(range(16)) + whole[32:])
    assert finished(ref, GRID).ranges == [(7, 9)]


def test_threads_recording_at_once_on_an_object_store(tmp_path: Path) -> None:
    ref = journal_at("object", tmp_path)
    flaky = FaultyStore(ref.location.store, fraction=0.1, ops=("set",), seed=5)  # type: ignore[arg-type]
    ref = JournalRef(StoreLocation(flaky, ref.location.path), "threads")
    grid = TaskGrid((4000, 1), (1, 1))

    def work(first: int) -> None:
        journal = recorder(ref, grid, RetryPolicy(10, 0.0))
        for task in range(first, 4000, 8):
            journal.add(task)
            journal.commit()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert finished(ref, grid).ranges == [(0, 4000)]
    assert flaky.failures  # some journal writes failed, and were retried
    # One process, one object, rewritten: no object per task.
    keys = {key for (op, key) in flaky.calls if op == "set"}
    assert len(keys) == 1


def test_a_large_set_rolls_over_to_new_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "ROLL_RANGES", 100)
    ref = journal_at("object", tmp_path)
    grid = TaskGrid((1000, 1), (1, 1))
    journal = recorder(ref, grid)
    for task in range(0, 1000, 2):  # every other task: 500 ranges
        journal.add(task)
        journal.commit()
    store = ref.location.store
    assert isinstance(store, MemoryStore)
    objects = [k for k in store._store_dict if k.startswith(".rechunker-journal/")]
    assert len(objects) == 5  # 101 ranges each, then the rest
    assert finished(ref, grid).count == 500


def test_recording_a_whole_stage(tmp_path: Path) -> None:
    ref = journal_at("file", tmp_path)
    record_all(ref, GRID)
    assert finished(ref, GRID).ranges == [(0, 10)]


@pytest.mark.parametrize("kind", ["file", "object"])
def test_a_follower_sees_what_other_writers_recorded_since(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "FOLLOW_SECONDS", 0.0)  # look again at every call
    monkeypatch.setattr(journal_module, "ROLL_RANGES", 1)
    ref = journal_at(kind, tmp_path)
    grid = TaskGrid((100, 1), (1, 1))
    mine, theirs = recorder(ref, grid), recorder(JournalRef(ref.location, "other run"), grid)
    assert finished(ref, grid, follow=True).ranges == []
    for task in (0, 1, 5):
        theirs.add(task)
    theirs.commit()
    assert finished(ref, grid, follow=True).ranges == [(0, 2), (5, 6)]
    for task in (2, 7, 9):  # an object journal rolls over: what it rolled past is read once
        theirs.add(task)
        theirs.commit()
    mine.add(3)
    mine.commit()
    assert finished(ref, grid, follow=True).ranges == [(0, 4), (5, 6), (7, 8), (9, 10)]
    assert finished(ref, grid, follow=True).ranges == finished(ref, grid).ranges


@pytest.mark.parametrize("kind", ["file", "object"])
def test_a_fresh_look_sees_records_made_since_a_recent_one(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "FOLLOW_SECONDS", 3600.0)
    ref = journal_at(kind, tmp_path)
    grid = TaskGrid((100, 1), (1, 1))
    theirs = recorder(JournalRef(ref.location, "other run"), grid)
    assert finished(ref, grid, follow=True).ranges == []
    theirs.add(4)
    theirs.commit()
    assert finished(ref, grid, follow=True).ranges == []  # the last look is recent enough
    assert finished(ref, grid, follow=True, fresh=True).ranges == [(4, 5)]


def test_records_of_another_job_in_the_same_place_never_count(tmp_path: Path) -> None:
    first = journal_at("file", tmp_path)
    journal = recorder(first, GRID)
    for task in range(10):
        journal.add(task)
    assert finished(first, GRID).count == finished(first, GRID, follow=True).count == 10
    # The place is replaced by a new job (overwrite): its journal, and what a
    # process remembers of the old one, are the new job's only.
    second = JournalRef(first.location, "run 2", job="another job")
    assert finished(second, GRID).count == finished(second, GRID, follow=True).count == 0
