"""Source adapters: one per kind of source, each turning it into array references.

An adapter describes what to copy, not how: the arrays (as picklable
references the copy function can read), their metadata, and the group
hierarchy around them. :func:`open_source` picks the adapter; adding a source
kind means adding one adapter to :data:`ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import zarr

from rechunker_core.algorithm import MemoryModel
from rechunker_core.spec import ArrayRef
from rechunker_core.storage import StoreLocation, ZarrRef, resolve_location

__all__ = ["ADAPTERS", "Source", "SourceArray", "open_source"]


@dataclass(frozen=True)
class SourceArray:
    """One array to rechunk and what its target inherits.

    Attributes
    ----------
    name : str
        Path below the source root (``""`` for a lone array).
    ref : ArrayRef
        What tasks read.
    dimension_names : tuple of str, optional
    attributes : dict
        Copied to the target (minus ``_ARRAY_DIMENSIONS``, which the target
        format's own convention carries).
    create_options : dict
        Defaults for the target's ``zarr.create_array`` keywords
        (``fill_value``, ``zarr_format``, ...); user options override them.
    memory : MemoryModel
        What reading this array costs in memory.
    """

    name: str
    ref: ArrayRef
    dimension_names: tuple[str, ...] | None
    attributes: dict[str, Any]
    create_options: dict[str, Any]
    memory: MemoryModel = field(default_factory=MemoryModel)


@dataclass(frozen=True)
class Source:
    """What :func:`open_source` found.

    Attributes
    ----------
    kind : str
        Described in messages ("zarr array", "zarr group", ...).
    arrays : tuple of SourceArray
    groups : dict
        Group path (``""`` is the root) to its attributes; empty for a lone array.
    location : StoreLocation, optional
        Where the source is stored, if it is stored.
    option_keys : frozenset of str
        Extra target/temp option keys this kind accepts (encodings).
    """

    kind: str
    arrays: tuple[SourceArray, ...]
    groups: dict[str, dict[str, Any]]
    location: StoreLocation | None
    option_keys: frozenset[str] = frozenset()

    @property
    def is_group(self) -> bool:
        """Whether the target is a group of arrays rather than one array."""
        return bool(self.groups)

    @property
    def zarr_format(self) -> int | None:
        """The source's zarr format, if it is a zarr source."""
        formats = {a.create_options.get("zarr_format") for a in self.arrays} - {None}
        return formats.pop() if len(formats) == 1 else None


def _zarr_dimension_names(array: zarr.Array[Any]) -> tuple[str, ...] | None:
    names: Any = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    if not isinstance(names, list | tuple) or any(n is None for n in names):
        return None
    return tuple(str(n) for n in names)


def _zarr_array(array: zarr.Array[Any], name: str, location: StoreLocation) -> SourceArray:
    attributes = dict(array.attrs)
    attributes.pop("_ARRAY_DIMENSIONS", None)
    return SourceArray(
        name=name,
        ref=ZarrRef.from_array(array, location),
        dimension_names=_zarr_dimension_names(array),
        attributes=attributes,
        create_options={"fill_value": array.fill_value, "zarr_format": array.metadata.zarr_format},
        memory=MemoryModel(concurrency=int(zarr.config.get("async.concurrency"))),
    )


def _from_zarr_array(source: Any) -> Source:
    location = resolve_location(source.store).child(source.path)
    return Source("zarr array", (_zarr_array(source, "", location),), {}, location)


def _from_zarr_group(source: Any) -> Source:
    root = resolve_location(source.store).child(source.path)
    arrays = []
    groups = {"": dict(source.attrs)}
    for name, member in sorted(source.members(max_depth=None)):
        if isinstance(member, zarr.Group):
            groups[name] = dict(member.attrs)
        else:
            arrays.append(_zarr_array(member, name, root.child(name)))
    return Source("zarr group", tuple(arrays), groups, root)


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".")[0]


#: (test, adapter) pairs, tried in order. Tests look at the type only, so
#: checking a source never imports dask or xarray.
ADAPTERS: list[tuple[Callable[[Any], bool], Callable[[Any], Source]]] = [
    (lambda s: isinstance(s, zarr.Array), _from_zarr_array),
    (lambda s: isinstance(s, zarr.Group), _from_zarr_group),
]


def open_source(source: Any) -> Source:
    """Describe ``source`` with the first adapter that accepts it.

    Raises
    ------
    TypeError
        If no adapter accepts it; the message lists what is accepted.
    """
    for accepts, adapter in ADAPTERS:
        if accepts(source):
            return adapter(source)
    raise TypeError(
        f"unsupported source of type {type(source).__module__}.{type(source).__qualname__}: "
        "rechunk accepts a zarr.Array, a zarr.Group, a dask.array.Array or an xarray.Dataset"
    )


def options_mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy user options into a plain dict (None is empty)."""
    return dict(value or {})
