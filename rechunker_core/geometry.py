"""Regions and chunk grids: the arithmetic every other module builds on.

A leaf module: it imports nothing from the project, so any module may import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

__all__ = ["Region", "TaskGrid", "ceil_div", "region_slices", "split_region"]

#: A box of an array: one slice per dimension, each with a start and a stop.
Region = tuple[slice, ...]


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up, in integers.

    >>> ceil_div(7, 3), ceil_div(6, 3), ceil_div(0, 3)
    (3, 2, 0)
    """
    return -(-a // b)


def split_region(region: Region, chunks: tuple[int, ...]) -> Iterator[Region]:
    """Yield the chunk-sized pieces of a chunk-aligned ``region``, in C order.

    ``region`` must start on chunk boundaries; the last piece along a
    dimension ends where the region does.

    >>> list(split_region((slice(0, 4), slice(6, 9)), (2, 3)))
    [(slice(0, 2, None), slice(6, 9, None)), (slice(2, 4, None), slice(6, 9, None))]
    """
    starts = [range(r.start, r.stop, c) for r, c in zip(region, chunks, strict=True)]
    for corner in product(*starts):
        yield tuple(
            slice(start, min(start + c, r.stop))
            for start, c, r in zip(corner, chunks, region, strict=True)
        )


def region_slices(
    index: tuple[int, ...], task_chunks: tuple[int, ...], shape: tuple[int, ...]
) -> Region:
    """Return the region of the task at grid position ``index``.

    >>> region_slices((1, 2), (4, 3), (6, 7))
    (slice(4, 6, None), slice(6, 7, None))
    """
    return tuple(
        slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, task_chunks, shape, strict=True)
    )


@dataclass(frozen=True)
class TaskGrid:
    """An array's shape cut into tasks of ``task_chunks`` (clipped at the edges).

    Tasks are numbered in C order over the grid, so two grids with the same
    shape and task chunks give each number the same region.

    >>> grid = TaskGrid((100, 40), (30, 40))
    >>> grid.counts, grid.num_tasks
    ((4, 1), 4)
    """

    shape: tuple[int, ...]
    task_chunks: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        """Tasks along each dimension."""
        return tuple(ceil_div(n, c) for n, c in zip(self.shape, self.task_chunks, strict=True))

    @property
    def num_tasks(self) -> int:
        """How many tasks the grid has."""
        return math.prod(self.counts)
