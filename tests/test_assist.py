"""Helpers of idle workers take chunks of the tasks still running (``rechunker_core.assist``).

The unit tests drive an :class:`Assist` of their own with items that record
which thread handled them; the end-to-end tests slow each chunk write down so
that a lone task surely has help, and compare every target with its source.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy.testing as npt
import pytest

from rechunker_core import assist, chunkio, rechunk
from rechunker_core.assist import Assist
from tests.helpers import in_process_executor

HELPER = "rechunk-assist"
#: Long enough for a helper woken by a new task to reach its items first.
PATIENCE = 10.0


@pytest.fixture(autouse=True)
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Helpers stand in for at most as many workers as there are cores."""
    monkeypatch.setattr(assist, "cores", lambda: 2)


class Handled:
    """Items handled and the threads that handled them.

    Item ``wait_for_helper`` waits until a helper has started another item (or
    :data:`PATIENCE` passes); item ``slow`` takes 0.2 s; item ``fail`` raises.
    """

    def __init__(
        self, wait_for_helper: int | None = None, slow: int | None = None, fail: int | None = None
    ) -> None:
        self.by: dict[int, str] = {}
        self.running = 0
        self.lock = threading.Lock()
        self.helper_started = threading.Event()
        self.wait_for_helper, self.slow, self.fail = wait_for_helper, slow, fail

    @contextlib.contextmanager
    def worker(self) -> Iterator[Callable[[int], int]]:
        def handle(item: int) -> int:
            name = threading.current_thread().name
            with self.lock:
                self.running += 1
            try:
                if name == HELPER and item != self.wait_for_helper:
                    self.helper_started.set()
                if item == self.wait_for_helper:
                    self.helper_started.wait(PATIENCE)
                time.sleep(0.2 if item == self.slow else 0.001)
                if item == self.fail:
                    raise ValueError(f"item {item} failed")
                with self.lock:
                    assert item not in self.by, f"item {item} handled twice"
                    self.by[item] = name
                return item
            finally:
                with self.lock:
                    self.running -= 1

        yield handle

    def helpers(self) -> int:
        return sum(name == HELPER for name in self.by.values())


def test_a_lone_task_gets_help_and_every_item_is_handled_once() -> None:
    ours, handled = Assist(), Handled(wait_for_helper=0)
    with ours.helping(workers=2), ours.task():
        total = ours.each(range(100), handled.worker)
    assert total == sum(range(100)) and sorted(handled.by) == list(range(100))
    assert handled.helpers() > 0
    assert threading.current_thread().name in handled.by.values()


def test_helpers_stand_aside_while_every_worker_runs_a_task() -> None:
    ours = Assist()
    both_running = threading.Barrier(2)
    results: list[Handled] = []

    def task() -> None:
        handled = Handled()
        results.append(handled)
        with ours.task():
            both_running.wait(PATIENCE)
            ours.each(range(50), handled.worker)
            both_running.wait(PATIENCE)  # neither task ends before the other's items are done

    with ours.helping(workers=2):
        threads = [threading.Thread(target=task) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [sorted(h.by) for h in results] == [list(range(50))] * 2
    assert [h.helpers() for h in results] == [0, 0]


def test_a_task_starting_waits_until_the_helper_standing_in_for_its_worker_left() -> None:
    """What a helper holds (a scratch chunk, a chunk's bytes) is the idle worker's
    share of the plan's memory: a task that starts on that worker waits until the
    helper has finished its item and left (its worker block closed)."""
    ours = Assist()
    helper_in_item, task_starting = threading.Event(), threading.Event()
    log: list[str] = []

    @contextlib.contextmanager
    def worker() -> Iterator[Callable[[int], int]]:
        helper = threading.current_thread().name == HELPER

        def handle(item: int) -> int:
            if helper and not helper_in_item.is_set():
                helper_in_item.set()
                task_starting.wait(PATIENCE)
                time.sleep(0.1)  # the other task asks to start meanwhile
                log.append("helper's item done")
            elif not helper:
                time.sleep(0.002)
            return 1

        yield handle
        if helper:
            log.append("helper left")

    def other_task() -> None:
        helper_in_item.wait(PATIENCE)
        task_starting.set()
        with ours.task():
            log.append("task started")

    with ours.helping(workers=2), ours.task():
        thread = threading.Thread(target=other_task)
        thread.start()
        assert ours.each(range(300), worker) == 300
        thread.join()
    assert helper_in_item.is_set() and "task started" in log
    assert log.index("helper's item done") < log.index("helper left") < log.index("task started")


def test_one_worker_or_none_gets_no_helper() -> None:
    ours = Assist()
    for workers in (0, 1):
        handled = Handled()
        with ours.helping(workers=workers), ours.task():
            ours.each(range(30), handled.worker)
        assert sorted(handled.by) == list(range(30)) and handled.helpers() == 0
        assert not any(t.name == HELPER for t in threading.enumerate())


def test_a_failure_is_raised_once_no_helper_works_on_the_items() -> None:
    """This thread fails on item 2 while the helper is still on item 1: the
    error waits for the helper, which may be writing into the caller's memory."""
    ours, handled = Assist(), Handled(wait_for_helper=0, slow=1, fail=2)
    with ours.helping(workers=2), ours.task():
        with pytest.raises(ValueError, match="item 2 failed"):
            ours.each(range(100), handled.worker)
        assert handled.running == 0 and handled.by[1] == HELPER
        seen = dict(handled.by)
        time.sleep(0.05)
        assert handled.by == seen  # and no helper takes another item later
    assert 2 not in handled.by and len(handled.by) < 100


def test_helpers_end_with_the_run() -> None:
    ours = Assist()
    with ours.helping(workers=2):
        assert sum(t.name == HELPER for t in threading.enumerate()) == 1
        with ours.helping(workers=2):  # a second plan at once shares them
            assert sum(t.name == HELPER for t in threading.enumerate()) == 1
        assert sum(t.name == HELPER for t in threading.enumerate()) == 1
    assert not any(t.name == HELPER for t in threading.enumerate())


def test_runs_that_overlap_keep_their_helpers_until_the_last_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run that started first and ends first leaves the other its helpers."""
    monkeypatch.setattr(assist, "cores", lambda: 3)
    ours = Assist()
    first, second = ours.helping(workers=3), ours.helping(workers=2)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert sum(t.name == HELPER for t in threading.enumerate()) == 1
    handled = Handled(wait_for_helper=0)
    with ours.task():
        ours.each(range(40), handled.worker)
    assert handled.helpers() > 0
    second.__exit__(None, None, None)
    assert not any(t.name == HELPER for t in threading.enumerate())


# End to end --------------------------------------------------------------------

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (40, 36), (40, 36), (1, 36)


def slow_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Writing a chunk of the first half of the rows takes 10 ms more, so the task
    writing them runs on alone; the names of the threads that wrote each chunk."""
    names: list[str] = []
    real = chunkio._LocalChunks.write

    def write(self: Any, key: str, data: Any) -> None:
        names.append(threading.current_thread().name)
        if int(re.findall(r"\d+", key)[0]) < SHAPE[0] // 2:
            time.sleep(0.01)
        real(self, key, data)

    monkeypatch.setattr(chunkio._LocalChunks, "write", write)
    return names


@pytest.mark.parametrize(
    ("executor", "helped"),
    [
        ("threads", True),
        ("dask-threads", True),
        ("beam-multi-threading", True),
        ("prefect-threads", True),
        ("python", False),
        ("beam-in-memory", False),
    ],
)
def test_in_process_executors_help_a_lone_task(
    tmp_path: Path,
    frozen_source: Any,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    executor: str,
    helped: bool,
) -> None:
    """The plan is two tasks of 20 chunks each, one slow: once the other is done,
    its worker has nothing to do but help, where the executor runs both here."""
    source = frozen_source(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    chosen = in_process_executor(executor, request)
    rechunked = rechunk(source, TARGET_CHUNKS, "1MB", str(tmp_path / "t.zarr"), executor=chosen)
    assert [stage.num_tasks for stage in rechunked.spec[0].stages] == [2]
    names = slow_writes(monkeypatch)
    target = rechunked.execute()
    npt.assert_array_equal(target[...], source[...])
    assert len(names) == SHAPE[0]
    assert (HELPER in names) is helped
    assert not any(t.name == HELPER for t in threading.enumerate())
