"""Measuring one timed part: wall time, CPU seconds and peak RSS of the process tree.

The tree is this process and every descendant (dask workers and nannies, the
Prefect server). A daemon thread samples it every ``interval`` seconds with
psutil; the sampler's own CPU is counted too (it is well under 1% of a core).

The same thread reads the machine's CPU times, so a table
can tell a tree that leaves cores idle from one that shares busy cores with
the kernel's threads, other processes and the hypervisor (steal time).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zarr

from catalog import MIB

#: A process, told apart from a later one that reuses its pid.
ProcessKey = tuple[int, float]


@dataclass
class Usage:
    """What one timed part used (bytes and seconds)."""

    wall: float = math.nan
    cpu: float = math.nan
    peak_rss: int = 0
    baseline_rss: int = 0
    #: ``(time.perf_counter(), CPU seconds so far)`` at each sample of the timed part.
    timeline: list[tuple[float, float]] = field(default_factory=list)
    #: ``(time.perf_counter(), busy CPU seconds, steal seconds)`` of the whole machine
    #: at each sample, counted from the start.
    machine: list[tuple[float, float, float]] = field(default_factory=list)

    @property
    def cpu_util(self) -> float:
        """CPU seconds of the tree per wall second: 2.0 is both cores busy."""
        return self.cpu / self.wall if self.wall > 0 else math.nan

    def cpu_util_between(self, start: float, end: float) -> float:
        """The tree's CPU utilisation from ``start`` to ``end`` (``perf_counter`` times).

        See :func:`_rate_between`.

        >>> Usage(timeline=[(0.0, 0.0), (1.0, 1.0), (2.0, 3.0), (3.0, 5.0)]).cpu_util_between(
        ...     0.0, 3.0)
        1.6666666666666667
        """
        return _rate_between(self.timeline, start, end)

    def machine_between(self, start: float, end: float) -> tuple[float, float]:
        """The whole machine's busy CPUs and steal from ``start`` to ``end``.

        Busy is every CPU second not idle or waiting for I/O (this tree's,
        other processes', the kernel's threads'); steal is what the
        hypervisor ran elsewhere while this machine's CPUs wanted to run.

        >>> busy, steal = Usage(machine=[(0.0, 0.0, 0.0), (1.0, 1.9, 0.1), (2.0, 3.8, 0.2),
        ...                (3.0, 5.7, 0.3)]).machine_between(0.0, 3.0)
        >>> round(busy, 3), round(steal, 3)
        (1.9, 0.1)
        """
        busy = [(t, b) for t, b, _ in self.machine]
        steal = [(t, s) for t, _, s in self.machine]
        return _rate_between(busy, start, end), _rate_between(steal, start, end)


def _rate_between(timeline: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """The slope of a cumulative ``(time, seconds)`` timeline from ``start`` to ``end``.

    Values at each end are interpolated between the samples around it; NaN
    for a window with fewer than four samples, where the sampling step would
    dominate.

    >>> _rate_between([(0.0, 0.0), (1.0, 1.0), (2.0, 3.0), (3.0, 5.0)], 0.5, 2.5)
    nan
    >>> _rate_between([(0.0, 0.0), (1.0, 1.0), (2.0, 3.0), (3.0, 5.0), (4.0, 6.0), (5.0, 7.0)],
    ...               0.5, 4.5)
    1.5
    """
    times = [t for t, _ in timeline]
    if len(times) < 4 or end <= start or sum(start <= t <= end for t in times) < 4:
        return math.nan
    values = [v for _, v in timeline]
    return (float(np.interp(end, times, values)) - float(np.interp(start, times, values))) / (
        end - start
    )


@dataclass
class Outcome:
    """What a worker reports of one job: the check, the usage, and case-specific figures."""

    status: str = "ERROR"  # OK, FAIL (wrong target), SKIP, ERROR (raised)
    usage: Usage = field(default_factory=Usage)
    setup_s: float = math.nan
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def checked(self, source: zarr.Array[Any], target: zarr.Array[Any]) -> None:
        """Set the status from :func:`check` of ``target`` against ``source``."""
        self.status, why = check(source, target)
        if why:
            self.notes.append(why)

    def to_dict(self) -> dict[str, Any]:
        """The JSON a worker writes; sizes in MiB, NaN as None."""
        u = self.usage
        values = {
            "status": self.status,
            "wall_s": u.wall,
            "cpu_s": u.cpu,
            "cpu_util": u.cpu_util,
            "peak_rss_mib": u.peak_rss / MIB,
            "baseline_rss_mib": u.baseline_rss / MIB,
            "rss_increase_mib": (u.peak_rss - u.baseline_rss) / MIB,
            "setup_s": self.setup_s,
            "notes": self.notes,
            "extra": self.extra,
        }
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()}


class TreeMonitor:
    """Samples the RSS and CPU times of the process tree (or of the processes
    ``pids``) in a daemon thread.

    CPU is counted per process as the last seen ``user + system`` minus the
    value at the start (zero for processes started since), so workers that
    start during the timed part count in full; a process that starts and ends
    between two samples is missed.
    """

    def __init__(self, interval: float = 0.025, pids: Sequence[int] | None = None) -> None:
        self.interval = interval
        self.peak = 0
        self._me = psutil.Process()
        self._only = None if pids is None else [psutil.Process(pid) for pid in pids]
        self._start_cpu: dict[ProcessKey, float] = {}
        self._last_cpu: dict[ProcessKey, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-monitor", daemon=True)
        self.timeline: list[tuple[float, float]] = []
        self.machine: list[tuple[float, float, float]] = []
        self._machine_start = (0.0, 0.0)

    def sample(self) -> int:
        """Record the tree's CPU times and return its RSS in bytes (nothing subtracted)."""
        total = 0
        processes = self._only if self._only is not None else [self._me, *self._children()]
        for process in processes:
            with contextlib.suppress(psutil.Error), process.oneshot():
                rss = process.memory_info().rss
                times = process.cpu_times()
                self._last_cpu[(process.pid, process.create_time())] = times.user + times.system
                total += rss
        return total

    def _children(self) -> list[psutil.Process]:
        try:
            return list(self._me.children(recursive=True))
        except psutil.Error:
            return []

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def _tick(self) -> None:
        self.peak = max(self.peak, self.sample())
        now = time.perf_counter()
        self.timeline.append((now, self.cpu_seconds))
        busy, steal = (m - m0 for m, m0 in zip(machine_cpu(), self._machine_start))
        self.machine.append((now, busy, steal))

    def __enter__(self) -> TreeMonitor:
        self.peak = self.sample()
        self._start_cpu = dict(self._last_cpu)
        now = time.perf_counter()
        self.timeline = [(now, 0.0)]
        self._machine_start = machine_cpu()
        self.machine = [(now, 0.0, 0.0)]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._tick()

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the tree used between ``__enter__`` and ``__exit__``."""
        return sum(cpu - self._start_cpu.get(key, 0.0) for key, cpu in self._last_cpu.items())


def machine_cpu() -> tuple[float, float]:
    """Busy and steal CPU seconds of the whole machine since boot (psutil).

    Busy is every CPU second but idle, I/O wait and steal (guest time is
    already inside user time); steal is 0 where the system does not report it.
    """
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    steal = getattr(times, "steal", 0.0)
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - idle - steal - guest, steal


@contextlib.contextmanager
def measured(usage: Usage) -> Iterator[None]:
    """Fill ``usage`` with the wall time, CPU and RSS of the ``with`` body."""
    release_memory()
    monitor = TreeMonitor()
    usage.baseline_rss = monitor.sample()
    with monitor:
        start = time.perf_counter()
        yield
        usage.wall = time.perf_counter() - start
    usage.cpu = monitor.cpu_seconds
    usage.peak_rss = monitor.peak
    usage.timeline = monitor.timeline
    usage.machine = monitor.machine


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS before a timed part."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def warm_page_cache(path: Path) -> None:
    """Read every file under ``path`` once, so no case pays for the first disk read."""
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                while f.read(1 << 24):
                    pass


def verify_block(
    shape: tuple[int, ...], units: tuple[int, ...], itemsize: int, limit: float
) -> list[int]:
    """A block of whole ``units`` (target chunks) of at most ``limit`` bytes, if possible.

    The dimension with the most units is split first, so blocks stay compact.

    >>> verify_block((8760, 180, 360), (8760, 10, 10), 4, 1e9)
    [8760, 180, 120]
    """
    block = list(shape)
    while math.prod(block) * itemsize > limit:
        d = max(range(len(shape)), key=lambda i: block[i] / units[i])
        if block[d] <= units[d]:
            break
        pieces = math.ceil(math.prod(block) * itemsize / limit)
        block[d] = max(units[d], math.ceil(math.ceil(block[d] / pieces) / units[d]) * units[d])
    return block


def same_values(source: zarr.Array[Any], target: zarr.Array[Any], limit: float = 1e9) -> bool:
    """Whether ``target == source`` element by element (NaN equal to NaN).

    Compared in blocks of whole target chunks of at most ``limit`` bytes, so
    the check holds at most two such blocks in memory.
    """
    if target.shape != source.shape or target.dtype != source.dtype:
        return False
    shape = source.shape
    units = tuple(min(c, n) for c, n in zip(target.chunks, shape))
    block = verify_block(shape, units, source.dtype.itemsize, limit)
    equal_nan = source.dtype.kind in "fc"
    for start in product(*(range(0, n, b) for n, b in zip(shape, block))):
        region = tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))
        if not np.array_equal(source[region], target[region], equal_nan=equal_nan):
            return False
    return True


def codec_of(array: zarr.Array[Any]) -> str:
    """The zarr format and compressors of ``array``, to compare a target with its source."""
    return f"v{array.metadata.zarr_format} {list(array.compressors)!r}"


def check(source: zarr.Array[Any], target: zarr.Array[Any]) -> tuple[str, str]:
    """``("OK", "")``, or ``("FAIL", why)`` when values or codec differ from the source."""
    if codec_of(target) != codec_of(source):
        return "FAIL", f"target codec {codec_of(target)} != source {codec_of(source)}"
    if not same_values(source, target):
        return "FAIL", "target values differ from the source"
    return "OK", ""
