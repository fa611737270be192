"""A task's region held as its target's write chunks, each one contiguous.

Rechunking time-major maps into pixel-major time series means transposing:
a target chunk of ``(8760, 10, 10)`` float32 gathers runs of 40 bytes from a
region laid out in C order. numpy does that at a few hundred MB/s; written
straight into the chunk each piece belongs to, as each source chunk is
decoded (while it is still in the CPU's cache), the same bytes move several
times faster, and every write chunk is then ready to encode as it is, with no
gathering left to do.

So a task's buffer is a grid of blocks, one per write chunk of the target,
each the full chunk shape (edge chunks padded, as zarr stores them)::

    region (C order)          Blocks(region, chunks=(2, 3))
    +---------------+         [block (0,0)][block (0,1)][block (0,2)]  <- each 2 x 3,
    | 4 x 9 region  |   -->   [block (1,0)][block (1,1)][block (1,2)]     contiguous
    +---------------+

A target that is not written chunk by chunk gets one block: the region itself
in C order (:func:`single`).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import product
from typing import Any

import numpy as np

from rechunker_core.geometry import Region, ceil_div

__all__ = ["Blocks", "copy_box"]

Box = tuple[slice, ...]


def _at(array: np.ndarray[Any, Any], index: Any) -> np.ndarray[Any, Any]:
    """``array[index]`` as an array, never a scalar (a 0-d view for a full index)."""
    return array[(*index, ...)]  # type: ignore[no-any-return]


def copy_box(dst: np.ndarray[Any, Any], src: np.ndarray[Any, Any]) -> None:
    """``dst[...] = src``, fast when both end in a short contiguous run.

    numpy's strided copy pays per run of its last axis; viewing each run of
    ``n`` elements as one ``n * itemsize``-byte item lets it copy whole runs.

    >>> src = np.arange(24, dtype="f4").reshape(2, 3, 4)
    >>> dst = np.zeros((2, 3, 2), "f4")
    >>> copy_box(dst, src[:, :, 1:3]); bool((dst == src[:, :, 1:3]).all())
    True
    """
    if (
        dst.ndim
        and dst.shape[-1] > 1
        and dst.strides[-1] == src.strides[-1] == dst.itemsize
        and dst.dtype == src.dtype
        and not dst.dtype.hasobject
    ):
        item = np.dtype(f"V{dst.shape[-1] * dst.itemsize}")
        dst, src = dst.view(item)[..., 0], src.view(item)[..., 0]
    np.copyto(dst, src)


class Blocks:
    """One task's region, stored block by block (see the module docstring).

    Parameters
    ----------
    region : tuple of slice
        The task's region; it starts on block boundaries. Boxes given to the
        methods are relative to its start.
    chunks : tuple of int
        The block shape: the target's write chunks.
    buffer : numpy.ndarray, optional
        At least :meth:`nbytes` bytes, C-contiguous, to lay the blocks in;
        without one (and always for object dtypes) the blocks get their own.
    dtype : numpy.dtype
    """

    def __init__(
        self,
        region: Region,
        chunks: tuple[int, ...],
        buffer: np.ndarray[Any, Any] | None,
        dtype: np.dtype[Any],
    ) -> None:
        self.chunks = chunks
        self.shape = tuple(s.stop - s.start for s in region)
        self.grid = tuple(ceil_div(n, c) for n, c in zip(self.shape, chunks, strict=True))
        layout = (*self.grid, *chunks)
        if buffer is None or dtype.hasobject:  # Python objects cannot live in a byte buffer
            self.data = np.empty(layout, dtype)
            return
        count = int(np.prod(layout, dtype=np.int64))
        flat = buffer.reshape(-1).view(np.uint8)[: count * dtype.itemsize]
        self.data = flat.view(dtype).reshape(layout)

    @staticmethod
    def nbytes(region: Region, chunks: tuple[int, ...], dtype: np.dtype[Any]) -> int:
        """Bytes the blocks of ``region`` take (edge blocks padded to full chunks).

        >>> Blocks.nbytes((slice(0, 5),), (2,), np.dtype("f8"))
        48
        """
        grid = [ceil_div(s.stop - s.start, c) for s, c in zip(region, chunks, strict=True)]
        return int(np.prod(grid, dtype=np.int64) * np.prod(chunks, dtype=np.int64)) * dtype.itemsize

    @property
    def single(self) -> bool:
        """Whether the region is one block: then :meth:`array` is the region in C order."""
        return all(g == 1 for g in self.grid)

    def array(self) -> np.ndarray[Any, Any]:
        """The region as one C-ordered array (only when :attr:`single`)."""
        assert self.single
        block = self.data.reshape(self.chunks)
        return block[tuple(slice(0, n) for n in self.shape)]

    def block(self, index: tuple[int, ...]) -> np.ndarray[Any, Any]:
        """The full, contiguous block at grid position ``index``."""
        return _at(self.data, index)

    def pieces(self) -> Iterator[tuple[tuple[int, ...], Box, bool]]:
        """``(grid index, its extent inside the block, whether it is a full block)``."""
        for index in product(*(range(g) for g in self.grid)):
            extent = tuple(
                slice(0, min(c, n - i * c))
                for i, c, n in zip(index, self.chunks, self.shape, strict=True)
            )
            yield index, extent, all(e.stop == c for e, c in zip(extent, self.chunks, strict=True))

    def fill_padding(self, value: Any) -> None:
        """Set what edge blocks hold beyond the region to ``value``: a chunk at the
        array's edge is stored full size, padded with the fill value."""
        for index, extent, full in self.pieces():
            if full:
                continue
            block = _at(self.data, index)
            for d, (e, c) in enumerate(zip(extent, self.chunks, strict=True)):
                if e.stop < c:
                    block[(slice(None),) * d + (slice(e.stop, None),)] = value

    def view(self, box: Box) -> np.ndarray[Any, Any] | None:
        """A contiguous view of ``box`` (region coordinates) if it lies in one block
        as one contiguous run, else None."""
        index, local = [], []
        for s, c in zip(box, self.chunks, strict=True):
            i = s.start // c
            if (s.stop - 1) // c != i:
                return None
            index.append(i)
            local.append(slice(s.start - i * c, s.stop - i * c))
        extents = [s.stop - s.start for s in local]
        first = next((d for d, e in enumerate(extents) if e != 1), len(extents))
        if any(extents[d] != self.chunks[d] for d in range(first + 1, len(extents))):
            return None
        return _at(_at(self.data, index), local)

    def _overlaps(self, box: Box) -> Iterator[tuple[tuple[int, ...], list[slice], list[slice]]]:
        """For each block ``box`` touches: its index, the part inside the block, and
        the same part relative to ``box``."""
        ranges = [range(s.start // c, ceil_div(s.stop, c)) for s, c in zip(box, self.chunks)]
        for index in product(*ranges):
            in_block, in_box = [], []
            for i, s, c in zip(index, box, self.chunks, strict=True):
                lo, hi = max(s.start, i * c), min(s.stop, (i + 1) * c)
                in_block.append(slice(lo - i * c, hi - i * c))
                in_box.append(slice(lo - s.start, hi - s.start))
            yield index, in_block, in_box

    def assign(self, box: Box, values: Any) -> None:
        """``region[box] = values``: an array shaped like ``box``, or a scalar."""
        scalar = np.ndim(values) == 0
        for index, in_block, in_box in self._overlaps(box):
            target = _at(_at(self.data, index), in_block)
            if scalar:
                target[...] = values
            else:
                copy_box(target, _at(values, in_box))

    def gather(self, box: Box, out: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """``out[...] = region[box]`` (the inverse of :meth:`assign`)."""
        for index, in_block, in_box in self._overlaps(box):
            copy_box(_at(out, in_box), _at(_at(self.data, index), in_block))
        return out
