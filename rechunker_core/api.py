"""``rechunk()`` and ``Rechunked``: the public entry point.

``rechunk`` validates every input and plans every array before it writes
anything; then it creates the target (and temp) arrays' metadata and asks the
executor for its plan. ``Rechunked.execute()`` writes the data.
"""

from __future__ import annotations

import html
import inspect
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from rechunker_core.algorithm import (
    ExcessiveIOWarning,
    MemoryModel,
    Plan,
    format_bytes,
    plan_rechunk,
)
from rechunker_core.create import (
    ArrayJob,
    Destination,
    TempPlace,
    check_places,
    create_specs,
    rehearse,
)
from rechunker_core.executors import (
    Executor,
    get_executor,
    refuse_in_memory_locations,
    shares_memory,
)
from rechunker_core.locations import StoreLocation, resolve_location
from rechunker_core.sources import Source, open_source
from rechunker_core.spec import StagedCopySpec

__all__ = ["Rechunked", "describe_plan", "parse_bytes", "rechunk"]

#: The intermediate's codec: it is written once and read once, so compressing
#: it costs CPU on both passes to save temp space (docs/algorithm.md measures it).
TEMP_COMPRESSORS: Any = None

#: Warn when leaving out temp_store makes the estimated work this many times larger.
_WARN_COST_RATIO = 1.5

#: target_options that temp_options do not inherit: the planner lays out
#: intermediates, and replacing a target never extends to the temp store.
_NOT_INHERITED = frozenset({"shards", "compressors", "filters", "overwrite"})

_NOT_OPTIONS = {"store", "name", "shape", "chunks", "data", "write_data"}
_ZARR_OPTIONS = frozenset(inspect.signature(zarr.create_array).parameters) - _NOT_OPTIONS


# --------------------------------------------------------------------------
# Parsing user input
# --------------------------------------------------------------------------

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


def normalize_chunks(
    spec: Any,
    shape: tuple[int, ...],
    current: tuple[int, ...],
    dims: tuple[str, ...] | None,
    what: str,
) -> tuple[int, ...]:
    """Turn user chunks (tuple, dict by dimension name, or None) into a full tuple.

    ``-1`` or ``None`` in a tuple: whole dimension / keep the current chunk.
    Sizes past the dimension are clipped. Dimensions missing from a dict keep
    their current chunks.

    >>> normalize_chunks({"y": -1}, (10, 20), (5, 5), ("x", "y"), "a")
    (5, 20)
    >>> normalize_chunks((3, 100), (10, 20), (5, 5), None, "a")
    (3, 20)
    """
    if spec is None:
        values: list[Any] = list(current)
    elif isinstance(spec, Mapping):
        if dims is None:
            raise ValueError(
                f"target_chunks for {what} is a dict {dict(spec)!r}, but {what} has no "
                "dimension names; give a tuple of chunk sizes"
            )
        unknown = [k for k in spec if k not in dims]
        if unknown:
            raise ValueError(
                f"target_chunks for {what} names unknown dimension(s) {unknown}; "
                f"its dimensions are {list(dims)}"
            )
        values = [spec.get(d) for d in dims]
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) != len(shape):
            raise ValueError(
                f"target_chunks {tuple(spec)!r} for {what} has {len(spec)} entries but "
                f"{what} has {len(shape)} dimensions (shape {shape})"
            )
        values = list(spec)
    else:
        raise ValueError(
            f"target_chunks for {what} must be a tuple, a dict by dimension name or None, "
            f"not {spec!r}"
        )
    chunks = []
    for value, size, keep in zip(values, shape, current, strict=True):
        if value is None:
            value = keep
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise ValueError(f"chunk size {value!r} for {what} is not an integer")
        value = int(value)
        if value == -1:
            value = size
        if value < 1:
            raise ValueError(
                f"chunk size {value} for {what} must be a positive integer or -1 "
                "(the whole dimension)"
            )
        chunks.append(max(1, min(value, size)))
    return tuple(chunks)


def check_options(options: Mapping[str, Any], which: str, extra: frozenset[str]) -> dict[str, Any]:
    """Reject options zarr would not accept or that rechunk sets itself."""
    accepted = (
        (_ZARR_OPTIONS | extra) - {"dtype"} if "dtype" not in extra else _ZARR_OPTIONS | extra
    )
    for key in options:
        if key in _NOT_OPTIONS or (key == "dtype" and key not in extra):
            raise ValueError(
                f"{which} may not set {key!r}: rechunk sets it from the source and target_chunks"
            )
        if key not in accepted:
            raise ValueError(
                f"unknown option {key!r} in {which}; accepted: {', '.join(sorted(accepted))}"
            )
    return dict(options)


# --------------------------------------------------------------------------
# The job, validated and planned before anything is written
# --------------------------------------------------------------------------


def _split_options(
    options: Mapping[str, Any] | None, names: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split options into (for every array, per array name)."""
    options = dict(options or {})
    if (
        options
        and names
        and all(k in names for k in options)
        and all(isinstance(v, Mapping) for v in options.values())
    ):
        return {}, {k: dict(v) for k, v in options.items()}
    return options, {}


def _per_array_chunks(source: Source, target_chunks: Any) -> dict[str, Any]:
    """Map each array name to its chunk request; arrays left out are skipped."""
    names = [a.name for a in source.arrays]
    if not source.is_group:
        return {"": target_chunks}
    if target_chunks is None:
        return dict.fromkeys(names)
    if not isinstance(target_chunks, Mapping):
        raise ValueError(
            f"target_chunks for a {source.kind} must be a dict keyed by array name or by "
            f"dimension name, not {target_chunks!r}"
        )
    dims = {d for a in source.arrays for d in (a.dimension_names or ())}
    # A dimension coordinate shares its dimension's name: {"time": 100} means
    # the dimension, since an array's own request is a tuple, dict or None.
    by_dim = all(k in dims and (v is None or isinstance(v, int)) for k, v in target_chunks.items())
    if not by_dim and all(k in names for k in target_chunks):
        if source.copies_unnamed:
            return {name: target_chunks.get(name) for name in names}
        return dict(target_chunks)
    if all(k in dims for k in target_chunks):
        # xarray style: every array takes the sizes of the dimensions it has.
        return {
            a.name: {d: s for d, s in target_chunks.items() if d in a.dimension_names}
            if a.dimension_names
            else None
            for a in source.arrays
        }
    unknown = [k for k in target_chunks if k not in names and k not in dims]
    raise ValueError(
        f"target_chunks names {unknown}, which are neither arrays of the {source.kind} "
        f"({names}) nor dimensions ({sorted(dims)})"
    )


def _plan_jobs(
    source: Source,
    target_chunks: Any,
    max_mem: int,
    target: StoreLocation,
    target_is_group: bool,
    target_options: Mapping[str, Any] | None,
    temp_options: Mapping[str, Any] | None,
    array_name: str | None,
    temp_available: bool = True,
) -> list[ArrayJob]:
    names = [a.name for a in source.arrays]
    shared_target, per_target = _split_options(target_options, names)
    shared_temp, per_temp = _split_options(temp_options, names)
    requests = _per_array_chunks(source, target_chunks)
    jobs = []
    for array in source.arrays:
        if array.name not in requests:
            continue  # a group mapped by array name copies only those named
        what = f"array {array.name!r}" if array.name else "the source array"
        ref = array.ref
        chunks = normalize_chunks(
            requests[array.name], ref.shape, ref.read_chunks, array.dimension_names, what
        )
        t_opts = check_options(
            {**shared_target, **per_target.get(array.name, {})},
            "target_options",
            source.option_keys,
        )
        given_temp = {**shared_temp, **per_temp.get(array.name, {})}
        tmp_opts = check_options(given_temp, "temp_options", source.option_keys)
        # The source applied its encoding keys already (see _encoded_source).
        t_opts = {k: v for k, v in t_opts.items() if k not in source.option_keys}
        tmp_opts = {k: v for k, v in tmp_opts.items() if k not in source.option_keys}
        if "shards" in tmp_opts:
            raise ValueError(
                "temp_options may not set 'shards': the planner lays out intermediates"
            )
        tmp_opts = {
            **{k: v for k, v in t_opts.items() if k not in _NOT_INHERITED},
            "compressors": TEMP_COMPRESSORS,
            **tmp_opts,
        }
        write_chunks = chunks
        if t_opts.get("shards") is not None:
            shards = tuple(t_opts["shards"])
            if len(shards) != len(chunks) or any(s % c for s, c in zip(shards, chunks)):
                raise ValueError(
                    f"shards {shards} for {what} must be multiples of its chunks {chunks}"
                )
            write_chunks = tuple(min(s, n) for s, n in zip(shards, ref.shape))
        geometry = (ref.shape, ref.dtype.itemsize, ref.read_chunks, write_chunks, max_mem)
        models: dict[str, Any] = {
            "source_memory": array.memory,
            "memory": MemoryModel(concurrency=int(zarr.config.get("async.concurrency"))),
        }
        plan = _plan_array(geometry, models, temp_available, what)
        if array.name:
            location = target.child(array.name)
        elif target_is_group:
            if not array_name:
                raise ValueError(
                    "array_name is required when target_store or temp_store is a zarr.Group "
                    "and the source is a single array"
                )
            location = target.child(array_name)
        else:
            location = target
        jobs.append(ArrayJob(array, location, chunks, t_opts, tmp_opts, plan))
    if not jobs:
        raise ValueError(f"target_chunks {target_chunks!r} selects no array of the {source.kind}")
    return jobs


def _plan_array(
    geometry: tuple[Any, ...], models: dict[str, Any], temp_available: bool, what: str
) -> Plan:
    """The cheapest plan; without a temp store, the cheapest single stage that fits.

    As in rechunker, intermediates are required only when no single stage fits
    max_mem. When the single stage costs much more than the best plan, an
    ExcessiveIOWarning says so, since the user may simply have left out
    temp_store.
    """
    best = plan_rechunk(*geometry, **models)  # raises, naming the least max_mem, if none fits
    if temp_available or len(best.stages) == 1:
        return best
    try:
        single = plan_rechunk(*geometry, max_stages=1, **models)
    except ValueError:
        return best  # _check_locations asks for a temp store
    if single.seconds > _WARN_COST_RATIO * best.seconds:
        warnings.warn(
            ExcessiveIOWarning(
                f"without temp_store, {what} is rechunked in one stage that decodes each "
                f"source chunk {single.stages[0].read_amplification:.1f} times; with "
                f"temp_store the planner would use {len(best.stages)} stages and about "
                f"{single.seconds / best.seconds:.1f}x less work"
            ),
            stacklevel=4,
        )
    return single


# --------------------------------------------------------------------------
# The public API
# --------------------------------------------------------------------------


class Rechunked:
    """A prepared rechunk: the target's metadata exists; ``execute()`` writes the data.

    Attributes
    ----------
    plan
        The executor's own delayed object (see the executor's docs).
    spec : tuple of StagedCopySpec
        One per array being rechunked.
    """

    def __init__(
        self,
        executor: Executor[Any],
        plan: Any,
        spec: tuple[StagedCopySpec, ...],
        jobs: Sequence[ArrayJob],
        source: Source,
        target: StoreLocation,
    ) -> None:
        self._executor = executor
        self.plan = plan
        self.spec = spec
        self._jobs = tuple(jobs)
        self._source = source
        self._target = target
        self._executed = False

    def execute(self, **kwargs: Any) -> zarr.Array[Any] | zarr.Group:
        """Run the plan on its executor and return the target.

        Keyword arguments go to the executor's ``execute_plan`` (for example
        ``progress=`` for python and threads).

        A run that failed may be executed again: tasks are idempotent and
        the intermediates stay until a run succeeds.

        Raises
        ------
        ValueError
            When called after a run succeeded: it deleted the intermediates
            and released the target; call :func:`rechunk` again instead.
        """
        if self._executed:
            raise ValueError(
                "this Rechunked has already been executed (its intermediates are gone and "
                "its target is released); call rechunk() again to run another rechunk"
            )
        self._executor.execute_plan(self.plan, **kwargs)
        self._executed = True
        return self.target

    @property
    def target(self) -> zarr.Array[Any] | zarr.Group:
        """The target, opened fresh: a ``zarr.Array``, or a ``zarr.Group`` for groups."""
        store = self._target.open_store()
        if self._source.is_group:
            return zarr.open_group(store=store, path=self._target.path, mode="r+")
        return zarr.open_array(store=store, path=self._jobs[0].target.path, mode="r+")

    def _rows(self) -> list[tuple[str, str, str, str, str]]:
        rows = []
        for job, spec in zip(self._jobs, self.spec):
            name = job.array.name or "array"
            arrays = (
                [("source", spec.source)]
                + [(f"intermediate {i + 1}", ref) for i, ref in enumerate(spec.intermediates)]
                + [("target", spec.target)]
            )
            for role, ref in arrays:
                rows.append((name, role, str(ref.shape), str(ref.chunks), str(ref.dtype)))
        return rows

    def _totals(self) -> str:
        stages = max(len(job.plan.stages) for job in self._jobs)
        tasks = sum(spec.num_tasks for spec in self.spec)
        moved = sum(s.bytes_read + s.bytes_written for job in self._jobs for s in job.plan.stages)
        return f"{stages} stage(s), {tasks} tasks, {format_bytes(moved)} to move"

    def __repr__(self) -> str:
        lines = [f"<Rechunked {self._source.kind} -> {self._target.describe()}: {self._totals()}>"]
        for name, role, shape, chunks, dtype in self._rows():
            lines.append(f"  {name} {role}: shape {shape}, chunks {chunks}, dtype {dtype}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in self._rows()
        )
        return (
            f"<p><b>Rechunked</b> {html.escape(self._source.kind)} &rarr; "
            f"{html.escape(self._target.describe())}: {html.escape(self._totals())}</p>"
            "<table><tr><th>array</th><th>role</th><th>shape</th><th>chunks</th>"
            f"<th>dtype</th></tr>{cells}</table>"
        )

    def summary(self) -> str:
        """The plan of every array: stages, tasks, bytes and peak task memory."""
        parts = [repr(self)]
        for job in self._jobs:
            parts.append(f"{job.array.name or 'array'}: {job.plan.summary()}")
        return "\n".join(parts)


def rechunk(
    source: Any,
    target_chunks: Any,
    max_mem: int | str,
    target_store: Any,
    target_options: Mapping[str, Any] | None = None,
    temp_store: Any = None,
    temp_options: Mapping[str, Any] | None = None,
    executor: str | Executor[Any] = "threads",
    array_name: str | None = None,
    keep_temp: bool = False,
) -> Rechunked:
    """Plan a rechunk of ``source`` into ``target_store`` within ``max_mem`` per task.

    Same parameters as ``rechunker.rechunk``; see docs/api.md for every detail.

    Parameters
    ----------
    source : zarr.Array, zarr.Group, dask.array.Array or xarray.Dataset
    target_chunks : tuple, dict or None
        Tuple of sizes; dict by dimension name; for groups a dict by array
        name or by dimension name. ``-1`` is the whole dimension.
    max_mem : int or str
        Most bytes of array data one task may hold: ``268435456``, ``"256MB"``.
    target_store, temp_store : path, fsspec URL, zarr Store or zarr.Group
        Where the target and the intermediates go. ``temp_store`` is needed
        only when the plan uses intermediates.
    target_options, temp_options : dict, optional
        ``zarr.create_array`` keywords (``compressors``, ``shards``,
        ``overwrite``, ``storage_options``, ...), for every array or keyed by
        array name.
    executor : str or Executor
        ``"threads"`` (default), ``"python"``, ``"dask"``, ``"prefect"``,
        ``"beam"`` or any registered name.
    array_name : str, optional
        The array's name inside a target or temp ``zarr.Group``.
    keep_temp : bool
        Keep the intermediates after a successful run.

    Returns
    -------
    Rechunked

    Raises
    ------
    ValueError, TypeError
        For bad input, before anything is written.
    """
    chosen = get_executor(executor)
    found = _encoded_source(open_source(source), target_options, temp_options)
    memory = parse_bytes(max_mem)
    _check_array_name(array_name)
    storage = _storage_options(dict(target_options or {}))
    target = resolve_location(target_store, storage, what="target_store", writable=True)
    target_is_group = isinstance(target_store, zarr.Group)
    jobs = _plan_jobs(
        found,
        target_chunks,
        memory,
        target,
        target_is_group,
        target_options,
        temp_options,
        array_name,
        temp_available=temp_store is not None,
    )
    temp = _temp_place(found, jobs, temp_store, temp_options, array_name, storage)
    overwrite = all(job.target_options.get("overwrite") for job in jobs)
    dest = Destination(target, target_is_group, overwrite, temp)
    check_places(found, jobs, dest)
    if not shares_memory(chosen):
        locations = [found.location, target, temp.base if temp else None]
        refuse_in_memory_locations(locations, type(chosen).__name__)
    rehearse(found, jobs, dest)
    process_bound = not getattr(chosen, "runs_after_exit", False)
    specs, plan = create_specs(
        found, jobs, dest, chosen.prepare_plan, keep_temp=keep_temp, process_bound=process_bound
    )
    return Rechunked(chosen, plan, specs, jobs, found, target)


def _check_array_name(array_name: Any) -> None:
    """An array name must name an array: not the group itself, nor a way out of it."""
    if array_name is None:
        return
    if not isinstance(array_name, str):
        raise ValueError(f"array_name={array_name!r} must be a string")
    parts = array_name.strip("/").split("/")
    if not array_name.strip("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"array_name={array_name!r} does not name an array inside the group: give a "
            "name such as 'air' or 'sub/air'"
        )


def _temp_place(
    source: Source,
    jobs: list[ArrayJob],
    temp_store: Any,
    temp_options: Mapping[str, Any] | None,
    array_name: str | None,
    target_storage_options: Mapping[str, Any],
) -> TempPlace | None:
    """Where the intermediates go, when some array's plan needs them."""
    needs_temp = [job for job in jobs if len(job.plan.stages) > 1]
    if not needs_temp:
        return None
    if temp_store is None:
        job = needs_temp[0]
        raise ValueError(
            f"rechunking {job.array.name or 'the source array'} from chunks "
            f"{job.array.ref.read_chunks} to {job.target_chunks} within max_mem needs an "
            f"intermediate array ({len(job.plan.stages)} stages); pass temp_store= "
            "(a path, URL, zarr Store or zarr.Group)"
        )
    temp_is_group = isinstance(temp_store, zarr.Group)
    if temp_is_group and not source.is_group and not array_name:
        raise ValueError(
            "array_name is required when temp_store is a zarr.Group and the source is a "
            "single array"
        )
    # temp_options default to target_options: so do the temp store's fsspec options.
    temp_storage = _storage_options(dict(temp_options or {})) or target_storage_options
    base = resolve_location(temp_store, temp_storage, what="temp_store", writable=True)
    # A lone array's intermediates sit directly in the user's group, named after it.
    lone_name = array_name if temp_is_group and not source.is_group and array_name else ""
    overwrite = all(job.temp_options.get("overwrite") for job in jobs)
    return TempPlace(base, temp_is_group, lone_name, overwrite)


def _encoded_source(
    source: Source,
    target_options: Mapping[str, Any] | None,
    temp_options: Mapping[str, Any] | None,
) -> Source:
    """Apply the encoding keys of the options (``source.option_keys``) to the source.

    An intermediate holds the same stored values as the target (every stage
    copies one dtype), so encoding keys in temp_options must agree with the
    target's; they are accepted because code written for rechunker often
    passes one dict as both.
    """
    if not source.option_keys:
        return source
    names = [a.name for a in source.arrays]
    shared_target, per_target = _split_options(target_options, names)
    shared_temp, per_temp = _split_options(temp_options, names)
    encodings = {}
    for name in names:
        target = {**shared_target, **per_target.get(name, {})}
        temp = {**shared_temp, **per_temp.get(name, {})}
        chosen = {k: v for k, v in target.items() if k in source.option_keys}
        for key in source.option_keys & temp.keys():
            if key not in chosen or not _same(chosen[key], temp[key]):
                raise ValueError(
                    f"temp_options sets {key}={temp[key]!r} for {name!r} but target_options "
                    f"{'sets ' + repr(chosen[key]) if key in chosen else 'does not'}: "
                    "intermediates store the target's encoded values, so encoding keys in "
                    "temp_options must match target_options"
                )
        if chosen:
            encodings[name] = chosen
    formats = {
        opts["zarr_format"]
        for opts in [shared_target, *per_target.values()]
        if opts.get("zarr_format") in (2, 3)
    }
    fmt = formats.pop() if len(formats) == 1 else source.zarr_format or 3
    return source.encoded(encodings, fmt)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


def _storage_options(options: Mapping[str, Any]) -> dict[str, Any]:
    value = options.get("storage_options") or {}
    per_array = [v.get("storage_options") for v in options.values() if isinstance(v, Mapping)]
    return dict(value or next((p for p in per_array if p), {}))


def describe_plan(
    source: Any,
    target_chunks: Any,
    max_mem: int | str,
    target_options: Mapping[str, Any] | None = None,
) -> str:
    """Return the plan ``rechunk`` would make, as text, without writing anything."""
    found = _encoded_source(open_source(source), target_options, None)
    jobs = _plan_jobs(
        found,
        target_chunks,
        parse_bytes(max_mem),
        StoreLocation("<target>"),
        False,
        target_options,
        None,
        None,
    )
    lines = [f"{found.kind}, max_mem {format_bytes(parse_bytes(max_mem))}"]
    for job in jobs:
        lines.append(
            f"{job.array.name or 'array'} {job.array.ref.shape} {job.array.ref.dtype}: "
            f"{job.plan.summary()}"
        )
    return "\n".join(lines)
