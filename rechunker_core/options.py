"""User input, checked and resolved once: sizes, chunk requests and array options.

:func:`resolve_options` turns ``target_options`` and ``temp_options`` (one dict
for every array, or one per array name) into an :class:`Options` value: per
array the target's and the intermediates' ``zarr.create_array`` keywords and
the encoding keys, plus the target's zarr format and each store's fsspec
options. Nothing downstream looks at the raw dicts again.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import zarr

__all__ = [
    "DEFAULT_MEMORY_SHARE",
    "TEMP_COMPRESSORS",
    "ArrayOptions",
    "Options",
    "available_memory",
    "default_max_mem",
    "normalize_chunks",
    "parse_bytes",
    "resolve_options",
]

ZarrFormat = Literal[2, 3]

#: The intermediate's codec: it is written once and read once, so compressing
#: it costs CPU on both passes to save temp space (docs/algorithm.md measures it).
TEMP_COMPRESSORS: Any = None

#: target_options that temp_options do not inherit: the planner lays out
#: intermediates, and replacing a target never extends to the temp store.
_NOT_INHERITED = frozenset({"shards", "compressors", "filters", "overwrite"})

#: Keywords of ``zarr.create_array`` that rechunk sets itself.
_NOT_OPTIONS = frozenset({"store", "name", "shape", "chunks", "data", "write_data"})
_ZARR_OPTIONS = frozenset(inspect.signature(zarr.create_array).parameters) - _NOT_OPTIONS

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
}


def parse_bytes(value: int | str) -> int:
    """Parse a memory size: an int of bytes or a string like ``"256MB"``, ``"1GiB"``.

    >>> parse_bytes("256MB"), parse_bytes("1 GiB"), parse_bytes(1000)
    (256000000, 1073741824, 1000)
    """
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"max_mem={value!r} is not a size")
    if isinstance(value, int | np.integer):
        number = int(value)
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        unit = match.group(2).lower() if match else ""
        if not match or unit not in _UNITS:
            raise ValueError(
                f"max_mem={value!r} is not a size: give bytes as an int or a string such as "
                "'256MB', '1.5GB' or '1GiB'"
            )
        number = int(float(match.group(1)) * _UNITS[unit])
    else:
        raise ValueError(f"max_mem={value!r} is not a size: give an int or a string like '256MB'")
    if number <= 0:
        raise ValueError(f"max_mem={value!r} must be positive")
    return number


#: Without ``--max-mem``, the tasks that run at once share this fraction of
#: the memory available (rechunker#12): each may hold ``share * available / workers``.
DEFAULT_MEMORY_SHARE = 0.5


def available_memory() -> int:
    """Bytes of memory available to new work on this machine.

    Linux's ``MemAvailable`` (free memory plus what the page cache would give
    back), else the free pages ``sysconf`` reports.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_max_mem(workers: int, available: int | None = None) -> int:
    """``max_mem`` when none is given: a share of the available memory per worker.

    >>> default_max_mem(4, available=8 * 10**9)
    1000000000
    """
    available = available_memory() if available is None else available
    return max(1, int(DEFAULT_MEMORY_SHARE * available / max(workers, 1)))


def _chunk_values(
    request: Any, shape: tuple[int, ...], dims: tuple[str, ...] | None, what: str
) -> list[Any]:
    """One entry per dimension (``None``: keep the current chunk) from a tuple or dict."""
    if isinstance(request, Mapping):
        if dims is None:
            raise ValueError(
                f"target_chunks for {what} is a dict {dict(request)!r}, but {what} has no "
                "dimension names; give a tuple of chunk sizes"
            )
        unknown = [k for k in request if k not in dims]
        if unknown:
            raise ValueError(
                f"target_chunks for {what} names unknown dimension(s) {unknown}; "
                f"its dimensions are {list(dims)}"
            )
        return [request.get(d) for d in dims]
    if isinstance(request, Sequence) and not isinstance(request, str):
        if len(request) != len(shape):
            raise ValueError(
                f"target_chunks {tuple(request)!r} for {what} has {len(request)} entries but "
                f"{what} has {len(shape)} dimensions (shape {shape})"
            )
        return list(request)
    raise ValueError(
        f"target_chunks for {what} must be a tuple, a dict by dimension name or None, "
        f"not {request!r}"
    )


def normalize_chunks(
    request: Any,
    shape: tuple[int, ...],
    current: tuple[int, ...],
    dims: tuple[str, ...] | None,
    what: str,
) -> tuple[int, ...]:
    """Turn user chunks (tuple, dict by dimension name, or None) into a full tuple.

    ``-1`` is the whole dimension and ``None`` keeps the current chunk. Sizes
    past the dimension are clipped. Dimensions missing from a dict keep their
    current chunks.

    >>> normalize_chunks({"y": -1}, (10, 20), (5, 5), ("x", "y"), "a")
    (5, 20)
    >>> normalize_chunks((3, 100), (10, 20), (5, 5), None, "a")
    (3, 20)
    """
    values = list(current) if request is None else _chunk_values(request, shape, dims, what)
    chunks = []
    for value, size, keep in zip(values, shape, current, strict=True):
        if value is None:
            value = keep
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise ValueError(f"chunk size {value!r} for {what} is not an integer")
        value = size if int(value) == -1 else int(value)
        if value < 1:
            raise ValueError(
                f"chunk size {value} for {what} must be a positive integer or -1 "
                "(the whole dimension)"
            )
        chunks.append(max(1, min(value, size)))
    return tuple(chunks)


#: zarr 2's (and rechunker's) spellings of zarr 3 keywords.
_RENAMED = {
    "compressor": "compressors",
    "filter": "filters",
    "dimension_separator": "chunk_key_encoding",
    "shard_shape": "shards",
}


def _check_keys(options: Mapping[str, Any], which: str, extra: frozenset[str]) -> dict[str, Any]:
    """Reject options zarr would not accept or that rechunk sets itself."""
    accepted = _ZARR_OPTIONS | extra if "dtype" in extra else (_ZARR_OPTIONS | extra) - {"dtype"}
    for key in options:
        if key in _NOT_OPTIONS or (key == "dtype" and key not in extra):
            raise ValueError(
                f"{which} may not set {key!r}: rechunk sets it from the source and target_chunks"
            )
        if key not in accepted:
            hint = f"did you mean {_RENAMED[key]!r}? " if _RENAMED.get(key) in accepted else ""
            raise ValueError(
                f"unknown option {key!r} in {which}; {hint}accepted: {', '.join(sorted(accepted))}"
            )
    return dict(options)


def _split(
    options: Mapping[str, Any] | None, names: Sequence[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split options into (for every array, per array name).

    >>> _split({"a": {"fill_value": 0}}, ["a", "b"])
    ({}, {'a': {'fill_value': 0}})
    >>> _split({"fill_value": 0}, ["a", "b"])
    ({'fill_value': 0}, {})
    """
    options = dict(options or {})
    if (
        options
        and names
        and all(k in names for k in options)
        and all(isinstance(v, Mapping) for v in options.values())
    ):
        return {}, {k: dict(v) for k, v in options.items()}
    return options, {}


@dataclass(frozen=True)
class ArrayOptions:
    """One array's options, checked and resolved.

    Attributes
    ----------
    target : dict
        ``zarr.create_array`` keywords for the target (encoding keys removed).
    temp : dict
        Keywords for its intermediates: the target's, minus what the planner
        decides, with the intermediate codec default, then the user's.
    encoding : dict
        Encoding keys (xarray/CF) the source applies to its values.
    """

    target: Mapping[str, Any] = field(default_factory=dict)
    temp: Mapping[str, Any] = field(default_factory=dict)
    encoding: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The target's shard shape, if it is sharded."""
        shards = self.target.get("shards")
        return None if shards is None else tuple(shards)


@dataclass(frozen=True)
class Options:
    """Every array's options and what holds for all of them.

    Attributes
    ----------
    arrays : dict
        Array name (``""`` for a lone array) to its :class:`ArrayOptions`.
    zarr_format : {2, 3}
        The target's zarr format.
    target_storage, temp_storage : dict
        fsspec options of the target and temp stores.
    """

    arrays: Mapping[str, ArrayOptions]
    zarr_format: ZarrFormat
    target_storage: Mapping[str, Any] = field(default_factory=dict)
    temp_storage: Mapping[str, Any] = field(default_factory=dict)

    def of(self, name: str) -> ArrayOptions:
        """The options of array ``name``."""
        return self.arrays[name]

    def overwrite(self, names: Sequence[str], which: Literal["target", "temp"]) -> bool:
        """Whether every array of ``names`` asks to replace what is in its place."""
        return all(getattr(self.arrays[name], which).get("overwrite") for name in names)

    @property
    def encodings(self) -> dict[str, Mapping[str, Any]]:
        """Array name to its encoding keys, for arrays that set any."""
        return {name: opts.encoding for name, opts in self.arrays.items() if opts.encoding}


def _temp_of(target: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    if "shards" in given:
        raise ValueError("temp_options may not set 'shards': the planner lays out intermediates")
    inherited = {k: v for k, v in target.items() if k not in _NOT_INHERITED}
    return {**inherited, "compressors": TEMP_COMPRESSORS, **given}


def _check_encoding(
    name: str, chosen: Mapping[str, Any], temp: Mapping[str, Any], keys: frozenset[str]
) -> None:
    """Encoding keys in temp_options must agree with target_options.

    An intermediate holds the target's stored values (every stage copies one
    dtype); the keys are accepted because code written for rechunker often
    passes one dict as both.
    """
    for key in keys & temp.keys():
        if key not in chosen or not _same(chosen[key], temp[key]):
            raise ValueError(
                f"temp_options sets {key}={temp[key]!r} for {name!r} but target_options "
                f"{'sets ' + repr(chosen[key]) if key in chosen else 'does not'}: "
                "intermediates store the target's encoded values, so encoding keys in "
                "temp_options must match target_options"
            )


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


def _zarr_format(arrays: Mapping[str, ArrayOptions], source_format: int | None) -> ZarrFormat:
    """The zarr format target_options set, else the source's, else zarr's default (3)."""
    chosen = {
        opts.target["zarr_format"] for opts in arrays.values() if "zarr_format" in opts.target
    }
    if len(chosen) > 1:
        raise ValueError(f"target_options set different zarr_format values {sorted(chosen)}")
    fmt = chosen.pop() if chosen else source_format or 3
    if fmt == 2:
        return 2
    if fmt == 3:
        return 3
    raise ValueError(f"zarr_format={fmt!r} is not supported; use 2 or 3")


def _storage(
    shared: Mapping[str, Any], per_array: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """fsspec options: the shared ones, else the first array's that sets any."""
    found: Mapping[str, Any] = shared.get("storage_options") or next(
        (p["storage_options"] for p in per_array.values() if p.get("storage_options")), {}
    )
    return dict(found)


def resolve_options(
    names: Sequence[str],
    target_options: Mapping[str, Any] | None,
    temp_options: Mapping[str, Any] | None,
    *,
    encoding_keys: frozenset[str] = frozenset(),
    source_format: int | None = None,
) -> Options:
    """Check and resolve the options of every array ``names`` lists.

    Parameters
    ----------
    names : sequence of str
        The source's array names (``[""]`` for a lone array).
    target_options, temp_options : dict, optional
        As given to :func:`rechunker_core.rechunk`.
    encoding_keys : frozenset of str
        Extra keys the source kind accepts (xarray: CF encodings).
    source_format : int, optional
        The source's zarr format, the target's default.

    Raises
    ------
    ValueError
        For a key zarr does not accept or rechunk sets itself, shards in
        temp_options, encoding keys that differ between the two, or an
        unsupported zarr format.
    """
    shared_target, per_target = _split(target_options, names)
    shared_temp, per_temp = _split(temp_options, names)
    arrays = {}
    for name in names:
        target = {**shared_target, **per_target.get(name, {})}
        temp = {**shared_temp, **per_temp.get(name, {})}
        _check_keys(target, "target_options", encoding_keys)
        _check_keys(temp, "temp_options", encoding_keys)
        encoding = {k: v for k, v in target.items() if k in encoding_keys}
        _check_encoding(name, encoding, temp, encoding_keys)
        target = {k: v for k, v in target.items() if k not in encoding_keys}
        temp = {k: v for k, v in temp.items() if k not in encoding_keys}
        arrays[name] = ArrayOptions(target, _temp_of(target, temp), encoding)
    target_storage = _storage(shared_target, per_target)
    # temp_options default to target_options: so do the temp store's fsspec options.
    temp_storage = _storage(shared_temp, per_temp) or target_storage
    return Options(arrays, _zarr_format(arrays, source_format), target_storage, temp_storage)
