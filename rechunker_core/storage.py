"""Opening arrays: array references and a per-process LRU of open arrays.

A :class:`ZarrRef` names a zarr array at a
:class:`~rechunker_core.locations.StoreLocation` together with the geometry
the planner needs. It is a small frozen value that pickles, so specs travel to
other processes; arrays are opened on first use in each process and kept in a
bounded LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr

from rechunker_core.blocks import Blocks
from rechunker_core.chunkio import ChunkIO, all_fill, chunk_io
from rechunker_core.geometry import Region, split_region
from rechunker_core.locations import StoreLocation, location_from_dict, location_to_dict

__all__ = ["ZarrRef", "clear_cache", "open_array", "remove"]

#: Arrays each process keeps open at most (reading ``zarr.json`` again is cheap,
#: but not free on object stores).
CACHE_SIZE = 64


@dataclass(frozen=True)
class ZarrRef:
    """A zarr array: where it is, and the geometry the planner needs.

    Attributes
    ----------
    location : StoreLocation
    shape : tuple of int
    dtype : numpy.dtype
    chunks : tuple of int
        The write unit: shards when the array is sharded, else chunks.
    read_chunks : tuple of int
        The decode unit: the (inner) chunks.
    """

    location: StoreLocation
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[int, ...]
    read_chunks: tuple[int, ...]

    @classmethod
    def from_array(cls, array: zarr.Array[Any], location: StoreLocation) -> ZarrRef:
        """Describe an open array found at ``location``."""
        return cls(
            location=location,
            shape=tuple(array.shape),
            dtype=np.dtype(array.dtype),
            chunks=tuple(array.shards or array.chunks),
            read_chunks=tuple(array.chunks),
        )

    def open(self, mode: Literal["r", "r+"] = "r") -> zarr.Array[Any]:
        """Open the array (once per process and mode; see :func:`open_array`)."""
        return self._opened(mode).array

    def block_chunks(self, region: Region) -> tuple[int, ...]:
        """The blocks a task writing ``region`` should hold its data in: this array's
        chunks when they are written one by one here, else the region itself."""
        if self._opened("r+").io is not None:
            return self.chunks
        return tuple(s.stop - s.start for s in region)

    def copies_nothing(self, region: Region, target: ZarrRef) -> bool:
        """Whether copying ``region`` to ``target`` would write nothing: this array
        stores no chunk there (it reads as its fill value), and ``target`` leaves
        out chunks of that value. A metadata-only or sparse source then costs a
        task one look at its chunk keys."""
        source, written = self._opened("r").io, target._opened("r+").io
        if source is None or written is None or source.fill_value is None:
            return False
        return written.omits(source.fill_value) and not source.any_stored(region)

    def read_into(self, region: Region, blocks: Blocks) -> None:
        """Fill ``blocks`` with the values in ``region``."""
        opened = self._opened("r")
        if opened.io is not None:
            opened.io.read_into(region, blocks)
        else:
            blocks.assign(_whole(region), np.asarray(opened.array[region]))

    def read(self, region: Region) -> np.ndarray[Any, Any]:
        """Read ``region`` into a new numpy array."""
        blocks = Blocks(region, tuple(s.stop - s.start for s in region), None, self.dtype)
        self.read_into(region, blocks)
        return blocks.array()

    def write(self, region: Region, data: Blocks | np.ndarray[Any, Any]) -> None:
        """Write ``data`` (blocks, or an array shaped like ``region``) to ``region``,
        which must cover whole write chunks.

        Chunks holding only the fill value are skipped unless the array
        writes empty chunks, as zarr would: the arrays are new, so a skipped
        chunk reads as the fill value.
        """
        opened = self._opened("r+")
        if opened.io is not None:
            if not isinstance(data, Blocks) or data.chunks != self.chunks:
                data = _as_blocks(region, data, self.chunks, self.dtype)
            opened.io.write_blocks(region, data)
            return
        if isinstance(data, Blocks):
            data = data.array() if data.single else _as_array(region, data)
        _write_with_zarr(opened.array, region, data, self.chunks)

    def _opened(self, mode: Literal["r", "r+"]) -> _Open:
        opened = _open(self.location, mode)
        array = opened.array
        if (tuple(array.shape), tuple(array.shards or array.chunks)) != (self.shape, self.chunks):
            # Replaced since this process opened it (overwrite=True): the copy is stale.
            clear_cache(self.location)
            opened = _open(self.location, mode)
        return opened

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description; the store must be a path or URL."""
        return {
            **location_to_dict(self.location),
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "chunks": list(self.chunks),
            "read_chunks": list(self.read_chunks),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ZarrRef:
        """Inverse of :meth:`to_dict`."""
        return cls(
            location=location_from_dict(data),
            shape=tuple(data["shape"]),
            dtype=np.dtype(data["dtype"]),
            chunks=tuple(data["chunks"]),
            read_chunks=tuple(data["read_chunks"]),
        )


def _whole(region: Region) -> Region:
    return tuple(slice(0, s.stop - s.start) for s in region)


def _as_blocks(
    region: Region, data: Blocks | np.ndarray[Any, Any], chunks: tuple[int, ...], dtype: Any
) -> Blocks:
    blocks = Blocks(region, chunks, None, np.dtype(dtype))
    values = data if isinstance(data, np.ndarray) else _as_array(region, data)
    blocks.assign(_whole(region), values)
    return blocks


def _as_array(region: Region, blocks: Blocks) -> np.ndarray[Any, Any]:
    out = np.empty(tuple(s.stop - s.start for s in region), blocks.data.dtype)
    return blocks.gather(_whole(region), out)


def _write_with_zarr(
    array: zarr.Array[Any], region: Region, data: np.ndarray[Any, Any], chunks: tuple[int, ...]
) -> None:
    """zarr's own path (sharded arrays, unusual codecs): each write chunk is
    gathered here, in the calling thread, and handed to zarr whole, so zarr's
    one event-loop thread does not gather and check it."""
    skip_empty = not array.config.write_empty_chunks and array.fill_value is not None
    writer = array.with_config({"write_empty_chunks": True})
    for piece in split_region(region, chunks):
        local = tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(piece, region))
        block = np.asarray(data[local], order="C")  # ascontiguousarray makes 0-d 1-d
        if skip_empty and all_fill(block, array.fill_value):
            continue
        writer[piece] = block


def remove(location: StoreLocation) -> None:
    """Delete what is stored at ``location`` and forget this process's open copies."""
    clear_cache(location)
    location.delete()


@dataclass(frozen=True)
class _Open:
    """An open array, and its whole-chunk reader and writer when it has one."""

    array: zarr.Array[Any]
    io: ChunkIO | None


_cache: OrderedDict[tuple[Any, ...], _Open] = OrderedDict()
_cache_lock = threading.Lock()


def _open(location: StoreLocation, mode: Literal["r", "r+"]) -> _Open:
    key = (*location.key, mode)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    store = location.open_store(read_only=mode == "r")
    array = zarr.open_array(store=store, path=location.path, mode=mode)
    opened = _Open(array, chunk_io(array, store, location.path))
    with _cache_lock:
        _cache[key] = opened
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return opened


def open_array(location: StoreLocation, mode: Literal["r", "r+"] = "r") -> zarr.Array[Any]:
    """Open the zarr array at ``location``, reusing this process's open copy.

    Keeps at most :data:`CACHE_SIZE` arrays, dropping the least recently used,
    so a long-lived worker never holds an unbounded number open.
    """
    return _open(location, mode).array


def clear_cache(location: StoreLocation | None = None) -> None:
    """Forget open arrays: all of them, or those at and below ``location``."""
    with _cache_lock:
        if location is None:
            _cache.clear()
            return
        prefix = location.key
        for key in [k for k in _cache if k[0] == prefix[0] and k[1] == prefix[1]]:
            if (
                not location.path
                or key[2] == location.path
                or key[2].startswith(location.path + "/")
            ):
                del _cache[key]
