"""Opening arrays: array references and a per-process LRU of open arrays.

A :class:`ZarrRef` names a zarr array at a
:class:`~rechunker_core.locations.StoreLocation` together with the geometry
the planner needs. It is a small frozen value that pickles, so specs travel to
other processes; arrays are opened on first use in each process and kept in a
bounded LRU.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

from rechunker_core.blocks import Blocks
from rechunker_core.chunkio import ChunkIO, all_fill, chunk_io
from rechunker_core.geometry import Region, split_region
from rechunker_core.locations import StoreLocation, location_from_dict, location_to_dict
from rechunker_core.retry import RetryPolicy, retrying_async

__all__ = ["RetryingStore", "ZarrRef", "clear_cache", "open_array", "remove"]

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
    retry : RetryPolicy
        How each store request is retried on a transient error
        (:mod:`rechunker_core.retry`).
    """

    location: StoreLocation
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    chunks: tuple[int, ...]
    read_chunks: tuple[int, ...]
    zarr_format: Literal[2, 3] = 3
    retry: RetryPolicy = field(default=RetryPolicy(), compare=False)

    @classmethod
    def from_array(cls, array: zarr.Array[Any], location: StoreLocation) -> ZarrRef:
        """Describe an open array found at ``location``."""
        return cls(
            location=location,
            shape=tuple(array.shape),
            dtype=np.dtype(array.dtype),
            chunks=tuple(array.shards or array.chunks),
            read_chunks=tuple(array.chunks),
            zarr_format=2 if array.metadata.zarr_format == 2 else 3,
        )

    def open(self, mode: Literal["r", "r+"] = "r") -> zarr.Array[Any]:
        """Open the array (once per process and mode; see :func:`open_array`).

        Every store request of the array opened is retried on a transient
        error as :attr:`retry` says.
        """
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
        self.read_counting(region, blocks)

    def read_counting(self, region: Region, blocks: Blocks) -> int:
        """Fill ``blocks`` with the values in ``region``; return how many of its
        chunks were absent, read as the fill value (0 through zarr's own path,
        which does not tell, and which :meth:`free` never deletes from)."""
        opened = self._opened("r")
        if opened.io is not None:
            return opened.io.read_into(region, blocks)
        blocks.assign(_whole(region), np.asarray(opened.array[region]))
        return 0

    def free(self, region: Region) -> None:
        """Delete the chunks ``region`` holds whole, where that is cheap (a local
        directory, chunks written one by one); elsewhere do nothing.

        Only for an intermediate whose every chunk is read by one task, once
        that task is recorded as done (:attr:`CopySpec.frees_source`).
        """
        opened = self._opened("r")
        if opened.io is not None:
            opened.io.free(region)

    def can_free(self) -> bool:
        """Whether :meth:`free` deletes anything from this array."""
        opened = self._opened("r")
        return opened.io is not None and opened.io.can_free

    def read(self, region: Region) -> np.ndarray[Any, Any]:
        """Read ``region`` into a new numpy array.

        Raises
        ------
        StoreError
            Naming the chunk's key and the store, when retrying cannot help.
        """
        blocks = Blocks(region, tuple(s.stop - s.start for s in region), None, self.dtype)
        self.read_into(region, blocks)
        return blocks.array()

    def write(self, region: Region, data: Blocks | np.ndarray[Any, Any]) -> None:
        """Write ``data`` (blocks, or an array shaped like ``region``) to ``region``,
        which must cover whole write chunks.

        Chunks holding only the fill value are skipped unless the array
        writes empty chunks, as zarr would: the arrays are new, so a skipped
        chunk reads as the fill value.

        Raises
        ------
        StoreError
            Naming the chunk's key and the store, when retrying cannot help.
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
        opened = _open(self.location, mode, self.zarr_format, self.retry)
        array = opened.array
        if (tuple(array.shape), tuple(array.shards or array.chunks)) != (self.shape, self.chunks):
            # Replaced since this process opened it (overwrite=True): the copy is stale.
            clear_cache(self.location)
            opened = _open(self.location, mode, self.zarr_format, self.retry)
        return opened

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description; the store must be a path or URL."""
        return {
            **location_to_dict(self.location),
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "chunks": list(self.chunks),
            "read_chunks": list(self.read_chunks),
            "zarr_format": self.zarr_format,
            "retry": self.retry.to_dict(),
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
            zarr_format=2 if data.get("zarr_format") == 2 else 3,
            retry=RetryPolicy.from_dict(data["retry"]) if "retry" in data else RetryPolicy(),
        )


def _whole(region: Region) -> Region:
    return tuple(slice(0, s.stop - s.start) for s in region)


class RetryingStore(WrapperStore[Store]):
    """A zarr store whose every request is retried on a transient error.

    Retrying each request (one chunk, or the byte range of one inner chunk
    of a shard), not a whole region read, keeps retries effective: a region
    of 24 chunks at 5% failed requests fails 71% of reads. The waits are
    ``asyncio.sleep``: other requests go on meanwhile. See
    :mod:`rechunker_core.retry`.
    """

    def __init__(self, store: Store, policy: RetryPolicy) -> None:
        super().__init__(store)
        self.policy = policy

    def _with_store(self, store: Store) -> RetryingStore:
        return RetryingStore(store, self.policy)

    def _what(self, verb: str, key: str) -> str:
        return f"{verb} {key!r} in store {self._store}"

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        return await retrying_async(
            lambda: self._store.get(key, prototype, byte_range),
            partial(self._what, "reading", key),
            self.policy,
        )

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        ranges = list(key_ranges)
        return await asyncio.gather(*(self.get(key, prototype, r) for key, r in ranges))

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return await retrying_async(
            lambda: self._store.exists(key), partial(self._what, "looking for", key), self.policy
        )

    async def set(self, key: str, value: Buffer) -> None:
        await retrying_async(
            lambda: self._store.set(key, value), partial(self._what, "writing", key), self.policy
        )

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))


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
_opening: dict[tuple[Any, ...], threading.Lock] = {}


def _open(
    location: StoreLocation,
    mode: Literal["r", "r+"],
    zarr_format: Literal[2, 3] | None,
    retry: RetryPolicy | None,
) -> _Open:
    key = (*location.key, mode, retry)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        opening = _opening.setdefault(key, threading.Lock())
    with opening:  # threads that need the same array wait for one to open it
        with _cache_lock:
            if key in _cache:
                return _cache[key]
        store = location.open_store(read_only=mode == "r")
        # zarr's own path (opening, sharded arrays) retries through the wrapper; the
        # whole-chunk path retries each of its requests itself, on the bare store.
        wrapped = store if retry is None else RetryingStore(store, retry)
        # Knowing the format spares zarr looking for the other format's metadata: on
        # an object store, requests fewer each time a process opens an array.
        array = zarr.open_array(
            store=wrapped, path=location.path, mode=mode, zarr_format=zarr_format
        )
        opened = _Open(array, chunk_io(array, store, location.path, retry))
        with _cache_lock:
            _cache[key] = opened
            _opening.pop(key, None)
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    return opened


def open_array(
    location: StoreLocation, mode: Literal["r", "r+"] = "r", retry: RetryPolicy | None = None
) -> zarr.Array[Any]:
    """Open the zarr array at ``location``, reusing this process's open copy.

    With ``retry``, every store request of the array is retried on a
    transient error (:class:`RetryingStore`), opening it included.
    Keeps at most :data:`CACHE_SIZE` arrays, dropping the least recently used,
    so a long-lived worker never holds an unbounded number open.
    """
    return _open(location, mode, None, retry).array


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
