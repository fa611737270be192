"""What to rechunk: one :class:`ArrayJob` per array, with its chunks, options and layout.

:func:`plan_jobs` reads nothing but the source's description and writes
nothing: it maps ``target_chunks`` onto the source's arrays, normalises each
request, and asks the planner (:mod:`rechunker_core.algorithm`) for each
array's stage layout.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rechunker_core.algorithm import (
    MAX_LAYOUT_STAGES,
    ExcessiveIOWarning,
    Layout,
    MemoryModel,
    plan_layout,
)
from rechunker_core.chunkio import writing_memory
from rechunker_core.locations import StoreLocation
from rechunker_core.options import ArrayOptions, Options, normalize_chunks
from rechunker_core.places import Destination, suggest_temp_store
from rechunker_core.sources import Source, SourceArray

__all__ = ["ArrayJob", "overwrites", "plan_jobs"]

#: Memory models of the intermediates (None: no temp store) and the target.
_Models = tuple[MemoryModel | None, MemoryModel]

#: An executor's ``engine_memory`` counts in a plan when ``max_mem`` is at least
#: this many times larger (:func:`_with_engine`).
ENGINE_SHARE = 8

#: Warn when leaving out temp_store makes the estimated work this many times larger.
WARN_COST_RATIO = 1.5


@dataclass(frozen=True)
class ArrayJob:
    """One array of a rechunk: the ``array`` to copy, the ``target`` location it
    goes to with its ``target_chunks`` and ``options``, and the planner's
    ``layout`` of stages for it."""

    array: SourceArray
    target: StoreLocation
    target_chunks: tuple[int, ...]
    options: ArrayOptions
    layout: Layout

    @property
    def name(self) -> str:
        """The array's path below the source root (``""`` for a lone array)."""
        return self.array.name


def overwrites(jobs: Sequence[ArrayJob], which: Literal["target", "temp"]) -> bool:
    """Whether every job asks to replace what is in its target (or temp) place."""
    return all(getattr(job.options, which).get("overwrite") for job in jobs)


def _requests(source: Source, target_chunks: Any) -> dict[str, Any]:
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
        # xarray style: every array takes the sizes of the dimensions it has,
        # except index coordinates (1-D, named after their dimension), which
        # xarray keeps whole.
        return {
            a.name: _by_dimension(a, target_chunks) if a.dimension_names else None
            for a in source.arrays
        }
    unknown = [k for k in target_chunks if k not in names and k not in dims]
    raise ValueError(
        f"target_chunks names {unknown}, which are neither arrays of the {source.kind} "
        f"({names}) nor dimensions ({sorted(dims)})"
    )


def _by_dimension(array: SourceArray, target_chunks: Mapping[str, Any]) -> dict[str, Any]:
    """An array's share of an xarray-style ``{dim: size}`` request.

    >>> from types import SimpleNamespace as NS
    >>> _by_dimension(NS(name="air", dimension_names=("time", "lon")), {"lon": 10})
    {'lon': 10}
    >>> _by_dimension(NS(name="lon", dimension_names=("lon",)), {"lon": 10})
    {'lon': -1}
    """
    dims = array.dimension_names or ()
    if dims == (array.name.rsplit("/", 1)[-1],) and dims[0] in target_chunks:
        return {dims[0]: -1}
    return {d: s for d, s in target_chunks.items() if d in dims}


def _write_chunks(chunks: tuple[int, ...], options: ArrayOptions, array: SourceArray) -> Any:
    """The target's write unit: its shards when it is sharded, else its chunks."""
    shards = options.shards
    if shards is None:
        return chunks
    if len(shards) != len(chunks) or any(s % c for s, c in zip(shards, chunks)):
        raise ValueError(
            f"shards {shards} for {array.what} must be multiples of its chunks {chunks}"
        )
    return tuple(min(s, n) for s, n in zip(shards, array.ref.shape))


def _layout(
    array: SourceArray,
    write_chunks: tuple[int, ...],
    max_mem: int,
    models: _Models,
    dest: Destination,
    engine_memory: int = 0,
) -> Layout:
    """The cheapest layout; without a temp store, the cheapest single stage that fits.

    As in rechunker, intermediates are required only when no single stage fits
    max_mem. When the single stage costs much more than the best layout, an
    ExcessiveIOWarning says so, since the user may simply have left out
    temp_store.

    ``engine_memory`` (the executor's, see :func:`_with_engine`) counts in
    every task's peak.
    """
    ref, (temp_memory, target_memory) = array.ref, models

    def plan_within(budget: int, max_stages: int) -> Layout:
        return plan_layout(
            ref.shape,
            ref.dtype.itemsize,
            ref.read_chunks,
            write_chunks,
            budget,
            max_stages=max_stages,
            source_memory=array.memory,
            memory=temp_memory or target_memory,
            target_memory=target_memory,
        )

    def plan(max_stages: int = MAX_LAYOUT_STAGES) -> Layout:
        return _with_engine(plan_within, max_mem, engine_memory, max_stages)

    best = plan()  # raises, naming the least max_mem, if none fits
    if temp_memory is not None or len(best.stages) == 1:
        return best
    try:
        single = plan(max_stages=1)
    except ValueError:
        return best  # the caller asks for a temp store
    if single.seconds > WARN_COST_RATIO * best.seconds:
        warnings.warn(
            ExcessiveIOWarning(
                f"without temp_store, {array.what} is rechunked in one stage that decodes each "
                f"source chunk {single.stages[0].read_amplification:.1f} times; with "
                f"temp_store the planner would use {len(best.stages)} stages and about "
                f"{single.seconds / best.seconds:.1f}x less work; pass "
                f"{suggest_temp_store(dest.target)}, for example"
            ),
            stacklevel=4,
        )
    return single


def _with_engine(
    plan_within: Callable[[int, int], Layout], max_mem: int, engine_memory: int, max_stages: int
) -> Layout:
    """``plan_within(budget, max_stages)``, with the engine's memory added to each task's peak.

    An engine that runs tasks on its own threads holds memory of its own on
    each worker while they run (Beam's runner, Prefect's task runs: see the
    executors' ``engine_memory``). It counts only when ``max_mem`` is at
    least :data:`ENGINE_SHARE` times as large: below, the engine's fixed
    costs, like the interpreter's, are beyond what a task's budget can
    promise. The layout is the one ``max_mem`` gives when it still fits with
    that added, so a plan stays the same on every executor unless its tasks
    come that close to ``max_mem``; else the tasks are planned within what
    is left.
    """
    layout = plan_within(max_mem, max_stages)
    engine = engine_memory if max_mem >= ENGINE_SHARE * engine_memory else 0
    if engine <= 0:
        return layout
    if layout.peak_task_memory + engine > max_mem:
        try:
            layout = plan_within(max_mem - engine, max_stages)
        except ValueError as error:
            raise ValueError(
                f"max_mem={max_mem} leaves {max_mem - engine} bytes for the tasks once the "
                f"executor's engine holds its own {engine} per worker, and {error}; add "
                f"{engine} bytes to what that needs"
            ) from None
    stages = tuple(
        dataclasses.replace(s, peak_task_memory=s.peak_task_memory + engine) for s in layout.stages
    )
    return dataclasses.replace(layout, stages=stages)


def _models(dest: Destination, target: StoreLocation, sharded: bool) -> _Models:
    """Memory models for the intermediates (None without a temp store) and the target."""
    temp = dest.temp
    temp_memory = None if temp is None else writing_memory(_is_local(temp.base), False)
    return temp_memory, writing_memory(_is_local(target), sharded)


def _is_local(location: StoreLocation) -> bool:
    return isinstance(location.store, str) and "://" not in location.store


def plan_jobs(
    source: Source,
    target_chunks: Any,
    max_mem: int,
    dest: Destination,
    options: Options,
    engine_memory: int = 0,
) -> list[ArrayJob]:
    """One job per array ``target_chunks`` selects, each with its layout.

    ``engine_memory``: bytes the executor's engine holds per worker besides
    the tasks (:func:`rechunker_core.executors.engine_memory`), counted in
    every task's peak.

    Raises
    ------
    ValueError
        For a bad chunk request, bad shards, a max_mem no layout fits, a
        layout that needs intermediates without a temp store, or a request
        that selects no array.
    """
    requests = _requests(source, target_chunks)
    jobs = []
    for array in source.arrays:
        if array.name not in requests:
            continue  # a group mapped by array name copies only those named
        what = array.what
        ref, array_options = array.ref, options.of(array.name)
        chunks = normalize_chunks(
            requests[array.name], ref.shape, ref.read_chunks, array.dimension_names, what
        )
        write_chunks = _write_chunks(chunks, array_options, array)
        target = dest.array_target(array.name)
        models = _models(dest, target, array_options.shards is not None)
        layout = _layout(array, write_chunks, max_mem, models, dest, engine_memory)
        if len(layout.stages) > 1 and dest.temp is None:
            raise ValueError(
                f"rechunking {what} from chunks {ref.read_chunks} to {chunks} within max_mem "
                f"needs an intermediate array ({len(layout.stages)} stages); pass temp_store= "
                f"(a path, URL, zarr Store or zarr.Group), such as "
                f"{suggest_temp_store(dest.target)}"
            )
        jobs.append(ArrayJob(array, target, chunks, array_options, layout))
    if not jobs:
        raise ValueError(f"target_chunks {target_chunks!r} selects no array of the {source.kind}")
    return jobs
