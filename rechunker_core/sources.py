"""Source adapters: one per kind of source, each turning it into array references.

An adapter describes what to copy, not how: the arrays (as picklable
references the copy function can read), their metadata, and the group
hierarchy around them. :func:`open_source` picks the adapter; adding a source
kind means adding one adapter to :data:`ADAPTERS`.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.abc.store import Store

from rechunker_core.algorithm import MemoryModel
from rechunker_core.blocks import Blocks
from rechunker_core.chunkio import reading_memory
from rechunker_core.geometry import Region
from rechunker_core.locations import StoreLocation, resolve_location
from rechunker_core.spec import ArrayRef
from rechunker_core.storage import ZarrRef

if TYPE_CHECKING:
    import dask.array
    import xarray

__all__ = [
    "ADAPTERS",
    "CF_ENCODING_KEYS",
    "DaskRef",
    "Source",
    "SourceArray",
    "UnsupportedSourceError",
    "open_source",
]


class UnsupportedSourceError(TypeError, ValueError):
    """A source of a type no adapter accepts.

    Both a ``TypeError`` (what it is) and a ``ValueError`` (what rechunker
    raised), so code migrating from rechunker catches it either way.
    """


#: xarray/CF encoding keys that target_options and temp_options accept for
#: xarray sources: they decide how values are stored, so they shape the data
#: the tasks copy rather than the zarr array's layout.
CF_ENCODING_KEYS = frozenset(
    {"dtype", "scale_factor", "add_offset", "_FillValue", "units", "calendar"}
)

#: Encoding an xarray Dataset carries about how its source was *stored*. Stale
#: chunk encodings broke rechunker again and again (its issues #97, #78, #84,
#: #118); the target's layout comes from target_chunks and target_options only.
_STORAGE_ENCODING = frozenset(
    {
        "chunks",
        "preferred_chunks",
        "shards",
        "compressors",
        "compressor",
        "filters",
        "serializer",
        "object_codec",
        "chunk_key_encoding",
        "write_empty_chunks",
        "cache_metadata",
        "order",
        "source",
        "original_shape",
        "zlib",
        "complevel",
        "shuffle",
        "fletcher32",
        "contiguous",
        "chunksizes",
    }
)

#: Block size for data that is not yet chunked (numpy, lazily indexed files):
#: small enough that reading a task region never decodes much more than it.
_UNCHUNKED_BLOCK_BYTES = 4 * 2**20

#: ``encode(encodings, zarr_format)``: the source re-described with per-array
#: encodings (array name -> CF keys) for a target of that zarr format.
Encoder = Callable[[Mapping[str, Mapping[str, Any]], int], "Source"]


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
    label : str
        What views call a lone array (``name`` is ``""``): the last part of
        its path (``air`` for ``data.zarr/air``), a DataArray's name.
    """

    name: str
    ref: ArrayRef
    dimension_names: tuple[str, ...] | None
    attributes: dict[str, Any]
    create_options: dict[str, Any]
    memory: MemoryModel = field(default_factory=MemoryModel)
    label: str = ""

    @property
    def what(self) -> str:
        """The array as messages name it."""
        return f"array {self.name!r}" if self.name else "the source array"

    @property
    def title(self) -> str:
        """The array as views name it: its name, its label, or ``array``."""
        return self.name or self.label or "array"


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
    copies_unnamed : bool
        Whether arrays left out of a target_chunks dict keyed by array name
        are copied with their chunks (xarray Datasets) rather than skipped
        (zarr groups, as in rechunker).
    encoder : callable, optional
        Re-describes the source for given encodings and target zarr format;
        see :meth:`encoded`.
    """

    kind: str
    arrays: tuple[SourceArray, ...]
    groups: dict[str, dict[str, Any]]
    location: StoreLocation | None
    option_keys: frozenset[str] = frozenset()
    copies_unnamed: bool = False
    encoder: Encoder | None = None

    def encoded(self, encodings: Mapping[str, Mapping[str, Any]], zarr_format: int) -> Source:
        """Return the source as a target of ``zarr_format`` stores it.

        Only sources that encode their values (xarray Datasets: CF
        conventions) change; others are returned as they are.

        Parameters
        ----------
        encodings : mapping
            Array name to its :attr:`option_keys` options (``dtype``,
            ``scale_factor``, ...), overriding the source's own encoding.
        zarr_format : int
            The target's zarr format (xarray stores fill values differently
            in formats 2 and 3).
        """
        if self.encoder is None:
            return self
        return self.encoder(encodings, zarr_format)

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
        memory=reading_memory(array),
    )


def _from_zarr_array(source: Any) -> Source:
    location = resolve_location(source.store).child(source.path)
    array = _zarr_array(source, "", location)
    label = "" if location.in_memory else location.describe().rstrip("/").rsplit("/", 1)[-1]
    return Source("zarr array", (replace(array, label=label),), {}, location)


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


def _from_store(source: Any) -> Source:
    """A path, URL or zarr Store holding a zarr array or group, opened read-only.

    URLs needing credentials: pass a store made with them instead, such as
    ``zarr.storage.FsspecStore.from_url(url, storage_options=...)``.
    """
    if isinstance(source, Path):
        source = str(source)
    try:
        node = zarr.open(store=source, mode="r")
    except FileNotFoundError as error:
        raise ValueError(f"no zarr array or group at {source}") from error
    if isinstance(node, zarr.Group):
        return _from_zarr_group(node)
    return _from_zarr_array(node)


# --------------------------------------------------------------------------
# dask arrays
# --------------------------------------------------------------------------


class DaskRef:
    """A dask array as what a stage reads: each read computes only its region.

    ``read`` slices the array and computes the slice with dask's synchronous
    scheduler in the calling task, so a task runs just the part of the graph
    its region needs and nothing is computed on the client. Irregular blocks
    are fine: ``chunks`` (and ``read_chunks``) are the largest block along
    each dimension, what the planner's memory model must assume one read
    decodes.

    Not a dataclass on purpose: ``dask.delayed`` looks inside dataclass
    arguments for collections and would compute the whole array before a
    task that takes a spec as argument even started.

    Parameters
    ----------
    array : dask.array.Array

    Raises
    ------
    ValueError
        If the array's chunk sizes are unknown (NaN).
    """

    __slots__ = ("array", "chunks", "dtype", "read_chunks", "shape")

    def __init__(self, array: dask.array.Array) -> None:
        if any(math.isnan(c) for sizes in array.chunks for c in sizes):
            raise ValueError(
                "the dask array has unknown chunk sizes (NaN), so its regions cannot be "
                "located; call array.compute_chunk_sizes() first"
            )
        self.array = array
        self.shape: tuple[int, ...] = tuple(int(n) for n in array.shape)
        self.dtype: np.dtype[Any] = np.dtype(array.dtype)
        self.chunks: tuple[int, ...] = tuple(
            max(1, *(int(c) for c in sizes)) for sizes in array.chunks
        )
        self.read_chunks: tuple[int, ...] = self.chunks

    def read(self, region: Region) -> np.ndarray[Any, Any]:
        """Compute ``region`` of the array, in this thread."""
        return np.asarray(self.array[region].compute(scheduler="sync"))

    def read_into(self, region: Region, blocks: Blocks) -> None:
        """Compute ``region`` of the array into ``blocks``."""
        blocks.assign(tuple(slice(0, s.stop - s.start) for s in region), self.read(region))

    def __repr__(self) -> str:
        return f"DaskRef(shape={self.shape}, dtype={self.dtype}, blocks<={self.chunks})"


def _dask_memory() -> MemoryModel:
    # dask computes every block a region touches and concatenates them into a
    # new array, which is then copied into the task's blocks: two extra copies.
    concurrency = int(zarr.config.get("async.concurrency"))
    return MemoryModel(concurrency=concurrency, region_copies=2, kept_chunks=0)


def _from_dask(source: dask.array.Array) -> Source:
    ref = DaskRef(source)
    return Source("dask array", (SourceArray("", ref, None, {}, {}, _dask_memory()),), {}, None)


def _as_dask(data: Any) -> dask.array.Array:
    """Wrap in-memory data (an index coordinate, a numpy variable) in small blocks."""
    import dask.array as da

    if isinstance(data, da.Array):
        return data
    data = np.asarray(data)
    wrapped: dask.array.Array = da.from_array(  # type: ignore[no-untyped-call]
        data, chunks=_small_blocks(data.shape, data.dtype)
    )
    return wrapped


def _small_blocks(shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[int, ...]:
    """Blocks of at most about :data:`_UNCHUNKED_BLOCK_BYTES`, for unchunked data.

    >>> _small_blocks((1000, 1000), np.dtype("f8")), _small_blocks((10,), np.dtype("f8"))
    ((724, 724), (10,))
    """
    from dask.array.core import normalize_chunks

    # Object arrays (Python strings) have no itemsize: size blocks as for pointers.
    sized = np.dtype("f8") if dtype.hasobject else dtype
    chunks = normalize_chunks(  # type: ignore[no-untyped-call]
        "auto", shape, limit=_UNCHUNKED_BLOCK_BYTES, dtype=sized
    )
    return tuple(max(1, *sizes) for sizes in chunks)


# --------------------------------------------------------------------------
# xarray Datasets
# --------------------------------------------------------------------------


class _RecordWrites:
    """Stands in for xarray's ``ArrayWriter``: keeps what would be written, writes nothing."""

    def __init__(self) -> None:
        self.arrays: list[tuple[Any, zarr.Array[Any]]] = []

    def add(self, source: Any, target: zarr.Array[Any], region: Any = None) -> None:
        self.arrays.append((source, target))


def _encode_dataset(
    dataset: xarray.Dataset, encodings: Mapping[str, Mapping[str, Any]], zarr_format: int
) -> Source:
    """Describe ``dataset`` as xarray's ``to_zarr`` would store it, without storing it.

    xarray itself CF-encodes the variables and creates each array's metadata
    (attributes, fill value, dtype, dimension names) in a scratch in-memory
    group, handing over the encoded data instead of writing it. The encoded
    data stays lazy, so each task later computes just its region.
    """
    from xarray import Variable, conventions
    from xarray.backends.zarr import ZarrStore

    variables, attributes = conventions.encode_dataset_coordinates(dataset)
    for name, variable in variables.items():
        if not isinstance(name, str):
            raise ValueError(f"variable names must be strings to be stored in zarr, not {name!r}")
        encoding = {k: v for k, v in variable.encoding.items() if k not in _STORAGE_ENCODING}
        encoding.update(encodings.get(name, {}))
        # One chunk per array in the scratch group: nothing is written there,
        # and any dask blocks line up with it.
        encoding["chunks"] = tuple(max(1, n) for n in variable.shape)
        if variable.chunks is None and type(variable) is Variable:
            variable = _chunk_unchunked(variable)
        variable.encoding = encoding
        variables[name] = variable
    scratch = ZarrStore.open_group(
        zarr.storage.MemoryStore(), mode="w", zarr_format=zarr_format, safe_chunks=False
    )
    writes = _RecordWrites()
    with warnings.catch_warnings():
        # zarr warns about some dtypes in format 3; creating the target warns again.
        warnings.simplefilter("ignore")
        scratch.store(variables, attributes, frozenset(), writes)
    arrays = [_encoded_array(data, array, zarr_format) for data, array in writes.arrays]
    return Source(
        "xarray Dataset",
        tuple(sorted(arrays, key=lambda a: a.name)),
        {"": dict(scratch.zarr_group.attrs)},
        None,
        option_keys=CF_ENCODING_KEYS,
        copies_unnamed=True,
        encoder=lambda encodings, fmt: _encode_dataset(dataset, encodings, fmt),
    )


def _encoded_array(data: Any, array: zarr.Array[Any], zarr_format: int) -> SourceArray:
    """One variable: its encoded data (lazy) and the metadata xarray gave its array."""
    attrs = dict(array.attrs)
    attrs.pop("_ARRAY_DIMENSIONS", None)
    lazy = _as_dask(data)
    target_dtype = np.dtype(array.dtype)
    if lazy.dtype != target_dtype:
        lazy = lazy.astype(target_dtype)  # type: ignore[no-untyped-call]
    return SourceArray(
        name=array.basename,
        ref=DaskRef(lazy),
        dimension_names=_zarr_dimension_names(array),
        attributes=attrs,
        create_options={"fill_value": array.fill_value, "zarr_format": zarr_format},
        memory=_dask_memory(),
    )


def _chunk_unchunked(variable: Any) -> Any:
    """Chunk a numpy or lazily indexed (file-backed) variable so reads stay regional.

    Uses the stored chunks xarray reports (``preferred_chunks``) when it has them.
    """
    preferred = variable.encoding.get("preferred_chunks") or {}
    if all(d in preferred for d in variable.dims):
        return variable.chunk({d: preferred[d] for d in variable.dims})
    return variable.chunk(_small_blocks(variable.shape, variable.dtype))


def _from_xarray(source: xarray.Dataset) -> Source:
    return _encode_dataset(source, {}, 3)


def _from_data_array(source: xarray.DataArray) -> Source:
    """A DataArray is rechunked as the one-variable Dataset named after it."""
    if source.name is None:
        raise ValueError(
            "the xarray.DataArray has no name, and its variable in the target group is "
            "named after it; name it first: data_array.rename('air')"
        )
    return _from_xarray(source.to_dataset())


def _instance_of(obj: Any, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)``, without importing ``module``.

    An object cannot be an instance of a class whose module was never imported.
    """
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None)
    return isinstance(cls, type) and isinstance(obj, cls)


#: (test, adapter) pairs, tried in order. Tests never import dask or xarray,
#: so checking a source costs nothing when they are not in use.
ADAPTERS: list[tuple[Callable[[Any], bool], Callable[[Any], Source]]] = [
    (lambda s: isinstance(s, zarr.Array), _from_zarr_array),
    (lambda s: isinstance(s, zarr.Group), _from_zarr_group),
    (lambda s: _instance_of(s, "dask.array", "Array"), _from_dask),
    (lambda s: _instance_of(s, "xarray", "Dataset"), _from_xarray),
    (lambda s: _instance_of(s, "xarray", "DataArray"), _from_data_array),
    (lambda s: isinstance(s, str | Path | Store), _from_store),
]


def open_source(source: Any) -> Source:
    """Describe ``source`` with the first adapter that accepts it.

    Raises
    ------
    UnsupportedSourceError
        If no adapter accepts it (a ``TypeError`` and a ``ValueError``); the
        message lists what is accepted.
    """
    for accepts, adapter in ADAPTERS:
        if accepts(source):
            return adapter(source)
    raise UnsupportedSourceError(
        f"unsupported source of type {type(source).__module__}.{type(source).__qualname__}: "
        "rechunk accepts a zarr.Array, a zarr.Group, a dask.array.Array, an xarray.Dataset "
        "or DataArray, or the path, URL or zarr Store of a zarr array or group"
    )
