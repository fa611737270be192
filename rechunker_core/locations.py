"""Where data lives: store locations, their canonical identity, and claims on them.

Every safety rule of :func:`rechunker_core.rechunk` rests on this module:

- :attr:`StoreLocation.identity` spells a location one way, whatever the user
  wrote: a relative path, a trailing slash, ``.``/``..``, a symlinked parent,
  a ``file://`` URL, a zarr ``LocalStore`` or ``FsspecStore``, or a
  ``zarr.Group`` are all reduced to the same absolute, symlink-free form.
- :func:`overlap` says whether one location equals or contains another, so
  source, target and temp can be kept apart.
- :class:`Claim` marks a location as being written by one run, atomically, so
  two runs never write into the same place at once.
- An in-memory location remembers the process that holds its data. Pickled
  into that same process it finds the very store again; anywhere else,
  :meth:`StoreLocation.open_store` raises a clear ``ValueError`` instead of
  reading fill values or losing writes. This one guard covers every engine,
  plans embedded in user graphs, and JSON plans.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import socket
import time
import uuid
import weakref
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, LocalStore, MemoryStore, WrapperStore

from rechunker_core.sessions import SessionPlace
from rechunker_core.zarr_internals import memory_store_identity, sync, unwrap_store

__all__ = [
    "CLAIM_KEY",
    "Claim",
    "ClaimError",
    "Identity",
    "StoreLocation",
    "check_writable_place",
    "location_from_dict",
    "location_to_dict",
    "overlap",
    "resolve_location",
]

#: The key of a claim, inside the location it claims. zarr ignores it: it is
#: neither metadata nor a chunk key.
CLAIM_KEY = ".rechunker-claim"

#: A claim from another machine (or with no process to watch) blocks others
#: for this long after it was last renewed; see :meth:`Claim.is_stale`.
LEASE_SECONDS = 24 * 3600.0

#: fsspec protocol spellings that name the same file systems.
_PROTOCOL_ALIASES = {"s3a": "s3", "gcs": "gs", "local": "file", "abfss": "abfs", "az": "abfs"}


@dataclass(frozen=True)
class Identity:
    """A location spelled one canonical way: a namespace and a path in it.

    Local paths are absolute with symlinks resolved (namespace ``"file"``);
    object-store URLs are a protocol and bucket/key parts; store objects that
    have no name outside this process are named by their identity in it.

    >>> Identity("file", ("/", "a")).contains(Identity("file", ("/", "a", "b")))
    True
    >>> Identity("s3", ("b", "x")).contains(Identity("s3", ("b", "xy")))
    False
    """

    namespace: str
    parts: tuple[str, ...]

    def contains(self, other: Identity) -> bool:
        """Whether ``other`` is this location or lies below it."""
        n = len(self.parts)
        return self.namespace == other.namespace and other.parts[:n] == self.parts

    def __str__(self) -> str:
        if self.namespace == "file":
            return os.path.join(*self.parts) if self.parts else "/"
        return f"{self.namespace}://{'/'.join(self.parts)}"


def overlap(a: StoreLocation, b: StoreLocation) -> bool:
    """Whether ``a`` and ``b`` are the same place or one contains the other.

    >>> overlap(StoreLocation("/data/x.zarr"), StoreLocation("/data/x.zarr/", "sub"))
    True
    >>> overlap(StoreLocation("/data/x.zarr"), StoreLocation("/data/x.zarr2"))
    False
    """
    ia, ib = a.identity, b.identity
    return ia.contains(ib) or ib.contains(ia)


def _local_parts(path: str) -> tuple[str, ...]:
    return Path(os.path.realpath(os.path.abspath(path))).parts


def _key_parts(*pieces: str) -> tuple[str, ...]:
    """Normalise ``/``-separated object keys: no empty parts, ``.``/``..`` applied.

    >>> _key_parts("bucket//a/./b/", "../c")
    ('bucket', 'a', 'c')
    """
    joined = posixpath.normpath("/" + "/".join(pieces))
    return tuple(p for p in joined.split("/") if p)


def _split_url(url: str) -> tuple[str, str]:
    """``(protocol, rest)`` of an fsspec URL; chained URLs name their last store.

    >>> _split_url("simplecache::S3A://bucket/x")
    ('s3', 'bucket/x')
    """
    last = url.split("::")[-1]
    protocol, _, rest = last.partition("://")
    protocol = protocol.lower()
    return _PROTOCOL_ALIASES.get(protocol, protocol), rest


def _fs_protocol(store: FsspecStore) -> str:
    fs = getattr(store.fs, "sync_fs", store.fs)
    protocol = fs.protocol
    first = protocol if isinstance(protocol, str) else protocol[0]
    return _PROTOCOL_ALIASES.get(first, first)


#: A process: the host it runs on and its pid.
Process = tuple[str, int]


def this_process() -> Process:
    """The calling process, as in-memory locations record their owner."""
    return socket.gethostname(), os.getpid()


@dataclass(frozen=True)
class Elsewhere:
    """Stands for an in-memory store of another process, which this one cannot reach."""

    description: str

    def __str__(self) -> str:
        return self.description


#: In-memory stores whose locations were pickled, by token, so that unpickling
#: in the same process finds the store itself rather than a copy of it.
_LIVE_STORES: weakref.WeakValueDictionary[str, Store] = weakref.WeakValueDictionary()


def _is_memory(store: str | Store | SessionPlace | Elsewhere) -> bool:
    """Whether data in ``store`` lives in one process's memory only."""
    if isinstance(store, Elsewhere):
        return True
    if isinstance(store, SessionPlace):
        return False
    if isinstance(store, str):
        return "://" in store and _split_url(store)[0] == "memory"
    store = unwrap_store(store)
    return isinstance(store, MemoryStore) or (
        isinstance(store, FsspecStore) and _fs_protocol(store) == "memory"
    )


def _restore(
    token: str, description: str, path: str, options: dict[str, Any], owner: Process
) -> StoreLocation:
    """Unpickle an in-memory location: the live store in its own process, else Elsewhere."""
    live = _LIVE_STORES.get(token) if owner == this_process() else None
    store: Store | Elsewhere = live if live is not None else Elsewhere(description)
    return StoreLocation(store, path, options, owner)


def _store_identity(store: Store | Elsewhere | SessionPlace, path: str) -> Identity:
    if isinstance(store, SessionPlace):
        return Identity(f"icechunk:{store.token}", _key_parts(path))
    if isinstance(store, Elsewhere):
        return Identity(f"memory-store:elsewhere:{store}", _key_parts(path))
    store = unwrap_store(store)
    if isinstance(store, LocalStore):
        return Identity("file", _local_parts(os.path.join(str(store.root), path)))
    if isinstance(store, FsspecStore):
        protocol = _fs_protocol(store)
        if protocol == "file":
            return Identity("file", _local_parts(os.path.join(store.path, path)))
        return Identity(protocol, _key_parts(store.path, path))
    if isinstance(store, MemoryStore):
        # Two MemoryStore objects may share one dict: they are the same place.
        return Identity(f"memory-store:{memory_store_identity(store)}", _key_parts(path))
    return Identity(f"{type(store).__name__}:{id(store)}", _key_parts(path))


@dataclass(frozen=True)
class StoreLocation:
    """A place in a store: ``store`` (a local path, an fsspec URL or a zarr
    ``Store``) and a ``path`` inside it.

    Attributes
    ----------
    store : str, zarr.abc.store.Store, SessionPlace or Elsewhere
        Local paths are absolute and free of symlinks once made by
        :func:`resolve_location`. A :class:`~rechunker_core.sessions.SessionPlace`
        is an Icechunk session written through forks. :class:`Elsewhere` is
        another process's in-memory store.
    path : str
        ``""`` for the store root; ``/``-separated.
    storage_options : dict
        fsspec options, used when ``store`` is a URL.
    owner : (host, pid), optional
        For in-memory stores, the process that holds the data (the one that
        made the location, unless given).
    """

    store: str | Store | SessionPlace | Elsewhere
    path: str = ""
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    owner: Process | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.owner is None and _is_memory(self.store):
            object.__setattr__(self, "owner", this_process())

    def __reduce__(self) -> tuple[Any, ...]:
        options = dict(self.storage_options)
        if self.owner is not None and not isinstance(self.store, str):
            # Pickle a token, not the store: unpickled elsewhere a MemoryStore
            # would be an empty copy whose writes are lost.
            token = f"{id(self.store)}"
            if isinstance(self.store, Store):
                _LIVE_STORES[token] = self.store
            return (_restore, (token, str(self.store), self.path, options, self.owner))
        return (StoreLocation, (self.store, self.path, options, self.owner))

    def child(self, name: str) -> StoreLocation:
        """Return the location ``name`` below this one.

        >>> StoreLocation("/data/t.zarr", "g").child("a/b").path
        'g/a/b'
        """
        path = "/".join(p for p in (self.path, name.strip("/")) if p)
        return StoreLocation(self.store, path, self.storage_options, self.owner)

    @property
    def identity(self) -> Identity:
        """This location spelled the one canonical way (see :class:`Identity`)."""
        if not isinstance(self.store, str):
            return _store_identity(self.store, self.path)
        if "://" not in self.store:
            return Identity("file", _local_parts(os.path.join(self.store, self.path)))
        protocol, rest = _split_url(self.store)
        if protocol == "file":
            return Identity("file", _local_parts(os.path.join(rest or "/", self.path)))
        return Identity(protocol, _key_parts(rest, self.path))

    @property
    def local_path(self) -> Path | None:
        """The directory this location is on the local file system, if it is."""
        identity = self.identity
        return Path(str(identity)) if identity.namespace == "file" else None

    @property
    def icechunk(self) -> SessionPlace | None:
        """The Icechunk session this location writes into, if it is one."""
        return self.store if isinstance(self.store, SessionPlace) else None

    @property
    def in_memory(self) -> bool:
        """Whether the data lives in one process's memory only."""
        return self.owner is not None

    def _elsewhere_message(self) -> str:
        host, pid = self.owner or ("?", 0)
        here, mine = this_process()
        return (
            f"the in-memory store {self.describe()} holds its data in process {pid} on "
            f"{host}, and this task runs in process {mine} on {here}, which cannot see it; "
            "use a local path, a file:// or s3:// URL, or an in-process executor "
            "(python, threads)"
        )

    def in_memory_message(self, who: str) -> str:
        """Why ``who`` (``"the dask executor runs tasks"``) cannot use this in-memory store."""
        return (
            f"{who} in other processes, which cannot see the in-memory store "
            f"{self.describe()}; use a local path, a file:// or s3:// URL, or an "
            "in-process executor (python, threads)"
        )

    @property
    def key(self) -> tuple[str, ...]:
        """A hashable name for this process's cache of open arrays."""
        if isinstance(self.store, str):
            options = json.dumps(dict(self.storage_options), sort_keys=True, default=str)
            return ("url", self.store.rstrip("/"), self.path, options)
        if isinstance(self.store, SessionPlace):
            return (*self.store.cache_key(), self.path)
        # The cache holds the store while it holds this key, so ids stay unique.
        return ("object", str(id(self.store)), self.path)

    def describe(self) -> str:
        """Return a short human-readable name for messages and reprs."""
        base = self.store if isinstance(self.store, str) else str(self.store)
        return f"{base.rstrip('/')}/{self.path}" if self.path else base

    def open_store(self, *, read_only: bool = False) -> Store:
        """Return the zarr store object for this location's store.

        Raises
        ------
        ValueError
            For an in-memory store held by another process than this one.
        """
        if self.owner is not None and self.owner != this_process():
            raise ValueError(self._elsewhere_message())
        if isinstance(self.store, Elsewhere):  # unpickled after its store was gone
            raise ValueError(self._elsewhere_message())
        if isinstance(self.store, SessionPlace):
            return self.store.zarr_store(read_only)
        if not isinstance(self.store, str):
            return self.store
        if "://" not in self.store:
            return LocalStore(self.store, read_only=read_only)
        options = dict(self.storage_options)
        if self.store.startswith("file://"):
            options.setdefault("auto_mkdir", True)
        return FsspecStore.from_url(self.store, storage_options=options, read_only=read_only)

    def exists(self) -> bool:
        """Whether anything (a zarr node, a claim or any other object) is stored here."""
        local = self.local_path
        if local is not None:
            return local.is_file() or (local.is_dir() and any(local.iterdir()))
        return not sync(self.open_store(read_only=True).is_empty(self.path))

    def holds_only_claims(self) -> bool:
        """Whether the only thing stored here is a claim (or nothing)."""
        local = self.local_path
        if local is not None:
            return not local.is_file() and all(
                p.name == CLAIM_KEY for p in (local.iterdir() if local.is_dir() else ())
            )
        keys = sync(_list(self.open_store(read_only=True), self.path))
        return all(key == CLAIM_KEY for key in keys)

    def holds_only(self, names: Collection[str]) -> bool:
        """Whether every object stored here, at any depth, has one of these ``names``.

        Stops at the first other object, so a full array answers quickly.
        """
        local = self.local_path
        if local is not None:
            if local.is_file():
                return False
            return all(p.name in names for p in local.rglob("*") if not p.is_dir())
        keys = sync(_list(self.open_store(read_only=True), self.path))
        return all(key.rsplit("/", 1)[-1] in names for key in keys)

    def delete(self) -> None:
        """Delete everything stored at this location, and its directory if local."""
        local = self.local_path
        if local is not None:
            if local.is_dir():
                _remove_tree(local)
            elif local.exists():
                local.unlink()
            return
        store = self.open_store()
        sync(store.delete_dir(self.path))
        if self.path:
            sync(store.delete(self.path))

    def remove_if_empty(self) -> None:
        """Remove this local directory if nothing is in it (for directories a run made)."""
        local = self.local_path
        if local is not None and local.is_dir() and not any(local.iterdir()):
            local.rmdir()

    def delete_contents(self, keep: str | tuple[str, ...] = CLAIM_KEY) -> None:
        """Delete everything stored here except the key(s) ``keep`` (a claim)."""
        kept = (keep,) if isinstance(keep, str) else keep
        local = self.local_path
        if local is not None:
            for entry in local.iterdir() if local.is_dir() else ():
                if entry.name in kept:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            return
        store = self.open_store()
        if self.icechunk is not None:  # holds no claim; deletes a node with its chunks
            sync(store.delete_dir(self.path))
            return
        for key in sync(_list(store, self.path)):
            if key not in kept:
                full = f"{self.path}/{key}" if self.path else key
                sync(store.delete(full))


async def _list(store: Store, path: str) -> list[str]:
    prefix = f"{path.rstrip('/')}/" if path else ""
    return [key[len(prefix) :] async for key in store.list_prefix(prefix)]


def _remove_tree(folder: Path) -> None:
    """Delete ``folder`` and everything in it, while files in it may vanish: worker
    processes may still be unlinking chunks they set aside there
    (:class:`rechunker_core.chunkio._Deletions`). Nothing appears in it meanwhile,
    so each attempt that meets a vanished file gets further than the last."""
    for _ in range(_VANISHED_ATTEMPTS):
        try:
            shutil.rmtree(folder)
            return
        except FileNotFoundError:
            if not folder.exists():
                return
    shutil.rmtree(folder)


#: How many files may vanish under :func:`_remove_tree` before one more raises.
_VANISHED_ATTEMPTS = 1000


def resolve_location(
    store_like: Any,
    storage_options: Mapping[str, Any] | None = None,
    *,
    what: str = "store",
    writable: bool = False,
) -> StoreLocation:
    """Turn what users pass as a store into a :class:`StoreLocation`.

    Accepts a local path (``str`` or ``pathlib.Path``), an fsspec URL, a zarr
    ``Store`` or a ``zarr.Group``. Local stores become their absolute,
    symlink-free path, so they pickle, save to JSON as text, and compare.

    >>> resolve_location("data/t.zarr").store == os.path.realpath("data/t.zarr")
    True

    Raises
    ------
    ValueError
        For an empty path (an unset shell variable must never name the
        current directory), or, with ``writable``, a store or group opened
        read-only.
    TypeError
        For anything that is not a store.
    """
    options = dict(storage_options or {})
    if isinstance(store_like, zarr.Group):
        base = resolve_location(store_like.store, options, what=what, writable=writable)
        return base.child(store_like.path)
    if writable and isinstance(store_like, Store) and store_like.read_only:
        raise ValueError(f"{what} {store_like} is opened read-only; open it for writing")
    if isinstance(store_like, str | Path):
        return _location_of_text(str(store_like), options, what)
    if isinstance(store_like, Store):
        return _location_of_store(store_like)
    raise TypeError(
        f"unsupported {what} {store_like!r} of type {type(store_like).__name__}: pass a local "
        "path, an fsspec URL (memory://, file://, s3://...), a zarr Store or a zarr.Group"
    )


def _location_of_text(text: str, options: dict[str, Any], what: str) -> StoreLocation:
    """A local path or an fsspec URL; local paths become absolute and symlink-free."""
    if not text.strip():
        raise ValueError(f"{what} is an empty path; give the path or URL of a zarr store")
    protocol, rest = _split_url(text) if "://" in text else ("", text)
    if protocol == "file" and not options:
        text = rest
    elif protocol:
        return StoreLocation(text, "", options)
    return StoreLocation(os.path.realpath(text), "", {})


def _location_of_store(store: Store) -> StoreLocation:
    """A zarr store, named by path or URL when it has one outside this process."""
    if isinstance(store, WrapperStore):
        # A wrapper adds behaviour (logging, latency, faults): keep it as given.
        return StoreLocation(store, "", {})
    if isinstance(store, LocalStore):
        return StoreLocation(os.path.realpath(str(store.root)), "", {})
    if isinstance(store, FsspecStore):
        protocol = _fs_protocol(store)
        if protocol == "file":
            return StoreLocation(os.path.realpath(store.path), "", {})
        if protocol != "memory":
            fs = getattr(store.fs, "sync_fs", store.fs)
            # zarr adds "asynchronous" itself when it opens a URL.
            kept = {k: v for k, v in fs.storage_options.items() if k != "asynchronous"}
            return StoreLocation(f"{protocol}://{store.path}", "", kept)
    return StoreLocation(store, "", {})


def check_writable_place(location: StoreLocation, what: str) -> None:
    """Refuse places a rechunk must never write to or clean up.

    The file-system root, the home directory and the current directory (or
    anything holding them), a bucket with no name, and, on the local file
    system, a path whose nearest existing part is a file or not writable.
    """
    if isinstance(location.store, Store) and location.store.read_only:
        raise ValueError(f"{what} {location.describe()} is a read-only store")
    identity = location.identity
    if identity.namespace == "file":
        for name, guarded in (("your home directory", "~"), ("the current directory", ".")):
            guarded_id = Identity("file", _local_parts(os.path.expanduser(guarded)))
            if identity.contains(guarded_id):
                raise ValueError(
                    f"{what} {location.describe()} is or contains {name}; "
                    "give a directory of its own"
                )
        path = Path(str(identity))
        existing = next(p for p in (path, *path.parents) if p.exists())
        if existing.is_file() or (existing != path and not existing.is_dir()):
            raise ValueError(f"{what} {location.describe()}: {existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {location.describe()}: {existing} is not writable")
    elif isinstance(location.store, str) and identity.namespace != "memory" and not identity.parts:
        raise ValueError(f"{what} {location.describe()} names no bucket or directory")


class ClaimError(ValueError):
    """A location is claimed by another run that is still alive."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """One run's exclusive hold on a location, stored as :data:`CLAIM_KEY` in it.

    The claim file is created atomically (exclusive create on local file
    systems, ``set_if_not_exists`` on other stores), so of two runs started
    at once into the same place exactly one gets it. A claim whose process is
    gone (same machine) or whose lease ran out is stale: the next run takes
    it over, so a killed run never blocks a place forever.

    Attributes
    ----------
    location : StoreLocation
    token : str
        Unique to the run; only its holder can release it.
    """

    location: StoreLocation
    token: str

    @property
    def _key(self) -> str:
        return f"{self.location.path}/{CLAIM_KEY}" if self.location.path else CLAIM_KEY

    def release(self, *, strict: bool = False) -> None:
        """Remove the claim if it is still this run's; otherwise leave it.

        With ``strict``, a store error reading the claim is raised (for the
        caller to retry) rather than taken for someone else's claim.
        """
        holder = _read_claim(self.location, strict=strict)
        if holder is not None and holder.get("token") == self.token:
            local = self.location.local_path
            if local is not None:
                (local / CLAIM_KEY).unlink(missing_ok=True)
            else:
                sync(self.location.open_store().delete(self._key))

    def renew(self) -> None:
        """Restart the lease of this claim, if it is still this run's."""
        holder = _read_claim(self.location)
        if holder is None or holder.get("token") != self.token:
            return
        text = json.dumps({**holder, "time": time.time()})
        local = self.location.local_path
        if local is not None:
            (local / CLAIM_KEY).write_text(text)
        else:
            buffer = default_buffer_prototype().buffer.from_bytes(text.encode())
            sync(self.location.open_store().set(self._key, buffer))


def _holder(pid: int | None) -> dict[str, Any]:
    return {
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": pid,
        "time": time.time(),
        "lease": LEASE_SECONDS,
    }


def _read_claim(location: StoreLocation, *, strict: bool = False) -> dict[str, Any] | None:
    local = location.local_path
    try:
        if local is not None:
            text = (local / CLAIM_KEY).read_text()
        else:
            key = f"{location.path}/{CLAIM_KEY}" if location.path else CLAIM_KEY
            buffer = sync(location.open_store().get(key, prototype=default_buffer_prototype()))
            if buffer is None:
                return None
            text = buffer.to_bytes().decode()
        value = json.loads(text)
    except FileNotFoundError:
        return None
    except OSError:
        if strict:
            raise
        return {}  # unreadable: stale unless young (see _is_stale)
    except ValueError:
        return {}  # half-written: stale unless young
    return value if isinstance(value, dict) else {}


def _is_stale(holder: Mapping[str, Any], now: float) -> bool:
    """Whether a claim no longer protects a live run.

    On this machine a claim held by a process is stale once that process is
    gone, or when it is this very process (a notebook re-running a cell).
    Otherwise it is stale when its lease has run out.
    """
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and isinstance(pid, int):
        return pid == os.getpid() or not _pid_alive(pid)
    started = holder.get("time")
    lease = holder.get("lease", LEASE_SECONDS)
    if not isinstance(started, int | float) or not isinstance(lease, int | float):
        return True
    return now > started + lease


def take_claim(location: StoreLocation, what: str, *, process_bound: bool = True) -> Claim:
    """Claim ``location`` for this run, taking over a stale claim.

    Parameters
    ----------
    location : StoreLocation
    what : str
        Named in the error ("the target", "temp_store").
    process_bound : bool
        The claim lives as long as this process (``True``), or for the lease
        (``False``: a plan saved for other processes to run).

    Raises
    ------
    ClaimError
        When another live run holds the location.
    """
    holder = _holder(os.getpid() if process_bound else None)
    text = json.dumps(holder)
    for _ in range(3):
        if _create_exclusive(location, text):
            return Claim(location, holder["token"])
        current = _read_claim(location)
        if current is None:
            continue  # released in between: try again
        if not _is_stale(current, time.time()):
            who = f"process {current.get('pid')} on {current.get('host')}"
            raise ClaimError(
                f"{what} {location.describe()} is being written by another run ({who}); "
                "wait for it to finish, or stop it first"
            )
        _drop_stale(location, current)
    raise ClaimError(f"{what} {location.describe()}: could not claim it; try again")


def _create_exclusive(location: StoreLocation, text: str) -> bool:
    local = location.local_path
    if local is not None:
        local.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(local / CLAIM_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as file:
            file.write(text)
        return True
    store = location.open_store()
    key = f"{location.path}/{CLAIM_KEY}" if location.path else CLAIM_KEY
    buffer = default_buffer_prototype().buffer.from_bytes(text.encode())
    sync(store.set_if_not_exists(key, buffer))
    # Stores without an atomic create: whoever's token is there now holds it.
    current = _read_claim(location)
    return current is not None and current.get("token") == json.loads(text)["token"]


def _drop_stale(location: StoreLocation, stale: Mapping[str, Any]) -> None:
    """Remove a stale claim; of two runs doing this at once, one renames it away."""
    local = location.local_path
    if local is not None:
        aside = local / f"{CLAIM_KEY}.{uuid.uuid4().hex}.stale"
        try:
            os.rename(local / CLAIM_KEY, aside)
        except FileNotFoundError:
            return
        try:
            taken = json.loads(aside.read_text()).get("token")
        except (OSError, ValueError, AttributeError):
            taken = None
        if taken is not None and taken != stale.get("token"):
            # A run took the place over since we looked: give its claim back.
            with contextlib.suppress(FileExistsError):
                os.link(aside, local / CLAIM_KEY)
        aside.unlink()
        return
    current = _read_claim(location)
    if current is not None and current.get("token") == stale.get("token"):
        key = f"{location.path}/{CLAIM_KEY}" if location.path else CLAIM_KEY
        sync(location.open_store().delete(key))


def location_to_dict(location: StoreLocation) -> dict[str, Any]:
    """A location as JSON-ready text; its store must be a path or URL.

    Raises
    ------
    ValueError
        For a store that is a Python object, or a relative local path: a
        saved plan is read from other processes and directories.
    """
    if isinstance(location.store, SessionPlace):
        return {"icechunk": location.store.to_dict(), "path": location.path}
    if not isinstance(location.store, str):
        raise ValueError(
            f"cannot save a reference to {location.describe()} as JSON: its store is a "
            "Python object; use a local path or an fsspec URL"
        )
    if "://" not in location.store and not os.path.isabs(location.store):
        raise ValueError(f"cannot save the relative path {location.store!r} as JSON")
    data: dict[str, Any] = {
        "store": location.store,
        "path": location.path,
        "storage_options": dict(location.storage_options),
    }
    if location.owner is not None:
        data["owner"] = list(location.owner)
    return data


def location_from_dict(data: Mapping[str, Any]) -> StoreLocation:
    """Inverse of :func:`location_to_dict`."""
    if "icechunk" in data:
        return StoreLocation(SessionPlace.from_dict(data["icechunk"]), data["path"])
    owner = data.get("owner")
    return StoreLocation(
        data["store"],
        data["path"],
        dict(data["storage_options"]),
        (str(owner[0]), int(owner[1])) if owner else None,
    )
