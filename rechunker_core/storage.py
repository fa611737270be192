"""Where arrays live, and opening them: store locations, array references, an LRU.

A :class:`StoreLocation` names a place in a store (a local path or fsspec URL,
or a zarr ``Store`` object, plus a path inside it); a :class:`ZarrRef` names a
zarr array there together with the geometry the planner needs. Both are small
frozen values that pickle, so specs travel to other processes; arrays are
opened on first use in each process and kept in a bounded LRU.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, MemoryStore

__all__ = [
    "StoreLocation",
    "ZarrRef",
    "clear_cache",
    "open_array",
    "resolve_location",
]

Region = tuple[slice, ...]

#: Arrays each process keeps open at most (reading ``zarr.json`` again is cheap,
#: but not free on object stores).
CACHE_SIZE = 64


@dataclass(frozen=True)
class StoreLocation:
    """A place in a store: ``store`` (a local path, an fsspec URL or a zarr
    ``Store``) and a ``path`` inside it.

    Attributes
    ----------
    store : str or zarr.abc.store.Store
    path : str
        ``""`` for the store root; ``/``-separated.
    storage_options : dict
        fsspec options, used when ``store`` is a URL.
    """

    store: str | Store
    path: str = ""
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def child(self, name: str) -> StoreLocation:
        """Return the location ``name`` below this one.

        >>> StoreLocation("/data/t.zarr", "g").child("a/b").path
        'g/a/b'
        """
        path = "/".join(p for p in (self.path, name.strip("/")) if p)
        return StoreLocation(self.store, path, self.storage_options)

    @property
    def in_memory(self) -> bool:
        """Whether the data lives in this process's memory only."""
        if isinstance(self.store, str):
            return self.store.startswith("memory://")
        return isinstance(self.store, MemoryStore) or (
            isinstance(self.store, FsspecStore) and "memory" in _protocols(self.store)
        )

    @property
    def key(self) -> tuple[str, ...]:
        """A hashable identity, equal for locations naming the same place."""
        if isinstance(self.store, str):
            options = json.dumps(dict(self.storage_options), sort_keys=True, default=str)
            return ("url", self.store.rstrip("/"), self.path, options)
        # The cache holds the store while it holds this key, so ids stay unique.
        return ("object", str(id(self.store)), self.path)

    def describe(self) -> str:
        """Return a short human-readable name for messages and reprs."""
        base = self.store if isinstance(self.store, str) else str(self.store)
        return f"{base.rstrip('/')}/{self.path}" if self.path else base

    def open_store(self, *, read_only: bool = False) -> Store:
        """Return the zarr store object for this location's store."""
        if not isinstance(self.store, str):
            return self.store
        if "://" not in self.store:
            return LocalStore(self.store, read_only=read_only)
        options = dict(self.storage_options)
        if self.store.startswith("file://"):
            options.setdefault("auto_mkdir", True)
        return FsspecStore.from_url(self.store, storage_options=options, read_only=read_only)

    def exists(self) -> bool:
        """Whether anything (a zarr node or any other object) is stored here."""
        if isinstance(self.store, str) and "://" not in self.store:
            full = Path(self.store, self.path)
            return full.is_file() or (full.is_dir() and any(full.iterdir()))
        store = self.open_store(read_only=True)
        return not sync(store.is_empty(self.path))

    def delete(self) -> None:
        """Delete everything stored at this location."""
        clear_cache(self)
        sync(self.open_store().delete_dir(self.path))
        if isinstance(self.store, str) and "://" not in self.store:
            full = Path(self.store, self.path)
            # LocalStore leaves empty directories behind; remove ours.
            for directory in (full, *full.parents):
                if directory == Path(self.store).parent or not directory.is_dir():
                    break
                if any(directory.iterdir()):
                    break
                directory.rmdir()


def _protocols(store: FsspecStore) -> tuple[str, ...]:
    protocol = getattr(store.fs, "protocol", ())
    if hasattr(store.fs, "sync_fs"):
        protocol = store.fs.sync_fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _fsspec_location(store: FsspecStore) -> StoreLocation | None:
    """The URL and storage options of an fsspec store (None for memory://).

    A URL pickles and saves to JSON, and names the same place as a URL a
    user passes, so overlapping source, temp and target are detected.
    """
    protocols = _protocols(store)
    if not protocols or "memory" in protocols:
        return None
    if "file" in protocols:
        return StoreLocation(os.path.abspath(store.path), "", {})
    fs = getattr(store.fs, "sync_fs", store.fs)
    # zarr adds "asynchronous" itself when it opens a URL.
    options = {k: v for k, v in fs.storage_options.items() if k != "asynchronous"}
    return StoreLocation(f"{protocols[0]}://{store.path}", "", options)


def resolve_location(
    store_like: Any, storage_options: Mapping[str, Any] | None = None
) -> StoreLocation:
    """Turn what users pass as a store into a :class:`StoreLocation`.

    Accepts a local path (``str`` or ``pathlib.Path``), an fsspec URL, a zarr
    ``Store`` or a ``zarr.Group``. Local stores become their path, so they pickle
    and save to JSON as text.

    >>> resolve_location("data/t.zarr").store == os.path.abspath("data/t.zarr")
    True
    """
    options = dict(storage_options or {})
    if isinstance(store_like, zarr.Group):
        base = resolve_location(store_like.store, options)
        return base.child(store_like.path)
    if isinstance(store_like, Path):
        store_like = str(store_like)
    if isinstance(store_like, str):
        if "://" in store_like and not store_like.startswith("file://"):
            return StoreLocation(store_like, "", options)
        if store_like.startswith("file://") and not options:
            store_like = store_like[len("file://") :]
        elif store_like.startswith("file://"):
            return StoreLocation(store_like, "", options)
        return StoreLocation(os.path.abspath(store_like), "", {})
    if isinstance(store_like, LocalStore):
        return StoreLocation(str(store_like.root), "", {})
    if isinstance(store_like, FsspecStore) and (url := _fsspec_location(store_like)):
        return url
    if isinstance(store_like, Store):
        return StoreLocation(store_like, "", {})
    raise TypeError(
        f"unsupported store {store_like!r} of type {type(store_like).__name__}: pass a local "
        "path, an fsspec URL (memory://, file://, s3://...), a zarr Store or a zarr.Group"
    )


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
        array = open_array(self.location, mode)
        if (tuple(array.shape), tuple(array.shards or array.chunks)) != (self.shape, self.chunks):
            # Replaced since this process opened it (overwrite=True): the copy is stale.
            clear_cache(self.location)
            array = open_array(self.location, mode)
        return array

    def read(self, region: Region) -> np.ndarray[Any, Any]:
        """Read ``region`` into a new numpy array."""
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
        """
        from rechunker_core.spec import split_region  # spec imports this module

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
        if not isinstance(self.location.store, str):
            raise ValueError(
                f"cannot save a reference to an array in {self.location.describe()} as JSON: "
                "its store is a Python object; use a local path or an fsspec URL"
            )
        return {
            "store": self.location.store,
            "path": self.location.path,
            "storage_options": dict(self.location.storage_options),
            "shape": list(self.shape),
            "dtype": self.dtype.str,
            "chunks": list(self.chunks),
            "read_chunks": list(self.read_chunks),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ZarrRef:
        """Inverse of :meth:`to_dict`."""
        location = StoreLocation(data["store"], data["path"], dict(data["storage_options"]))
        return cls(
            location=location,
            shape=tuple(data["shape"]),
            dtype=np.dtype(data["dtype"]),
            chunks=tuple(data["chunks"]),
            read_chunks=tuple(data["read_chunks"]),
        )


def _all_fill(block: np.ndarray[Any, Any], fill_value: Any) -> bool:
    """Whether every element of ``block`` equals ``fill_value`` (NaN equals NaN).

    Data chunks rarely start with the fill value, so the first element
    settles most chunks without reading the rest.

    >>> _all_fill(np.array([np.nan, np.nan]), np.nan), _all_fill(np.zeros(2), 1.0)
    (True, False)
    >>> _all_fill(np.array([1.0, 2.0]), 1.0)
    False
    """
    fill = np.asarray(fill_value, dtype=block.dtype)
    equal_nan = block.dtype.kind in "fc"
    if block.size and not np.array_equal(block.flat[0], fill, equal_nan=equal_nan):
        return False
    return bool(np.array_equal(block, np.broadcast_to(fill, block.shape), equal_nan=equal_nan))


_cache: OrderedDict[tuple[Any, ...], zarr.Array[Any]] = OrderedDict()
_cache_lock = threading.Lock()


def open_array(location: StoreLocation, mode: Literal["r", "r+"] = "r") -> zarr.Array[Any]:
    """Open the zarr array at ``location``, reusing this process's open copy.

    Keeps at most :data:`CACHE_SIZE` arrays, dropping the least recently used,
    so a long-lived worker never holds an unbounded number open.
    """
    key = (*location.key, mode)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    array = zarr.open_array(
        store=location.open_store(read_only=mode == "r"), path=location.path, mode=mode
    )
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
