"""Every use of zarr beyond its public API, in one place.

zarr-python 3 keeps a few things we need out of its public API: the call that
runs a store coroutine on zarr's own event loop (and that loop itself, to
start requests without waiting for them), and the store a
``WrapperStore`` wraps. Their private names held from zarr 3.1 to 3.4 (the
range ``make test`` runs); should a release move them, this module is the
only one to change. Everything else in the package uses zarr's public API
(``zarr.buffer``, ``zarr.storage``, ``zarr.abc.store``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

from zarr.abc.store import Store
from zarr.core.sync import _get_loop
from zarr.core.sync import sync as _zarr_sync
from zarr.storage import MemoryStore, WrapperStore

__all__ = ["memory_store_identity", "submit", "sync", "unwrap_store"]

T = TypeVar("T")


def sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a store coroutine to completion on zarr's event loop, from synchronous code.

    Store objects (an fsspec file system above all) are bound to that loop,
    so ``asyncio.run`` in a fresh loop is no substitute.
    """
    return _zarr_sync(coroutine)


def submit(coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start a store coroutine on zarr's event loop and return at once.

    The caller keeps several requests in flight and waits for each when it
    needs its result, so a task overlaps its requests with its own work.
    """
    return asyncio.run_coroutine_threadsafe(coroutine, _get_loop())


def unwrap_store(store: Store) -> Store:
    """The store at the bottom of any number of ``WrapperStore`` layers."""
    while isinstance(store, WrapperStore):
        store = store._store
    return store


def memory_store_identity(store: MemoryStore) -> int:
    """Identifies a ``MemoryStore``'s data: two store objects may share one dict."""
    return id(store._store_dict)
