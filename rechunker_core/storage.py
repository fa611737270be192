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
        )

    def open(self, mode: Literal["r", "r+"] = "r") -> zarr.Array[Any]:
        """Open the array (once per process and mode; see :func:`open_array`).

        Every store request of the array opened is retried on a transient
        error as :attr:`retry` says (:class:`RetryingStore`).
        """
        array = open_array(self.location, mode, self.retry)
        if (tuple(array.shape), tuple(array.shards or array.chunks)) != (self.shape, self.chunks):
            # Replaced since this process opened it (overwrite=True): the copy is stale.
            clear_cache(self.location)
            array = open_array(self.location, mode, self.retry)
        return array

    def read(self, region: Region) -> np.ndarray[Any, Any]:
        """Read ``region`` into a new numpy array.

        Raises
        ------
        StoreError
            Naming the chunk's key and the store, when retrying cannot help.
        """
        return np.asarray(self.open("r")[region])

    def write(self, region: Region, data: np.ndarray[Any, Any]) -> None:
        """Write ``data`` to ``region``; the region must cover whole write chunks.

        Each write chunk is gathered into a contiguous array here, in the
        calling thread, and handed to zarr whole. zarr then encodes it as is;
        given the whole region it would gather every chunk, and check it for
        emptiness, on its one event-loop thread, which serialises all workers
        (docs/algorithm.md). Chunks holding only the fill value are skipped
        unless the array writes empty chunks, as zarr would: the arrays are
        new, so a skipped chunk reads as the fill value.

        Raises
        ------
        StoreError
            Naming the chunk's key and the store, when retrying cannot help.
        """
        array = self.open("r+")
        skip_empty = not array.config.write_empty_chunks and array.fill_value is not None
        writer = array.with_config({"write_empty_chunks": True})
        for piece in split_region(region, self.chunks):
            local = tuple(slice(p.start - r.start, p.stop - r.start) for p, r in zip(piece, region))
            block = np.asarray(data[local], order="C")  # ascontiguousarray makes 0-d 1-d
            if skip_empty and _all_fill(block, array.fill_value):
                continue
            writer[piece] = block

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description; the store must be a path or URL."""
        return {
            **location_to_dict(self.location),
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "chunks": list(self.chunks),
            "read_chunks": list(self.read_chunks),
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
            retry=RetryPolicy.from_dict(data["retry"]) if "retry" in data else RetryPolicy(),
        )


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


def _all_fill(block: np.ndarray[Any, Any], fill_value: Any) -> bool:
    """Whether every element of ``block`` is ``fill_value``, bit for bit (as zarr decides).

    ``-0.0`` is not ``0.0``: both compare equal as numbers, but a chunk of
    ``-0.0`` skipped as empty would read back as ``0.0``. Any NaN matches a
    NaN fill value. Data chunks rarely start with the fill value, so the
    first element settles most chunks without reading the rest.

    >>> _all_fill(np.array([np.nan, np.nan]), np.nan), _all_fill(np.zeros(2), 1.0)
    (True, False)
    >>> _all_fill(np.array([0.0, -0.0]), 0.0), _all_fill(np.array([1.0, 2.0]), 1.0)
    (False, False)
    """
    fill = np.asarray(fill_value, dtype=block.dtype)
    if block.dtype.kind in "fc" and np.isnan(fill).any():
        first = block.flat[:1]
        if first.size and not np.array_equal(first[0], fill, equal_nan=True):
            return False
        return bool(np.array_equal(block, np.broadcast_to(fill, block.shape), equal_nan=True))
    if block.dtype.hasobject or block.dtype.kind in "USV":
        return bool(np.array_equal(block, np.broadcast_to(fill, block.shape)))
    bits = np.dtype(f"V{block.dtype.itemsize}")
    contiguous = np.ascontiguousarray(block)
    fill_bits = fill.reshape(1).view(bits)[0]
    if contiguous.size and contiguous.reshape(-1)[:1].view(bits)[0] != fill_bits:
        return False
    return bool((contiguous.reshape(-1).view(bits) == fill_bits).all())


def remove(location: StoreLocation) -> None:
    """Delete what is stored at ``location`` and forget this process's open copies."""
    clear_cache(location)
    location.delete()


_cache: OrderedDict[tuple[Any, ...], zarr.Array[Any]] = OrderedDict()
_cache_lock = threading.Lock()


def open_array(
    location: StoreLocation, mode: Literal["r", "r+"] = "r", retry: RetryPolicy | None = None
) -> zarr.Array[Any]:
    """Open the zarr array at ``location``, reusing this process's open copy.

    With ``retry``, every store request of the array is retried on a
    transient error (:class:`RetryingStore`), opening it included.
    Keeps at most :data:`CACHE_SIZE` arrays, dropping the least recently used,
    so a long-lived worker never holds an unbounded number open.
    """
    key = (*location.key, mode, retry)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    store = location.open_store(read_only=mode == "r")
    if retry is not None:
        store = RetryingStore(store, retry)
    array = zarr.open_array(store=store, path=location.path, mode=mode)
    with _cache_lock:
        _cache[key] = array
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return array


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
