"""Planning functions compatible with ``rechunker.algorithm``.

This module re-implements the public planning API of
`rechunker <https://github.com/pangeo-data/rechunker>`_'s ``rechunker.algorithm``
module -- same names, signatures, defaults, results, errors and warnings -- so
that code written against rechunker keeps working after switching its import to
``rechunker_core.compat``.

It exists for compatibility only: ``rechunker_core.rechunk()`` does not call
these functions and uses its own planner.

The functions are pure arithmetic on chunk shapes (numpy and the standard
library only). Memory amounts (``max_mem``, ``min_mem``) are in bytes; a chunk
``c`` of an array with ``itemsize`` bytes per element occupies
``itemsize * prod(c)`` bytes.

Rechunking ``source_chunks`` to ``target_chunks`` is planned as one or more
*stages*. Each stage is a triple ``(read_chunks, intermediate_chunks,
write_chunks)``: data is read in ``read_chunks``, split into
``intermediate_chunks`` (the element-wise minimum of the two others) and
regrouped into ``write_chunks``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = [
    "MAX_STAGES",
    "ExcessiveIOWarning",
    "calculate_single_stage_io_ops",
    "calculate_stage_chunks",
    "consolidate_chunks",
    "multistage_rechunking_plan",
    "rechunking_plan",
]

_Chunks = tuple[int, ...]
_Stage = tuple[_Chunks, _Chunks, _Chunks]

#: Upper bound on the search in :func:`multistage_rechunking_plan`. As in
#: rechunker, stage counts ``1 .. MAX_STAGES - 1`` are tried, so a plan never
#: has more than ``MAX_STAGES - 1`` stages. It is looked up at call time, so
#: overriding the module attribute changes the search.
MAX_STAGES: int = 100


class ExcessiveIOWarning(Warning):
    """Emitted when adding stages to a multistage plan would cost more I/O.

    :func:`multistage_rechunking_plan` adds stages until every intermediate
    chunk holds at least ``min_mem`` bytes. If one more stage would need more
    read/write operations than the previous plan, the search stops, this
    warning is issued and the previous (cheaper) plan is returned even though
    its smallest intermediate chunks are below ``min_mem``.
    """


def _nbytes(chunks: Sequence[int], itemsize: int) -> int:
    """Return the size in bytes of one chunk of shape ``chunks``.

    Examples
    --------
    >>> _nbytes((2, 3), 8)
    48
    """
    return itemsize * math.prod(chunks)


def _ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling of ``numerator / denominator`` for positive integers.

    Examples
    --------
    >>> _ceil_div(20, 7), _ceil_div(21, 7)
    (3, 3)
    """
    return -(-numerator // denominator)


def _shared_chunks(read_chunks: Sequence[int], write_chunks: Sequence[int]) -> _Chunks:
    """Largest chunk shape that fits in both a read chunk and a write chunk.

    Taken along each axis independently, this is the element-wise minimum.
    Its memory never exceeds that of either input.

    Examples
    --------
    >>> _shared_chunks((20, 5), (4, 25))
    (4, 5)
    """
    return tuple(min(r, w) for r, w in zip(read_chunks, write_chunks))


def _pieces_along_axis(size: int, in_chunk: int, out_chunk: int) -> int:
    """Count the pieces an axis is cut into by two regular chunkings.

    Both the ``in_chunk`` grid and the ``out_chunk`` grid cut the axis
    ``[0, size)``. Each piece lies entirely inside one input chunk and one
    output chunk, so the count is the number of distinct cut positions plus
    one: ``ceil(size/in) + ceil(size/out) - ceil(size/lcm(in, out))`` (cuts
    common to both grids sit at multiples of the least common multiple and
    must not be counted twice).

    Examples
    --------
    Size 20 cut every 5 and every 7 gives
    ``[0,5) [5,7) [7,10) [10,14) [14,15) [15,20)``:

    >>> _pieces_along_axis(20, 5, 7)
    6
    >>> _pieces_along_axis(100, 1, 100)
    100
    """
    common = math.lcm(in_chunk, out_chunk)
    return _ceil_div(size, in_chunk) + _ceil_div(size, out_chunk) - _ceil_div(size, common)


def _axis_caps(
    shape: Sequence[int],
    chunks: Sequence[int],
    chunk_limits: Sequence[int | None],
) -> dict[int, int]:
    """Translate rechunker-style ``chunk_limits`` into a per-axis size cap.

    Axes whose limit is ``None`` are left out (they must not grow). ``-1``
    and limits beyond the array extent are capped at the extent. A limit
    smaller than the existing chunk is invalid.

    Examples
    --------
    >>> _axis_caps((8, 8), (1, 2), (None, -1))
    {1: 8}
    >>> _axis_caps((8, 8), (1, 2), (10, 4))
    {0: 8, 1: 4}
    """
    caps: dict[int, int] = {}
    for axis, limit in enumerate(chunk_limits):
        if limit is None:
            continue
        if limit == -1 or limit > shape[axis]:
            caps[axis] = shape[axis]
        elif limit >= chunks[axis]:
            caps[axis] = limit
        else:
            raise ValueError(f"Invalid chunk_limits {chunk_limits}.")
    return caps


def consolidate_chunks(
    shape: Sequence[int],
    chunks: Sequence[int],
    itemsize: int,
    max_mem: int,
    chunk_limits: Sequence[int | None] | None = None,
) -> _Chunks:
    """Grow a regular chunk shape as far as a memory budget allows, as rechunker does.

    Axes are visited from the last to the first. On each, the chunk is first
    tried at its cap (the axis extent, or its limit); if that leaves no spare
    room it is instead multiplied by the largest integer that keeps the chunk
    within ``max_mem``. ``chunk_limits`` caps each axis: ``None`` leaves it
    unchanged, ``-1`` is the whole extent, and larger values are clipped
    (default: every axis may grow to its extent).

    Raises ``ValueError`` if the starting chunk exceeds ``max_mem`` or a limit
    is smaller than the starting chunk on its axis, and ``AssertionError``
    (as rechunker's bare ``assert``) if ``chunk_limits`` has the wrong length.

    >>> consolidate_chunks((8, 8), (1, 2), itemsize=4, max_mem=64)
    (2, 8)
    >>> consolidate_chunks((8, 8), (1, 2), 4, 32, chunk_limits=(8, None))
    (4, 2)
    """
    if chunk_limits is None:
        chunk_limits = shape
    if len(chunk_limits) != len(shape):
        raise AssertionError(f"chunk_limits {chunk_limits} must have one entry per axis of {shape}")
    caps = _axis_caps(shape, chunks, chunk_limits)

    used = _nbytes(chunks, itemsize)
    if used > max_mem:
        raise ValueError(f"chunk_mem {used} > max_mem {max_mem}")

    grown = list(chunks)
    for axis in sorted(caps, reverse=True):
        cap = min(shape[axis], caps[axis])
        at_cap = grown.copy()
        at_cap[axis] = cap
        # rechunker keeps the cap only if it leaves *strictly* positive spare
        # memory; a chunk that would fill max_mem exactly falls through to the
        # integer-multiple rule (so shape (7,), chunk 2, budget 7 -> 6, not 7).
        if _nbytes(at_cap, itemsize) < max_mem:
            grown = at_cap
        else:
            # rechunker computes int(max_mem / used) in floating point; exact
            # integer division gives the same answer for any realistic size
            # (chunks under ~2**50 bytes) and cannot overshoot the budget.
            grown[axis] = min(chunks[axis] * (max_mem // used), cap)
        used = _nbytes(grown, itemsize)
    return tuple(grown)


def calculate_stage_chunks(
    read_chunks: tuple[int, ...],
    write_chunks: tuple[int, ...],
    stage_count: int = 1,
) -> list[tuple[int, ...]]:
    """Chunk shapes between consecutive stages of a multistage rechunking.

    Along each axis the chunk size moves from ``read_chunks`` to
    ``write_chunks`` by the same factor at every stage (geometric spacing,
    ``numpy.geomspace``), rounded down. Chunk volume therefore stays roughly
    constant from stage to stage.

    Parameters
    ----------
    read_chunks : tuple of int
        Chunks read by the first stage.
    write_chunks : tuple of int
        Chunks written by the last stage.
    stage_count : int, default 1
        Number of stages.

    Returns
    -------
    list of tuple of int
        The ``stage_count - 1`` chunk shapes that separate the stages (empty
        for a single stage).

    Notes
    -----
    Like rechunker, the rounding is a plain ``floor`` of the floating-point
    geometric sequence. When read and write chunk agree on an axis the float
    value can land just below the integer (``numpy.geomspace(8, 8, 3)[1]`` is
    ``7.999...``), so that axis shrinks by one in the intermediate stages.
    This quirk is kept so results match rechunker exactly.

    rechunker's own docstring lists ``(31623, 32)`` for the four-stage
    example below; the value it actually returns (and its tests expect) is
    ``(31622, 31)``.

    Examples
    --------
    >>> calculate_stage_chunks((100, 1), (1, 100), stage_count=2)
    [(10, 10)]
    >>> calculate_stage_chunks((1_000_000, 1), (1, 1_000_000), stage_count=4)
    [(31622, 31), (1000, 1000), (31, 31622)]
    >>> calculate_stage_chunks((100, 1), (1, 100))
    []
    """
    spaced = np.geomspace(read_chunks, write_chunks, num=stage_count + 1)
    return [tuple(math.floor(size) for size in row) for row in spaced[1:-1]]


def calculate_single_stage_io_ops(
    shape: Sequence[int], in_chunks: Sequence[int], out_chunks: Sequence[int]
) -> int:
    """Count read/write operations of one rechunking stage.

    Every intermediate piece -- a region that lies inside a single input
    chunk and a single output chunk -- is one operation. Pieces are counted
    per axis and multiplied across axes. Chunk sizes need not divide each
    other or the array extent.

    Parameters
    ----------
    shape : sequence of int
        Shape of the whole array.
    in_chunks : sequence of int
        Chunk shape the stage reads.
    out_chunks : sequence of int
        Chunk shape the stage writes.

    Returns
    -------
    int
        Number of intermediate pieces.

    Examples
    --------
    >>> calculate_single_stage_io_ops((20,), (5,), (7,))
    6
    >>> calculate_single_stage_io_ops((100, 100), (1, 100), (100, 1))
    10000
    """
    return math.prod(
        _pieces_along_axis(size, cin, cout) for size, cin, cout in zip(shape, in_chunks, out_chunks)
    )


def _validate_plan_request(
    shape: Sequence[int],
    source_chunks: Sequence[int],
    target_chunks: Sequence[int],
    itemsize: int,
    max_mem: int,
) -> None:
    """Raise ``ValueError`` for mismatched ranks or over-budget chunks."""
    ndim = len(shape)
    for name, chunks in (
        ("source_chunks", source_chunks),
        ("target_chunks", target_chunks),
    ):
        if len(chunks) != ndim:
            raise ValueError(f"{name} {chunks} must have length {ndim}")
    for label, chunks in (("Source", source_chunks), ("Target", target_chunks)):
        needed = _nbytes(chunks, itemsize)
        if needed > max_mem:
            raise ValueError(f"{label} chunk memory ({needed}) exceeds max_mem ({max_mem})")


def _outer_chunks(
    shape: Sequence[int],
    source_chunks: Sequence[int],
    target_chunks: Sequence[int],
    itemsize: int,
    max_mem: int,
    consolidate_reads: bool,
    consolidate_writes: bool,
) -> tuple[_Chunks, _Chunks]:
    """Choose the first stage's read chunks and the last stage's write chunks.

    Write chunks grow from the target chunks up to ``max_mem``. Read chunks
    then grow from the source chunks, but only along axes where the write
    chunk is larger than the source chunk, and never past the write chunk.
    """
    if consolidate_writes:
        write_chunks = consolidate_chunks(shape, target_chunks, itemsize, max_mem)
    else:
        write_chunks = tuple(target_chunks)

    if consolidate_reads:
        read_limits = [w if w > s else None for s, w in zip(source_chunks, write_chunks)]
        read_chunks = consolidate_chunks(shape, source_chunks, itemsize, max_mem, read_limits)
    else:
        read_chunks = tuple(source_chunks)
    return read_chunks, write_chunks


def _stages_of(first_read: _Chunks, last_write: _Chunks, stage_count: int) -> list[_Stage]:
    """The ``(read, intermediate, write)`` triples of a plan with ``stage_count`` stages."""
    boundaries = [first_read, *calculate_stage_chunks(first_read, last_write, stage_count)]
    boundaries.append(last_write)
    return [
        (before, _shared_chunks(before, after), after)
        for before, after in itertools.pairwise(boundaries)
    ]


def multistage_rechunking_plan(
    shape: Sequence[int],
    source_chunks: Sequence[int],
    target_chunks: Sequence[int],
    itemsize: int,
    min_mem: int,
    max_mem: int,
    consolidate_reads: bool = True,
    consolidate_writes: bool = True,
    *,
    max_stages: int | None = None,
) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Plan a rechunking as a sequence of split/regroup stages, as rechunker does.

    Tries 1, 2, 3, ... stages (geometrically spaced chunks, see
    :func:`calculate_stage_chunks`) and returns the first plan whose smallest
    intermediate chunk holds at least ``min_mem`` bytes. If one more stage
    would cost more I/O operations first, it returns the plan it has and
    warns (:class:`ExcessiveIOWarning`). ``max_stages`` defaults to this
    module's :data:`MAX_STAGES`, read at call time (callers through
    :mod:`rechunker_core.algorithm` pass that module's). The other parameters
    are those of :func:`rechunking_plan`.

    Returns a ``(read, intermediate, write)`` chunks triple per stage. Raises
    ``ValueError`` for chunks that do not fit ``shape`` or ``max_mem`` (or
    ``max_mem < min_mem``), and ``AssertionError`` if no plan has fewer than
    ``MAX_STAGES`` stages.

    >>> multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, 10, 100)
    [((100, 1), (10, 1), (10, 10)), ((10, 10), (1, 10), (1, 100))]
    """
    _validate_plan_request(shape, source_chunks, target_chunks, itemsize, max_mem)
    if max_mem < min_mem:
        raise ValueError(f"max_mem ({max_mem}) cannot be smaller than min_mem ({min_mem})")
    consolidate = (consolidate_reads, consolidate_writes)
    ends = _outer_chunks(shape, source_chunks, target_chunks, itemsize, max_mem, *consolidate)
    previous: tuple[list[_Stage], int] | None = None
    for stage_count in range(1, MAX_STAGES if max_stages is None else max_stages):
        plan = _stages_of(*ends, stage_count)
        smallest = min(_nbytes(middle, itemsize) for _, middle, _ in plan)
        if smallest >= min_mem:
            return plan
        ops = sum(calculate_single_stage_io_ops(shape, before, after) for before, _, after in plan)
        if previous is not None and ops > previous[1]:
            warnings.warn(
                "Search for multi-stage rechunking plan terminated before "
                "achieving the minimum memory requirement due to increasing IO "
                f"requirements. Smallest intermediates have size {smallest}. "
                f"Consider decreasing min_mem ({min_mem}) or increasing "
                f"max_mem ({max_mem}) to find a more efficient plan.",
                category=ExcessiveIOWarning,
                stacklevel=2,
            )
            return previous[0]
        previous = (plan, ops)
    raise AssertionError(
        "Failed to find a feasible multi-staging rechunking scheme satisfying "
        f"min_mem ({min_mem}) and max_mem ({max_mem}) constraints for shape={shape}, "
        f"source_chunks={source_chunks}, target_chunks={target_chunks}, itemsize={itemsize}"
    )


def rechunking_plan(
    shape: Sequence[int],
    source_chunks: Sequence[int],
    target_chunks: Sequence[int],
    itemsize: int,
    max_mem: int,
    consolidate_reads: bool = True,
    consolidate_writes: bool = True,
    *,
    max_stages: int | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Plan a single-stage rechunking, as rechunker does.

    Parameters
    ----------
    shape : sequence of int
        Shape of the whole array.
    source_chunks, target_chunks : sequence of int
        Regular chunk shapes of the source and of the result.
    itemsize : int
        Bytes per array element.
    max_mem : int
        Largest permitted chunk, in bytes.
    consolidate_reads, consolidate_writes : bool, default True
        Enlarge read (write) chunks beyond the source (target) chunks.

    Returns
    -------
    read_chunks, intermediate_chunks, write_chunks : tuple of int
        Each fits in ``max_mem`` bytes; ``intermediate_chunks`` is the
        element-wise minimum of the others.

    >>> rechunking_plan((8, 8), (1, 8), (8, 1), itemsize=4, max_mem=64)
    ((2, 8), (2, 2), (8, 2))
    """
    (only_stage,) = multistage_rechunking_plan(
        shape,
        source_chunks,
        target_chunks,
        itemsize=itemsize,
        min_mem=itemsize,
        max_mem=max_mem,
        consolidate_reads=consolidate_reads,
        consolidate_writes=consolidate_writes,
        max_stages=max_stages,
    )
    return only_stage
