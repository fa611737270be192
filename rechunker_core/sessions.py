"""Icechunk sessions as targets: written by forks, merged back, committed once.

A rechunk into a writable ``icechunk.Session`` (the user's *session*) must
show readers of its branch either the state before or the whole target. So
nothing is written into the session itself until the run is complete:

1. :func:`rechunker_core.rechunk` creates the target's metadata in one
   fork of the session, *the run's fork* (:attr:`SessionPlace.fork`).
   :meth:`SessionPlace.seal` then keeps a pickle of it, *the base*: what every
   copy in another process starts from.
2. Each batch of copy tasks (:func:`batch_writes`) writes, in the process
   that holds the run's fork, straight into it; anywhere else into a fresh
   fork made from the base, which it leaves, once every task of the batch is
   written, as a file in the *changes* directory (ordinary storage every
   worker reaches).
3. The driver, once the plan has run (:meth:`SessionPlace.complete`), merges
   those files into the run's fork, checks that the batches cover every task
   of every stage writing into the session, merges the run's fork into the
   session, and commits if asked. A failed, killed or incomplete run merges
   nothing: the session, and so the branch, stay as they were.

This module never imports icechunk at import time: an object is recognised by
the module its class comes from.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pickle
import tempfile
import threading
import urllib.parse
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import fsspec
from zarr.abc.store import Store

__all__ = ["SessionPlace", "TaskRange", "batch_writes", "is_icechunk_session"]

#: What a batch wrote: the target array's path in the repository and its tasks.
TaskRange = tuple[str, int, int]


def _from_icechunk(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "icechunk"


def is_icechunk_session(value: Any) -> bool:
    """Whether ``value`` is an ``icechunk.Session`` or the store of one.

    >>> is_icechunk_session("/data/t.zarr")
    False
    """
    return _from_icechunk(value) and (hasattr(value, "fork") or hasattr(value, "session"))


def _icechunk_major() -> int:
    import icechunk

    return int(str(icechunk.__version__).split(".")[0])


#: Run's forks of this process, by token: a copy unpickled in the process
#: that holds the run's fork is that very place, so its writes need no file.
_LIVE: weakref.WeakValueDictionary[str, SessionPlace] = weakref.WeakValueDictionary()

#: The store of the fork the current batch writes into, in this thread: (token, store).
_BATCH_FORK: ContextVar[tuple[str, Store] | None] = ContextVar("_BATCH_FORK", default=None)


@dataclass(frozen=True)
class _Copy:
    """What a copy of a :class:`SessionPlace` in another process holds."""

    token: str
    base: bytes
    changes: str
    storage_options: Mapping[str, Any]


class SessionPlace:
    """An Icechunk session as the place a rechunk writes its target.

    Parameters
    ----------
    session : icechunk.Session or icechunk.IcechunkStore
        Writable; or its store.
    changes_root : str, optional
        A local path or fsspec URL below which batches run in other processes
        leave their forks (in a directory of this run's own); by default a new
        local temporary directory. Workers on other machines need storage they
        share with this process here: the temp store.
    storage_options : dict, optional
        fsspec options for ``changes_root``.

    Raises
    ------
    ValueError
        For a read-only session, or, with icechunk 1.x, a session with
        uncommitted changes (1.x cannot fork one).
    """

    def __init__(
        self,
        session: Any,
        changes_root: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not hasattr(session, "fork"):
            session = session.session
        if session.read_only:
            raise ValueError(
                "target_store is a read-only Icechunk session; pass a writable one: "
                "repo.writable_session('main')"
            )
        if session.has_uncommitted_changes and _icechunk_major() < 2:
            raise ValueError(
                "target_store is an Icechunk session with uncommitted changes, and icechunk "
                "1.x cannot fork such a session to write from several tasks; commit them "
                "first (session.commit(...)), or use icechunk>=2 (Python >= 3.12)"
            )
        self.session = session
        self.token = uuid.uuid4().hex
        self._changes = (
            f"{changes_root.rstrip('/')}/.rechunker-changes-{self.token}" if changes_root else None
        )
        self.storage_options = dict(storage_options or {})
        self._fork: Any = None
        self._stores: dict[str, Store] = {}
        self._base: bytes | None = None
        self._copy: _Copy | None = None
        self._pid = os.getpid()
        self._done: list[TaskRange] = []
        self._lock = threading.Lock()
        self.completed = False

    @classmethod
    def _of_copy(cls, copy: _Copy) -> SessionPlace:
        place = cls.__new__(cls)
        place.__dict__.update(
            session=None,
            token=copy.token,
            _changes=copy.changes,
            storage_options=dict(copy.storage_options),
            _fork=None,
            _stores={},
            _base=copy.base,
            _copy=copy,
            _pid=os.getpid(),
            _done=[],
            _lock=threading.Lock(),
            completed=False,
        )
        return place

    @property
    def in_driver(self) -> bool:
        """Whether this process holds the run's fork, and so can merge and commit the run."""
        return self._here

    @property
    def _here(self) -> bool:
        """Whether this is the driver's place, in the driver's process (not a fork of it)."""
        return self._copy is None and self._pid == os.getpid()

    def __str__(self) -> str:
        branch = self.session.branch if self.session is not None else "?"
        return f"<icechunk session on branch {branch!r}>"

    # -- the run's fork, and what copies start from ------------------------

    @property
    def fork(self) -> Any:
        """The run's fork of the session, made on first use (in the driver only)."""
        if not self._here:
            raise ValueError(f"{self}: the run's fork lives in the process that made it")
        if self._fork is None:
            self._fork = self.session.fork()
        return self._fork

    @property
    def changes(self) -> str:
        """Where batches run in other processes leave their forks (made when first asked)."""
        if self._changes is None:
            self._changes = tempfile.mkdtemp(prefix="rechunker-core-changes-")
        return self._changes

    def seal(self) -> None:
        """Keep what copies start from: the run's fork with the target's metadata.

        Called once the metadata exists, before the plan is made; from then
        on this process's copies are this very place.
        """
        self._base = pickle.dumps(self.fork)
        _LIVE[self.token] = self

    def _sealed_copy(self) -> _Copy:
        if self._copy is not None:
            return self._copy
        if self._base is None:
            raise ValueError(f"{self}: its plan is not made yet, so it cannot travel")
        return _Copy(self.token, self._base, self.changes, self.storage_options)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._sealed_copy(),))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for plans saved as JSON)."""
        copy = self._sealed_copy()
        return {
            "token": copy.token,
            "base": base64.b64encode(copy.base).decode("ascii"),
            "changes": copy.changes,
            "storage_options": dict(copy.storage_options),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> SessionPlace:
        """Inverse of :meth:`to_dict`."""
        copy = _Copy(
            data["token"],
            base64.b64decode(data["base"]),
            data["changes"],
            dict(data["storage_options"]),
        )
        return _restore(copy)

    # -- the zarr store tasks read and write ---------------------------------

    def zarr_store(self, read_only: bool = False) -> Store:
        """The zarr store to use now: the current batch's fork, the run's fork,
        or, once the run is complete, the session's own store.

        Reads before anything is written (the checks of :func:`rechunk`) go
        to the session itself: forking waits for the first write, so a rechunk
        refused by its checks leaves the session as it was.
        """
        current = _BATCH_FORK.get()
        if current is not None and current[0] == self.token:
            return current[1]
        name = self._state()
        if read_only and name == "fork" and self._fork is None:
            name = "session"
        with self._lock:
            if name not in self._stores:
                # One store object per state: zarr's arrays are cached by it,
                # and each ``.store`` of a session is a new one.
                self._stores[name] = self._make_store(name)
            return self._stores[name]

    def _state(self) -> str:
        if not self._here:  # outside a batch, a copy only reads what the run started from
            return "base"
        return "session" if self.completed else "fork"

    def _make_store(self, name: str) -> Store:
        if name == "base":
            store: Store = pickle.loads(self._sealed_copy().base).store
        elif name == "session":
            store = self.session.store
        else:
            store = self.fork.store
        return store

    def cache_key(self) -> tuple[str, ...]:
        """A name for the open-array cache: one per store :meth:`zarr_store` gives."""
        current = _BATCH_FORK.get()
        if current is not None and current[0] == self.token:
            return ("icechunk", self.token, f"batch-{id(current[1])}")
        return ("icechunk", self.token, self._state())

    @contextlib.contextmanager
    def batch(self, tasks: TaskRange) -> Iterator[None]:
        """Write one batch: into the run's fork here, else into a fork left as a file."""
        if self._here:
            yield
            with self._lock:
                self._done.append(tasks)
            return
        fork = pickle.loads(self._sealed_copy().base)
        reset = _BATCH_FORK.set((self.token, fork.store))
        try:
            yield
        finally:
            _BATCH_FORK.reset(reset)
        self._leave(tasks, pickle.dumps(fork))

    def _leave(self, tasks: TaskRange, fork: bytes) -> None:
        """Save a batch's fork; the name says which tasks it holds, so a rerun replaces it."""
        path, start, stop = tasks
        name = f"{urllib.parse.quote(path, safe='') or '_root'}.{start}-{stop}.fork"
        fs, root = fsspec.core.url_to_fs(self.changes, **self.storage_options)
        fs.makedirs(root, exist_ok=True)
        # Written aside, then renamed: the driver never reads half a fork.
        partial = f"{root}/.{name}.{uuid.uuid4().hex}"
        with fs.open(partial, "wb") as file:
            file.write(pickle.dumps((tasks, fork)))
        fs.mv(partial, f"{root}/{name}")

    # -- the end of the run, in the driver ---------------------------------

    def complete(self, expected: Mapping[str, int], commit: str | None) -> str | None:
        """Merge the run into the session once every task has written; commit if asked.

        Parameters
        ----------
        expected : dict
            Tasks of each target array (by path) that write into the session.
        commit : str, optional
            The commit message; without it the changes stay in the session.

        Returns
        -------
        str or None
            The new snapshot's id, when committed.

        Raises
        ------
        RuntimeError
            When some tasks left no changes (run in another process whose
            changes directory this process cannot see, say): nothing is merged.
        """
        forks, done = self._collect()
        missing = _missing_tasks(expected, [*self._done, *done])
        if missing:
            raise RuntimeError(
                f"the rechunk into {self} is incomplete: no task wrote {missing}, so nothing "
                f"was merged into the session; workers in other processes leave their "
                f"changes in {self.changes}, which must be storage this process reads "
                "(pass a shared temp_store)"
            )
        if forks:
            self.fork.merge(*forks)
        self.session.merge(self.fork)
        self.completed = True
        snapshot = self.session.commit(commit) if commit is not None else None
        self._forget_changes()
        return str(snapshot) if snapshot is not None else None

    def _collect(self) -> tuple[list[Any], list[TaskRange]]:
        if self._changes is None:
            return [], []
        fs, root = fsspec.core.url_to_fs(self._changes, **self.storage_options)
        if not fs.exists(root):
            return [], []
        forks, done = [], []
        for name in sorted(fs.ls(root, detail=False)):
            if not str(name).endswith(".fork") or os.path.basename(str(name)).startswith("."):
                continue
            with fs.open(name, "rb") as file:
                tasks, fork = pickle.loads(file.read())
            forks.append(pickle.loads(fork))
            done.append(tuple(tasks))
        return forks, done

    def _forget_changes(self) -> None:
        if self._changes is None:
            return
        fs, root = fsspec.core.url_to_fs(self._changes, **self.storage_options)
        if fs.exists(root):
            fs.rm(root, recursive=True)


def _restore(copy: _Copy) -> SessionPlace:
    """Unpickle a place: the run's own in its process, else a copy that writes forks."""
    live = _LIVE.get(copy.token)
    return live if live is not None and live._here else SessionPlace._of_copy(copy)


def _missing_tasks(expected: Mapping[str, int], done: Iterable[TaskRange]) -> dict[str, int]:
    """How many tasks of each array no batch reported (batches may overlap or repeat).

    >>> _missing_tasks({"a": 4, "b": 2}, [("a", 0, 2), ("a", 1, 3), ("b", 0, 2)])
    {'a': 1}
    """
    covered: dict[str, set[int]] = {}
    for path, start, stop in done:
        covered.setdefault(path, set()).update(range(start, stop))
    missing = {
        path: count - len(covered.get(path, set()) & set(range(count)))
        for path, count in expected.items()
    }
    return {path: count for path, count in missing.items() if count}


def batch_writes(target: Any, path: str, tasks: range) -> contextlib.AbstractContextManager[None]:
    """The context a batch of copy tasks writing into ``target`` runs in.

    For a :class:`SessionPlace` see :meth:`SessionPlace.batch`; for any other
    store, nothing.
    """
    if isinstance(target, SessionPlace):
        return target.batch((path, tasks.start, tasks.stop))
    return contextlib.nullcontext()
