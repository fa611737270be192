"""Rounds, batches and parts: every task exactly once, whatever the grouping."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rechunker_core.copy import (
    MIN_BATCHES_PER_ROUND,
    Feed,
    Round,
    RoundTotals,
    Tracker,
    feed_path,
)


def stage(name: int, tasks: int, side: int = 10) -> Any:
    return SimpleNamespace(
        name=name,
        num_tasks=tasks,
        task_chunks=(side, side),
        source=SimpleNamespace(dtype=np.dtype("f8")),
        journal=None,  # keeps no journal: nothing is done yet
    )


def a_round(total: int) -> Round:
    sizes = [total // 3, 0, total - total // 3]
    return Round(0, tuple(stage(i, n) for i, n in enumerate(sizes)))


def every_task(round_: Round) -> list[tuple[int, int]]:
    return [(s.name, task) for s in round_.stages for task in range(s.num_tasks)]


@pytest.mark.parametrize(("total", "parts"), [(0, 3), (1, 4), (7, 3), (10, 10), (97, 8)])
def test_parts_cover_each_task_once(total: int, parts: int) -> None:
    round_ = a_round(total)
    seen = [
        (batch.stage.name, task)
        for part in range(parts)
        for batch in round_.part(part, parts)
        for task in batch.tasks
    ]
    assert seen == every_task(round_)  # in order, so each exactly once
    counts = [sum(b.num_tasks for b in round_.part(p, parts)) for p in range(parts)]
    assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("total", [1, 7, 500, 501, 10**5 + 3])
@pytest.mark.parametrize(("size", "most"), [(None, None), (1, None), (64, None), (None, 500)])
def test_batches_cover_every_task_once(total: int, size: int | None, most: int | None) -> None:
    round_ = a_round(total)
    batches = list(round_.batches(size, most))
    seen = [(batch.stage.name, task) for batch in batches for task in batch.tasks]
    assert seen == every_task(round_)
    per_stage = [sum(b.stage is s for b in batches) for s in round_.stages]
    if most is not None:
        assert max(per_stage) <= most
    if size is not None:
        assert all(b.num_tasks <= size for b in batches)
    if size is None and most is None:
        # Tiny tasks are batched, but never into fewer batches than the workers need.
        assert len(batches) >= min(total, MIN_BATCHES_PER_ROUND) - 2


def test_tracker_reports_every_task() -> None:
    heard: list[tuple[int, int]] = []
    totals = [RoundTotals(0, 5, 50)]
    tracker = Tracker.of_rounds(totals, lambda done, total: heard.append((done, total)))
    for tasks in (2, 0, 3):
        tracker.finished(tasks, 0)
    assert heard == [(2, 5), (2, 5), (5, 5)]
    assert tracker.bytes_done == 50


class Listener:
    """A ProgressListener that keeps what it hears."""

    def __init__(self) -> None:
        self.rounds: list[RoundTotals] = []
        self.events: list[tuple[int, int, int]] = []
        self.closed = False

    def start(self, rounds: Sequence[RoundTotals]) -> None:
        self.rounds = list(rounds)

    def advance(self, round_number: int, tasks: int, nbytes: int) -> None:
        self.events.append((round_number, tasks, nbytes))

    def close(self) -> None:
        self.closed = True


def test_tracker_bytes_add_up_per_round() -> None:
    listener = Listener()
    tracker = Tracker.of_rounds([RoundTotals(0, 3, 100), RoundTotals(1, 7, 10)], listener)
    tracker.close()
    assert listener.closed and listener.rounds[1].tasks == 7
    for round_number, tasks in [(0, 1), (1, 3), (0, 1), (1, 4), (0, 1)]:
        tracker.finished(tasks, round_number)
    per_round = [sum(b for r, _, b in listener.events if r == k) for k in (0, 1)]
    assert per_round == [100, 10]  # exact once each round is complete
    assert tracker.done == tracker.total == 10


def test_reports_reach_a_listening_tracker_from_other_processes() -> None:
    """Same process: straight to the tracker; another process: through the feed file."""
    heard: list[tuple[int, int]] = []
    tracker = Tracker.of_rounds(
        [RoundTotals(0, 4, 4), RoundTotals(1, 6, 6)], lambda d, t: heard.append((d, t))
    )
    feed = Feed()
    assert feed.token is not None
    feed.report(0, 1)  # nobody listens yet: dropped
    assert not feed_path(feed.token).exists()
    with feed.listening(tracker):
        feed.report(0, 4)
        assert tracker.done == 4
        code = (
            "from rechunker_core.copy import Feed\n"
            f"feed = Feed({feed.token!r})\nfeed.report(1, 2)\nfeed.report(1, 4)\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert heard == [(4, 10), (6, 10), (10, 10)]
    assert not feed_path(feed.token).exists()
