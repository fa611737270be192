"""Progress shown while a plan runs: one bar per stage, and the choice of showing one.

:class:`StageBars` is what :meth:`rechunker_core.Rechunked.execute` and the
command line show: one tqdm bar per stage (round) with its tasks, the bytes
it wrote, MB/s and the time left. tqdm's ``auto`` mode draws text bars in a
terminal and widgets in a notebook. The counting itself is
:class:`rechunker_core.copy.Tracker`'s, the same for every executor.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rechunker_core.algorithm import format_bytes
from rechunker_core.copy import Progress, ProgressListener, RoundTotals

__all__ = ["StageBars", "choose_progress", "interactive"]

_BAR_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tasks{postfix} [{elapsed}<{remaining}]"
)


class StageBars:
    """One progress bar per stage: tasks, bytes written, MB/s and time left.

    Parameters
    ----------
    file : text stream, optional
        Where text bars go; by default standard error. In a notebook tqdm
        draws widgets instead.
    """

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file
        self._bars: list[Any] = []
        self._totals: list[RoundTotals] = []
        self._bytes: list[int] = []
        self._started: list[float] = []

    def start(self, rounds: Sequence[RoundTotals]) -> None:
        """Draw a bar for each round, at zero."""
        # Imported here: tqdm.auto looks for IPython, which is slow to import.
        from tqdm.auto import tqdm

        self._totals = list(rounds)
        self._bytes = [0] * len(rounds)
        self._started = [time.perf_counter()] * len(rounds)
        # A terminal of unknown size (0 x 0) would get empty bars, or none at all.
        size = shutil.get_terminal_size((100, 24))
        self._bars = [
            tqdm(
                total=r.tasks,
                desc=f"stage {r.number}",
                unit="task",
                position=i,
                leave=True,
                file=self.file,
                bar_format=_BAR_FORMAT,
                postfix=self._postfix(i),
                ncols=size.columns,
                nrows=max(size.lines, len(rounds) + 1),
            )
            for i, r in enumerate(rounds)
        ]

    def _postfix(self, i: int) -> str:
        seconds = time.perf_counter() - self._started[i]
        rate = self._bytes[i] / seconds if seconds > 0 else 0.0
        total = format_bytes(self._totals[i].nbytes)
        return f"{format_bytes(self._bytes[i])}/{total}, {format_bytes(rate)}/s"

    def advance(self, round_number: int, tasks: int, nbytes: int) -> None:
        """Move the round's bar on; when a round completes, the next one's clock starts."""
        bar = self._bars[round_number]
        self._bytes[round_number] += nbytes
        bar.set_postfix_str(self._postfix(round_number), refresh=False)
        bar.update(tasks)
        following = round_number + 1
        if bar.n >= bar.total and following < len(self._bars) and not self._bars[following].n:
            # Every bar was drawn when the run began: time a stage from its start.
            self._started[following] = time.perf_counter()
            self._bars[following].reset(total=self._totals[following].tasks)

    def close(self) -> None:
        """Leave the bars as they are on screen."""
        for bar in self._bars:
            bar.close()


def interactive(stream: TextIO | None = None) -> bool:
    """Whether someone watches: ``stream`` (standard error) is a terminal, or in a notebook."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or unusual stream: nobody watches it
        pass
    shell = sys.modules.get("IPython")
    get_ipython: Callable[[], Any] | None = getattr(shell, "get_ipython", None)
    kernel = get_ipython() if get_ipython is not None else None
    return kernel is not None and hasattr(kernel, "kernel")


def choose_progress(progress: Any) -> Progress | ProgressListener | None:
    """What ``execute(progress=...)`` means.

    ``None``: bars when someone watches (:func:`interactive`), else nothing;
    ``True``: bars; ``False``: nothing; a callable: called with
    ``(tasks_done, tasks_total)``; a :class:`~rechunker_core.copy.ProgressListener`:
    told of every round.

    >>> choose_progress(False) is None, type(choose_progress(True)).__name__
    (True, 'StageBars')
    >>> choose_progress("yes")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: progress='yes' is not accepted: give None (a bar when attached to a terminal ...
    """
    if progress is None:
        return StageBars() if interactive() else None
    if progress is True:
        return StageBars()
    if progress is False:
        return None
    if isinstance(progress, ProgressListener) or callable(progress):
        listener: Progress | ProgressListener = progress
        return listener
    raise TypeError(
        f"progress={progress!r} is not accepted: give None (a bar when attached to a "
        "terminal or notebook), True, False, or a callable receiving (tasks_done, tasks_total)"
    )
