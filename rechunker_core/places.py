"""Where a rechunk writes: the target, and where each intermediate goes.

A :class:`Destination` is resolved once from ``target_store``, ``temp_store``
and ``array_name``; every other module asks it for an array's place instead
of passing stores, names and flags around. Resolving reads nothing and
writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import zarr

from rechunker_core.locations import StoreLocation, resolve_location
from rechunker_core.options import Options
from rechunker_core.sessions import SessionPlace, is_icechunk_session

__all__ = [
    "SCRATCH_SUFFIX",
    "Destination",
    "TempPlace",
    "check_array_name",
    "resolve_destination",
    "scratch_beside",
    "suggest_temp_store",
]


@dataclass(frozen=True)
class TempPlace:
    """Where intermediates go.

    Attributes
    ----------
    base : StoreLocation
        The temp store (or the user's temp group).
    lone_name : str
        The name a lone array's intermediates take in a user's group.
    scratch : bool
        Whether the place is the scratch directory chosen beside a local
        target because no ``temp_store`` was given (:func:`scratch_beside`).
    """

    base: StoreLocation
    lone_name: str = ""
    scratch: bool = False

    def intermediate(self, name: str, number: int) -> StoreLocation:
        """The location of intermediate ``number`` (from 1) of the array ``name``.

        >>> TempPlace(StoreLocation("/tmp/t.zarr")).intermediate("sub/a", 2).path
        'sub.a.intermediate2'
        """
        name = name or self.lone_name
        leaf = f"{name.replace('/', '.')}.intermediate{number}" if name else f"intermediate{number}"
        return self.base.child(leaf)


@dataclass(frozen=True)
class Destination:
    """Where a rechunk writes.

    Attributes
    ----------
    target : StoreLocation
        The target array, or the root of the target group.
    is_group : bool
        Whether the user gave the target as a ``zarr.Group`` or an Icechunk
        session (arrays go in it by name).
    array_name : str
        The name of a lone source array inside a target group.
    temp : TempPlace, optional
        Where intermediates go, when the user gave a temp store.
    """

    target: StoreLocation
    is_group: bool = False
    array_name: str = ""
    temp: TempPlace | None = None

    def array_target(self, name: str) -> StoreLocation:
        """The place of the target of the source array ``name`` (``""``: a lone array)."""
        if name:
            return self.target.child(name)
        if self.is_group:
            if not self.array_name:
                raise ValueError(
                    "array_name is required when target_store or temp_store is a zarr.Group "
                    "and the source is a single array"
                )
            return self.target.child(self.array_name)
        return self.target

    def intermediate(self, name: str, number: int) -> StoreLocation:
        """The place of intermediate ``number`` (from 1) of the array ``name``."""
        if self.temp is None:
            raise ValueError(
                f"rechunking {name or 'the source array'} within max_mem needs an intermediate "
                "array; pass temp_store= (a path, URL, zarr Store or zarr.Group)"
            )
        return self.temp.intermediate(name, number)


#: The scratch directory beside a local target: ``out.zarr`` -> ``out.zarr.rechunk-temp``.
SCRATCH_SUFFIX = ".rechunk-temp"


def scratch_beside(target: StoreLocation, target_store: Any) -> TempPlace | None:
    """Where intermediates go when no ``temp_store`` is given: beside a local target.

    The directory is named after the target, so a rerun of the same rechunk
    (``resume``) finds it again; it is on the target's file system, and it
    is created only if the plan needs an intermediate and removed after a
    successful run. Targets elsewhere (object stores, a zarr Store or Group
    the user opened) get none: the user chooses their temp store.

    >>> scratch_beside(StoreLocation("/data/out.zarr"), "/data/out.zarr").base.store
    '/data/out.zarr.rechunk-temp'
    >>> scratch_beside(StoreLocation("s3://bucket/out.zarr"), "s3://bucket/out.zarr") is None
    True
    """
    if not isinstance(target_store, str | os.PathLike) or target.in_memory:
        return None
    local = target.local_path
    if local is None:
        return None
    return TempPlace(StoreLocation(str(local) + SCRATCH_SUFFIX), scratch=True)


def suggest_temp_store(target: StoreLocation) -> str:
    """A ``temp_store`` to propose in messages: the target's place with the scratch suffix.

    >>> suggest_temp_store(StoreLocation("s3://bucket/out.zarr"))
    "temp_store='s3://bucket/out.zarr.rechunk-temp'"
    """
    if target.in_memory:
        return "temp_store=zarr.storage.MemoryStore()"
    return f"temp_store={target.describe().rstrip('/') + SCRATCH_SUFFIX!r}"


def check_array_name(array_name: Any) -> str:
    """An array name must name an array: not the group itself, nor a way out of it.

    >>> check_array_name("sub/air"), check_array_name(None)
    ('sub/air', '')
    """
    if array_name is None:
        return ""
    if not isinstance(array_name, str):
        raise ValueError(f"array_name={array_name!r} must be a string")
    parts = array_name.strip("/").split("/")
    if not array_name.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"array_name={array_name!r} does not name an array inside the group: give a "
            "name such as 'air' or 'sub/air'"
        )
    return array_name


def resolve_destination(
    target_store: Any,
    temp_store: Any,
    options: Options,
    *,
    array_name: Any = None,
    source_is_group: bool = False,
) -> Destination:
    """Resolve the user's stores into a :class:`Destination`, touching neither.

    Raises
    ------
    ValueError
        For a bad ``array_name``, one given with a group source (rechunker
        refuses it too), or a temp group without one for a lone array.
    TypeError
        For a store of an unsupported type.
    """
    name = check_array_name(array_name)
    if is_icechunk_session(temp_store):
        raise ValueError(
            "temp_store is an Icechunk session; intermediates are scratch space written "
            "once and read once, so give an ordinary store (a path or URL), or none"
        )
    if name and source_is_group:
        raise ValueError(
            f"array_name={array_name!r} names a lone array inside a target group, but the "
            "source is a group of arrays, which keep their own names; leave array_name out"
        )
    temp = None
    if temp_store is not None:
        temp_is_group = isinstance(temp_store, zarr.Group)
        if temp_is_group and not source_is_group and not name:
            raise ValueError(
                "array_name is required when temp_store is a zarr.Group and the source is a "
                "single array"
            )
        base = resolve_location(temp_store, options.temp_storage, what="temp_store", writable=True)
        # A lone array's intermediates sit directly in the user's group, named after it.
        temp = TempPlace(base, name if temp_is_group and not source_is_group else "")
    if is_icechunk_session(target_store):
        return Destination(_session_target(target_store, temp), True, name, temp)
    target = resolve_location(
        target_store, options.target_storage, what="target_store", writable=True
    )
    if temp is None:
        temp = scratch_beside(target, target_store)
    return Destination(target, isinstance(target_store, zarr.Group), name, temp)


def _session_target(session: Any, temp: TempPlace | None) -> StoreLocation:
    """An Icechunk session as the target; its workers' changes go beside the intermediates.

    Intermediates stay out of the repository: they would be versioned data
    no reader of the branch should see, written and deleted in one run.
    """
    if temp is None or not isinstance(temp.base.store, str):
        return StoreLocation(SessionPlace(session))
    root = temp.base.store.rstrip("/") + (f"/{temp.base.path}" if temp.base.path else "")
    return StoreLocation(SessionPlace(session, root, temp.base.storage_options))
