"""Planning math: how many stages, which intermediate chunks, which task regions.

Pure functions over shapes and chunk sizes: no I/O, no zarr, no dask. The
planner that :func:`rechunker_core.rechunk` uses is :func:`plan_layout`;
``docs/algorithm.md`` explains it with pictures. The functions rechunker users
call (``rechunking_plan``, ``multistage_rechunking_plan``, ...) live in
:mod:`rechunker_core.compat` and are re-exported here unchanged, except that
the two planners read this module's :data:`MAX_STAGES`, so code that patches
``rechunker_core.algorithm.MAX_STAGES`` (as rechunker's users do) is obeyed.

Vocabulary, per stage (one copy from array A to array B):

- ``read_chunks``: the decode unit of A. Reading any part of one costs the whole.
- ``write_chunks``: the write unit of B (its shards when B is sharded). Tasks
  always write whole write chunks, so no two tasks touch one stored object.
- ``task_chunks``: the region one task copies, a multiple of ``write_chunks``
  (clipped at the array's edge).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise, product
from typing import Any

import rechunker_core.compat as compat
from rechunker_core.compat import (
    ExcessiveIOWarning,
    calculate_single_stage_io_ops,
    calculate_stage_chunks,
    consolidate_chunks,
)
from rechunker_core.geometry import ceil_div

__all__ = [
    "MAX_STAGES",
    "CostModel",
    "ExcessiveIOWarning",
    "Layout",
    "MemoryModel",
    "StageLayout",
    "calculate_single_stage_io_ops",
    "calculate_stage_chunks",
    "consolidate_chunks",
    "dim_overlap",
    "floor_sum",
    "multistage_rechunking_plan",
    "plan_layout",
    "rechunking_plan",
    "task_peak",
]

Shape = tuple[int, ...]
_Models = tuple["MemoryModel", "MemoryModel"]

#: rechunker's multi-stage planner tries ``1 .. MAX_STAGES - 1`` stages. Read
#: when the planners below are called, so patching it here takes effect.
MAX_STAGES: int = compat.MAX_STAGES

_Plan = tuple[Shape, Shape, Shape]


def multistage_rechunking_plan(*args: Any, **kwargs: Any) -> list[_Plan]:
    """rechunker's multi-stage planner, within this module's :data:`MAX_STAGES`
    (read at each call: rechunker's users patch it).

    Takes the parameters of :func:`rechunker_core.compat.multistage_rechunking_plan`.

    >>> multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, 10, 100)
    [((100, 1), (10, 1), (10, 10)), ((10, 10), (1, 10), (1, 100))]
    """
    return compat.multistage_rechunking_plan(*args, max_stages=MAX_STAGES, **kwargs)


def rechunking_plan(*args: Any, **kwargs: Any) -> _Plan:
    """rechunker's single-stage planner, within this module's :data:`MAX_STAGES`
    (read at each call: rechunker's users patch it).

    Takes the parameters of :func:`rechunker_core.compat.rechunking_plan`.

    >>> rechunking_plan((8, 8), (1, 8), (8, 1), itemsize=4, max_mem=64)
    ((2, 8), (2, 2), (8, 2))
    """
    return compat.rechunking_plan(*args, max_stages=MAX_STAGES, **kwargs)


#: Most stages :func:`plan_layout` considers. Each stage reads and writes the
#: whole array once, so a plan past three stages is almost never cheaper.
MAX_LAYOUT_STAGES = 4

# A two-stage search tries every combination of per-dimension intermediate
# sizes up to this many; past it, it keeps the geometric chain only.
_MAX_COMBINATIONS = 1024

# Chains fully planned per stage count, after a quick score ranks them all.
_CHAINS_PLANNED = 6


# --------------------------------------------------------------------------
# One dimension at a time
# --------------------------------------------------------------------------


def floor_sum(n: int, m: int, a: int, b: int) -> int:
    """Return ``sum(floor((a * i + b) / m) for i in range(n))`` in O(log) steps.

    Requires ``n >= 0``, ``m >= 1`` and ``a, b >= 0``. This lets the planner
    count chunk overlaps along a dimension without visiting every task.

    >>> floor_sum(4, 3, 2, 1)  # 1//3 + 3//3 + 5//3 + 7//3
    4
    """
    total = 0
    while n > 0:
        if a >= m:
            total += (a // m) * n * (n - 1) // 2
            a %= m
        if b >= m:
            total += (b // m) * n
            b %= m
        # Every term is now floor((a*i + b) / m) with a, b < m: swap roles of
        # the axes (count lattice points under the line the other way round).
        last = a * n + b
        if last < m:
            break
        n, b = divmod(last, m)
        m, a = a, m
    return total


@dataclass(frozen=True)
class DimOverlap:
    """How tasks of one region size overlap read chunks along one dimension.

    Attributes
    ----------
    chunks_touched : int
        Sum over tasks of the read chunks each task touches.
    elements_touched : int
        Sum over tasks of the elements those chunks hold (what gets decoded).
    max_chunks : int
        An upper bound on the read chunks a single task touches.
    """

    chunks_touched: int
    elements_touched: int
    max_chunks: int


def dim_overlap(size: int, region: int, chunk: int) -> DimOverlap:
    """Count read-chunk overlaps of tasks ``[k*region, (k+1)*region)`` along a dimension.

    Parameters
    ----------
    size : int
        Length of the dimension.
    region : int
        Task extent along it (the last task is clipped at ``size``).
    chunk : int
        Read chunk extent along it.

    Examples
    --------
    Ten elements, tasks of 4, chunks of 3::

        elements  0 1 2 | 3 4 5 | 6 7 8 | 9
        tasks     [0  1  2  3] [4  5  6  7] [8  9]
        task 0 touches chunks 0,1; task 1 chunks 1,2; task 2 chunks 2,3

    >>> dim_overlap(10, 4, 3)
    DimOverlap(chunks_touched=6, elements_touched=16, max_chunks=2)

    Aligned regions touch each chunk exactly once:

    >>> dim_overlap(12, 6, 3)
    DimOverlap(chunks_touched=4, elements_touched=12, max_chunks=2)
    """
    if size == 0:
        return DimOverlap(0, 0, 0)
    region = min(region, size)
    n_tasks = -(-size // region)
    n_chunks = -(-size // chunk)
    # Full tasks k < n_tasks - 1 cover [k r, k r + r): chunks floor(kr/p) ..
    # floor((kr + r - 1)/p). The last task ends at size - 1.
    full = n_tasks - 1
    last_first = ((n_tasks - 1) * region) // chunk
    touched = (
        floor_sum(full, chunk, region, region - 1)
        - floor_sum(full, chunk, region, 0)
        + full
        + (n_chunks - 1 - last_first + 1)
    )
    # Every touched chunk holds `chunk` elements except the final, partial one,
    # which tasks starting at or after floor(L p / r) touch.
    last_chunk = n_chunks - 1
    short = chunk - (size - last_chunk * chunk)
    tasks_on_last = n_tasks - (last_chunk * chunk) // region
    elements = touched * chunk - short * tasks_on_last
    g = math.gcd(region, chunk)
    most = min(n_chunks, (chunk - g + region - 1) // chunk + 1)
    return DimOverlap(touched, elements, most)


# --------------------------------------------------------------------------
# Cost and memory models
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryModel:
    """What reading or writing one array costs a task in memory, beyond its region.

    A task holds its region once, laid out as the target's write chunks (edge
    chunks padded to full size), reads into it and writes from it. While it
    reads, up to ``concurrency`` read chunks are in flight, each as its
    encoded bytes plus a decoded scratch chunk (``chunk_copies``); while it
    writes, up to ``concurrency`` write chunks are in flight, each as its
    encoded bytes and the copy sent to the store. ``region_copies`` counts
    whole extra copies of the region a reader makes.

    Attributes
    ----------
    concurrency : int
        Chunks in flight within one read or write: 1 on local disks (chunks
        go one by one), :data:`rechunker_core.chunkio.CONCURRENCY` on other
        stores, ``zarr.config["async.concurrency"]`` on zarr's own path.
    chunk_copies : int
        Buffers per in-flight chunk.
    region_copies : int
        Extra copies of the region the reader makes (zarr's own path returns
        a new array: 1; dask concatenates the blocks it computes: 2).
    kept_chunks : int
        Chunks a read keeps after it ends: :mod:`rechunker_core.chunkio`
        returns its decoded scratch chunk to the process's pool for the next
        task, so it is still held while the task writes (1; 0 elsewhere).
    small_window : tuple of int
        ``(most chunks, bytes)``: chunks so small that more than
        ``concurrency`` of them fit in ``bytes`` go up to ``most`` at once
        (:meth:`window`). ``(0, 0)``: never more than ``concurrency``.
    """

    concurrency: int = 1
    chunk_copies: int = 2
    region_copies: int = 0
    small_window: tuple[int, int] = (0, 0)
    kept_chunks: int = 1

    def window(self, chunk_bytes: int) -> int:
        """Chunks of ``chunk_bytes`` in flight at once.

        >>> MemoryModel(16, small_window=(64, 2**24)).window(96_000), MemoryModel(16).window(1)
        (64, 16)
        """
        most, budget = self.small_window
        return max(self.concurrency, min(most, budget // max(chunk_bytes, 1)))

    def in_flight(self, chunks: int, chunk_bytes: int) -> int:
        """Bytes of ``chunks`` chunks of ``chunk_bytes`` being read or written at once."""
        return self.chunk_copies * min(self.window(chunk_bytes), chunks) * chunk_bytes


#: What a task holds beyond its array data, at most (an eighth of its region
#: for small tasks): the codecs' working memory (c-blosc's blocks, a zstd
#: context: about 1 MiB per call, outside numpy's buffers) and the slack of the
#: heap its buffers come from: 2.7-6.5 MB per worker on threads at max_mem=64MB
#: (benchmarks/memory_model.py, docs/algorithm.md).
TASK_ALLOWANCE = 8 * 2**20


def task_peak(
    reader: MemoryModel,
    writer: MemoryModel,
    region_bytes: int,
    reading: tuple[int, int],
    writing: tuple[int, int],
) -> int:
    """The peak bytes of array data one task holds.

    ``reading`` and ``writing`` are ``(chunks one task touches, bytes per
    chunk)`` of the array read and the array written.

    While the task writes, it still holds what its read kept
    (``reader.kept_chunks`` read chunks). One percent is added for what the
    task's bookkeeping and a compressor's worst case (its output may be a
    little larger than its input) take, and :data:`TASK_ALLOWANCE` (an eighth
    of the region for small tasks) for what it holds outside numpy's
    buffers; the measured peaks in tests/test_memory.py and
    benchmarks/memory_model.py stay within the total.

    >>> local = MemoryModel()
    >>> task_peak(local, local, 1000, (10, 100), (4, 250))
    1741
    """
    held = region_bytes * (1 + reader.region_copies)
    kept = reader.kept_chunks * reading[1]
    moving = max(reader.in_flight(*reading), kept + writer.in_flight(*writing))
    return math.ceil(1.01 * (held + moving)) + min(TASK_ALLOWANCE, region_bytes // 8)


@dataclass(frozen=True)
class CostModel:
    """Estimated seconds a plan takes: the planner minimises this.

    ``work = op_seconds * ops + byte_seconds * bytes + task_seconds * tasks``
    per stage, where ``ops`` counts chunk reads plus chunk writes and
    ``bytes`` counts bytes decoded plus bytes encoded. A stage takes as long
    as its busiest worker: its tasks run in rounds of ``parallelism``, so it
    takes ``ceil(tasks / parallelism)`` times the work of its largest task,
    but never more than ``work / parallelism`` plus ``1 - 1 / parallelism``
    of that task's work (the smaller edge tasks fill the last rounds) and
    never less than ``work / parallelism``. Twelve tasks of 32 chunks (the
    last of 13) on two workers take six rounds of 32; twelve of 31 take six
    of 31. The defaults were measured on this project's machines (see
    ``docs/algorithm.md``).

    Attributes
    ----------
    op_seconds : float
        Fixed cost of reading or writing one chunk (request, codec call).
    byte_seconds : float
        Cost of decoding or encoding one byte.
    task_seconds : float
        Fixed cost of one task (scheduling, opening arrays).
    parallelism : int
        Tasks that run at once; a stage with fewer tasks leaves workers idle.
    """

    op_seconds: float = 2e-4
    byte_seconds: float = 1.0e-9
    task_seconds: float = 1e-3
    parallelism: int = field(default_factory=lambda: os.cpu_count() or 1)

    def stage_seconds(self, stage: StageLayout) -> float:
        """Return the estimated wall time of one stage.

        >>> cost = CostModel(op_seconds=0, byte_seconds=1e-9, task_seconds=0, parallelism=2)
        >>> def stage(task):
        ...     return evaluate_stage((8760,), 1, (24,), (task,), (task,), MemoryModel())
        >>> [round(cost.stage_seconds(stage(t)) * 1e9) for t in (768, 744, 8760)]
        [9216, 8928, 17520]
        """
        work = (
            self.op_seconds * (stage.read_ops + stage.write_ops)
            + self.byte_seconds * (stage.bytes_read + stage.bytes_written)
            + self.task_seconds * stage.num_tasks
        )
        if stage.num_tasks == 0:
            return 0.0
        workers = max(1, self.parallelism)
        rounds = ceil_div(stage.num_tasks, workers)
        largest = work * stage.largest_task_share
        # Rounds of the largest task, unless the smaller edge tasks fill the
        # last rounds: no worker finishes more than one task after the rest.
        ends = min(rounds * largest, work / workers + largest * (1 - 1 / workers))
        return max(work / workers, ends)


# --------------------------------------------------------------------------
# Stages and plans
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class StageLayout:
    """One copy stage: its chunk grids, task regions and what it costs.

    Attributes
    ----------
    read_chunks, write_chunks, task_chunks : tuple of int
        See the module docstring.
    num_tasks : int
        Tasks in the stage.
    read_ops, write_ops : int
        Chunks decoded and chunks encoded, over all tasks.
    bytes_read, bytes_written : int
        Bytes decoded and encoded, over all tasks.
    peak_task_memory : int
        Most bytes of array data one task holds (see :class:`MemoryModel`).
    largest_task_share : float
        The share of the array the largest task copies (1 / ``num_tasks``
        when every task is alike; more when edge tasks are smaller).
    """

    read_chunks: Shape
    write_chunks: Shape
    task_chunks: Shape
    num_tasks: int
    read_ops: int
    write_ops: int
    bytes_read: int
    bytes_written: int
    peak_task_memory: int
    largest_task_share: float = 1.0

    @property
    def read_amplification(self) -> float:
        """Bytes decoded per byte written: 1.0 when reads align with tasks."""
        return self.bytes_read / self.bytes_written if self.bytes_written else 1.0


@dataclass(frozen=True)
class Layout:
    """A chain of stages from the source chunks to the target chunks.

    Attributes
    ----------
    shape : tuple of int
    itemsize : int
    stages : tuple of StageLayout
        ``stages[i]`` reads array ``i`` and writes array ``i + 1``; arrays
        ``1 .. n-1`` are intermediates.
    seconds : float
        The cost model's estimate.
    """

    shape: Shape
    itemsize: int
    stages: tuple[StageLayout, ...]
    seconds: float

    @property
    def intermediate_chunks(self) -> tuple[Shape, ...]:
        """Chunks of each intermediate array, in stage order."""
        return tuple(stage.write_chunks for stage in self.stages[:-1])

    @property
    def peak_task_memory(self) -> int:
        """Most bytes of array data any task of the plan holds."""
        return max((s.peak_task_memory for s in self.stages), default=0)

    def summary(self) -> str:
        """Return a table of the stages, one line each."""
        # No seconds: the cost model ranks plans, its seconds are not a forecast.
        lines = [
            f"{len(self.stages)} stage(s), peak task memory {format_bytes(self.peak_task_memory)}"
        ]
        for i, s in enumerate(self.stages):
            lines.append(
                f"  stage {i}: {s.read_chunks} -> {s.write_chunks}, "
                f"{s.num_tasks} tasks of {s.task_chunks}, "
                f"read {format_bytes(s.bytes_read)} (x{s.read_amplification:.2f}), "
                f"write {format_bytes(s.bytes_written)}, "
                f"peak {format_bytes(s.peak_task_memory)}"
            )
        return "\n".join(lines)


def format_bytes(n: float) -> str:
    """Format a byte count with a binary-free decimal unit, as users read sizes.

    >>> format_bytes(256_000_000)
    '256.0 MB'
    >>> format_bytes(999)
    '999 B'
    """
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _clip(chunks: Sequence[int], shape: Shape) -> Shape:
    return tuple(max(1, min(c, n)) for c, n in zip(chunks, shape, strict=True))


def evaluate_stage(
    shape: Shape,
    itemsize: int,
    read_chunks: Shape,
    write_chunks: Shape,
    task_chunks: Shape,
    memory: MemoryModel,
    write_memory: MemoryModel | None = None,
) -> StageLayout:
    """Count the work and peak memory of one stage with the given task regions.

    ``task_chunks`` must be a multiple of ``write_chunks`` in every dimension
    where it is smaller than the shape. ``memory`` models reading,
    ``write_memory`` (default: the same) writing. Costs O(dims * log(shape)).

    >>> s = evaluate_stage((100,), 4, (10,), (25,), (50,), MemoryModel(concurrency=2))
    >>> s.num_tasks, s.read_ops, s.bytes_read, s.peak_task_memory
    (2, 10, 400, 672)
    """
    read_chunks = _clip(read_chunks, shape)
    write_chunks = _clip(write_chunks, shape)
    task_chunks = _clip(task_chunks, shape)
    overlaps = [dim_overlap(n, r, p) for n, r, p in zip(shape, task_chunks, read_chunks)]
    num_tasks = math.prod(ceil_div(n, r) for n, r in zip(shape, task_chunks))
    write_ops = math.prod(ceil_div(n, q) for n, q in zip(shape, write_chunks))
    blocks = [ceil_div(r, q) for r, q in zip(task_chunks, write_chunks)]
    peak = task_peak(
        memory,
        write_memory or memory,
        math.prod(b * q for b, q in zip(blocks, write_chunks)) * itemsize,
        (math.prod(o.max_chunks for o in overlaps), math.prod(read_chunks) * itemsize),
        (math.prod(blocks), math.prod(write_chunks) * itemsize),
    )
    return StageLayout(
        read_chunks=read_chunks,
        write_chunks=write_chunks,
        task_chunks=task_chunks,
        num_tasks=num_tasks,
        read_ops=math.prod(o.chunks_touched for o in overlaps),
        write_ops=write_ops,
        bytes_read=math.prod(o.elements_touched for o in overlaps) * itemsize,
        bytes_written=math.prod(shape) * itemsize,
        peak_task_memory=peak,
        largest_task_share=math.prod(r / n for r, n in zip(task_chunks, shape)),
    )


def _region_steps(size: int, read: int, write: int) -> list[int]:
    """Task extents worth trying along one dimension, smallest first.

    Multiples of the write chunk: doublings of it, and doublings of the
    smallest extent aligned with the read chunks too, up to the whole
    dimension, each cut down to the smallest multiple that makes as many
    tasks (:func:`_even_split`: 80 of 100 makes two tasks, as 50 does).

    >>> _region_steps(100, 24, 10)
    [10, 20, 40, 50, 100]
    >>> _region_steps(8760, 24, 8760)
    [8760]
    """
    aligned = math.lcm(read, write)
    steps = {size}
    for start in (write, aligned):
        extent = start
        while extent < size:
            # Cut in whole aligned extents once past one, so no read chunk is split.
            steps.add(_even_split(size, aligned if extent >= aligned else write, extent))
            extent *= 2
    return sorted(steps)


def _even_split(size: int, unit: int, extent: int) -> int:
    """The smallest multiple of ``unit`` that cuts ``size`` into as many parts as ``extent``.

    Parts of nearly equal size keep the workers evenly loaded to a stage's
    end (see :meth:`CostModel.stage_seconds`): 8760 steps in parts of 768 make
    11 parts and one of 312; parts of 744 make 11 and one of 576.

    >>> _even_split(8760, 24, 768), _even_split(100, 10, 40)
    (744, 40)
    """
    parts = ceil_div(size, extent)
    return unit * ceil_div(ceil_div(size, unit), parts)


def plan_stage(
    shape: Shape,
    itemsize: int,
    read_chunks: Shape,
    write_chunks: Shape,
    max_mem: int,
    memory: MemoryModel,
    cost: CostModel,
    write_memory: MemoryModel | None = None,
) -> StageLayout | None:
    """Choose task regions for one stage: the cheapest that fit ``max_mem``.

    Starts from one write chunk per task and grows the region one dimension at
    a time, taking whichever step lowers the estimated time most, until no step
    fits in memory or helps. Two walks are made: one steps each dimension to
    its next extent; the other may also jump to the next extent aligned with
    the read chunks, past extents that split read chunks and cost more than
    either end. The cheaper end wins. Returns None when even one write chunk
    per task does not fit.

    >>> one_core = CostModel(parallelism=1)
    >>> s = plan_stage((100, 100), 4, (10, 100), (100, 10), 200_000, MemoryModel(), one_core)
    >>> s.task_chunks, s.read_amplification
    ((100, 100), 1.0)

    Too little memory for even one write chunk and a source chunk in flight:

    >>> plan_stage((100, 100), 4, (10, 100), (100, 10), 10_000, MemoryModel(), one_core) is None
    True
    """
    read_chunks = _clip(read_chunks, shape)
    write_chunks = _clip(write_chunks, shape)
    models = (memory, write_memory or memory)

    def evaluate(region: Shape) -> StageLayout | None:
        stage = evaluate_stage(shape, itemsize, read_chunks, write_chunks, region, *models)
        return stage if stage.peak_task_memory <= max_mem else None

    start = evaluate(write_chunks)
    if start is None:
        return None
    steps = [_region_steps(n, p, q) for n, p, q in zip(shape, read_chunks, write_chunks)]
    aligned = [
        [i for i, e in enumerate(dim) if e % math.lcm(p, q) == 0 or e == n]
        for dim, n, p, q in zip(steps, shape, read_chunks, write_chunks)
    ]
    no_jumps: list[list[int]] = [[] for _ in shape]
    walks = [_walk(start, steps, jumps, evaluate, cost) for jumps in (no_jumps, aligned)]
    return min(walks, key=cost.stage_seconds)


def _walk(
    start: StageLayout,
    steps: list[list[int]],
    jumps: list[list[int]],
    evaluate: Callable[[Shape], StageLayout | None],
    cost: CostModel,
) -> StageLayout:
    """Grow ``start``'s task region while a step lowers the estimated time.

    Each dimension ``d`` may go to its next extent in ``steps[d]`` or to the
    next of the step indices ``jumps[d]``; the move that lowers the time most
    is taken.
    """
    position = [0] * len(steps)
    best, best_seconds = start, cost.stage_seconds(start)
    while True:
        choice = None
        for d, dim in enumerate(steps):
            jump = next((i for i in jumps[d] if i > position[d] + 1), None)
            for i in (position[d] + 1, jump):
                if i is None or i >= len(dim):
                    continue
                region = list(best.task_chunks)
                region[d] = dim[i]
                candidate = evaluate(tuple(region))
                if candidate is None:
                    continue
                seconds = cost.stage_seconds(candidate)
                if seconds < best_seconds * (1 - 1e-6) and (choice is None or seconds < choice[0]):
                    choice = (seconds, d, i, candidate)
        if choice is None:
            return best
        best_seconds, d, position[d], best = choice


# --------------------------------------------------------------------------
# Intermediate chunk chains
# --------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
    """Return the divisors of ``n`` in increasing order.

    >>> _divisors(36)
    [1, 2, 3, 4, 6, 9, 12, 18, 36]
    """
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _between(a: int, b: int, size: int) -> list[int]:
    """Intermediate extents along a dimension going from ``a`` to ``b``.

    Every returned extent lines up with both ends, so neither stage next to the
    intermediate decodes a chunk more than once: it is a multiple of the
    smaller end and divides the larger, or a region spanning both already
    covers the whole dimension (the larger end is the whole dimension); those
    go by doublings of the smaller end, each cut down to the smallest multiple
    that makes as many chunks (:func:`_even_split`). Extents that share no
    factor (7 -> 5) have no such extent but the ends themselves.

    >>> _between(24, 8760, 8760)
    [24, 48, 96, 120, 192, 384, 744, 1464, 1752, 2928, 4392, 8760]
    >>> _between(180, 10, 180)
    [10, 20, 30, 40, 60, 90, 180]
    >>> _between(7, 5, 100)
    [5, 7]
    """
    lo, hi = min(a, b), max(a, b)
    if hi % lo:
        extra = [g for g in (math.gcd(a, b),) if g * 4 >= lo]
        return sorted({a, b, *extra})
    extents = {lo * d for d in _divisors(hi // lo)}
    if hi >= size:
        extent = 2 * lo
        while extent < size:
            extents.add(_even_split(size, lo, extent))
            extent *= 2
    return sorted(extents)


def _geometric_chain(a: int, b: int, size: int, stages: int, switch: int) -> list[int]:
    """Extents for arrays 0..stages along one dimension, from ``a`` to ``b``.

    Nested extents step through divisors, each close to the geometric
    interpolation and each dividing (or divided by) the next, so every stage
    lines up. Extents that do not nest jump from ``a`` to ``b`` at stage
    ``switch``.

    >>> _geometric_chain(24, 8760, 8760, 2, 1)
    [24, 120, 8760]
    >>> _geometric_chain(7, 5, 100, 3, 2)
    [7, 7, 5, 5]
    """
    if a == b:
        return [a] * (stages + 1)
    lo, hi = min(a, b), max(a, b)
    if hi % lo:
        return [a] * switch + [b] * (stages + 1 - switch)
    ratio = hi // lo
    chain = [1]
    for i in range(1, stages):
        target = ratio ** (i / stages)
        options = [d for d in _divisors(ratio) if d % chain[-1] == 0]
        chain.append(min(options, key=lambda d: abs(math.log(d / target))))
    chain.append(ratio)
    extents = [lo * d for d in chain]
    return extents if a < b else extents[::-1]


def _spread(options: list[int], most: int) -> list[int]:
    """Keep at most ``most`` of the sorted ``options``, spread evenly, ends kept.

    >>> _spread([1, 2, 3, 4, 6, 9, 12, 18, 36], 4)
    [1, 4, 9, 36]
    """
    if len(options) <= most:
        return options
    picks = {round(i * (len(options) - 1) / (most - 1)) for i in range(most)}
    return [options[i] for i in sorted(picks)]


def _chains(shape: Shape, source: Shape, target: Shape, stages: int) -> Iterator[list[Shape]]:
    """Candidate chunk chains (one shape per array) for a plan of ``stages``."""
    if stages == 1:
        yield [source, target]
        return
    if stages == 2:
        options = [_between(a, b, n) for a, b, n in zip(source, target, shape)]
        per_dim = max(2, int(_MAX_COMBINATIONS ** (1 / max(1, len(shape)))))
        options = [_spread(o, per_dim) for o in options]
        for middle in product(*options):
            yield [source, tuple(middle), target]
    for switch in range(1, stages + 1):
        per_dim_chain = [
            _geometric_chain(a, b, n, stages, switch) for a, b, n in zip(source, target, shape)
        ]
        yield [tuple(dim[i] for dim in per_dim_chain) for i in range(stages + 1)]


@dataclass(frozen=True)
class _Problem:
    """What every candidate chain of one planning call shares."""

    shape: Shape
    itemsize: int
    max_mem: int
    source_memory: MemoryModel
    memory: MemoryModel
    target_memory: MemoryModel
    cost: CostModel

    def stages(self, chain: list[Shape]) -> Iterator[tuple[Shape, Shape, _Models]]:
        """Each stage of ``chain`` as (read chunks, write chunks, (reader, writer) models)."""
        last = len(chain) - 2
        for i, (read, write) in enumerate(pairwise(chain)):
            reader = self.source_memory if i == 0 else self.memory
            yield read, write, (reader, self.target_memory if i == last else self.memory)

    def evaluate(self, read: Shape, write: Shape, task: Shape, models: _Models) -> StageLayout:
        """One stage of this problem with the given task regions."""
        return evaluate_stage(self.shape, self.itemsize, read, write, task, *models)


def _quick_score(problem: _Problem, chain: list[Shape]) -> tuple[float | None, int]:
    """Rank a chain cheaply: each stage at its smallest read-aligned region if
    that fits, else at one write chunk. Also return the least max_mem it needs."""
    seconds = 0.0
    needed = 0
    for read, write, model in problem.stages(chain):
        smallest = problem.evaluate(read, write, write, model)
        needed = max(needed, smallest.peak_task_memory)
        shape = problem.shape
        aligned = tuple(math.lcm(p, q) for p, q in zip(_clip(read, shape), _clip(write, shape)))
        stage = problem.evaluate(read, write, aligned, model)
        fits = stage.peak_task_memory <= problem.max_mem
        seconds += problem.cost.stage_seconds(stage if fits else smallest)
    return (seconds if needed <= problem.max_mem else None), needed


def _plan_chain(problem: _Problem, chain: list[Shape]) -> Layout:
    """Plan every stage of a chain that :func:`_quick_score` found feasible."""
    stages = []
    for read, write, model in problem.stages(chain):
        reader, writer = model
        stage = plan_stage(
            problem.shape,
            problem.itemsize,
            read,
            write,
            problem.max_mem,
            reader,
            problem.cost,
            writer,
        )
        assert stage is not None  # _quick_score checked the smallest region fits
        stages.append(stage)
    seconds = sum(problem.cost.stage_seconds(s) for s in stages)
    return Layout(problem.shape, problem.itemsize, tuple(stages), seconds)


def _empty_layout(shape: Shape, itemsize: int, source: Shape, target: Shape) -> Layout:
    """The layout of an array with no elements: one stage of no tasks."""
    stage = StageLayout(source, target, target, 0, 0, 0, 0, 0, 0)
    return Layout(shape, itemsize, (stage,), 0.0)


def _best_of(problem: _Problem, source: Shape, target: Shape, max_stages: int) -> Layout:
    """Score every chain of 1 to ``max_stages`` stages; fully plan the best few.

    Raises
    ------
    ValueError
        If none fits ``max_mem``, naming the smallest ``max_mem`` that would.
    """
    best: Layout | None = None
    smallest_needed: int | None = None
    for stages in range(1, max(1, max_stages) + 1):
        scored = []
        for chain in _chains(problem.shape, source, target, stages):
            if stages > 1 and len(set(chain)) < len(chain):
                continue  # an intermediate equal to a neighbour is a wasted stage
            score, needed = _quick_score(problem, chain)
            if smallest_needed is None or needed < smallest_needed:
                smallest_needed = needed
            if score is not None:
                scored.append((score, chain))
        scored.sort(key=lambda item: item[0])
        for _, chain in scored[:_CHAINS_PLANNED]:
            layout = _plan_chain(problem, chain)
            if best is None or layout.seconds < best.seconds:
                best = layout
    if best is None:
        max_mem = problem.max_mem
        raise ValueError(
            f"max_mem={max_mem} bytes ({format_bytes(max_mem)}) is too small to rechunk "
            f"shape {problem.shape} from chunks {source} to {target}: the smallest layout "
            f"needs max_mem >= {smallest_needed} bytes ({format_bytes(smallest_needed or 0)})"
        )
    return best


def plan_layout(
    shape: Sequence[int],
    itemsize: int,
    source_chunks: Sequence[int],
    target_chunks: Sequence[int],
    max_mem: int,
    *,
    max_stages: int = MAX_LAYOUT_STAGES,
    source_memory: MemoryModel | None = None,
    memory: MemoryModel | None = None,
    target_memory: MemoryModel | None = None,
    cost: CostModel | None = None,
) -> Layout:
    """Lay out a rechunk: the cheapest chain of stages whose every task fits ``max_mem``.

    Parameters
    ----------
    shape : sequence of int
    itemsize : int
        Bytes per element.
    source_chunks : sequence of int
        The source's decode unit (inner chunks when it is sharded).
    target_chunks : sequence of int
        The target's write unit (shards when it is sharded).
    max_mem : int
        Most bytes of array data one task may hold.
    max_stages : int
        Most stages to consider; 1 forbids intermediate arrays.
    source_memory, memory, target_memory : MemoryModel, optional
        Memory models for reading the source, for reading and writing
        intermediates, and for writing the target (default: ``memory``).
    cost : CostModel, optional
        The cost model to minimise.

    Raises ``ValueError`` if no layout fits ``max_mem``, naming the smallest that would.

    A map per time step to a time series per pixel goes through one
    intermediate whose chunks line up with both ends:

    >>> layout = plan_layout((8760, 180, 360), 4, (24, 180, 360), (8760, 10, 10), 256_000_000)
    >>> len(layout.stages), [s.read_amplification for s in layout.stages]
    (2, [1.0, 1.0])
    """
    shape = tuple(int(n) for n in shape)
    source, target = _clip(source_chunks, shape), _clip(target_chunks, shape)
    if any(n == 0 for n in shape):
        return _empty_layout(shape, itemsize, source, target)
    memory = memory or MemoryModel()
    models = (source_memory or memory, memory, target_memory or memory)
    problem = _Problem(shape, itemsize, max_mem, *models, cost or CostModel())
    return _plan_once(problem, source, target, max_stages)


@lru_cache(maxsize=256)
def _plan_once(problem: _Problem, source: Shape, target: Shape, max_stages: int) -> Layout:
    """:func:`_best_of`, once per problem: a group of many arrays alike is planned once."""
    return _best_of(problem, source, target, max_stages)
