"""Creating what a rechunk writes: places checked, claimed, created, rolled back.

The safety rules live here, in the order they apply:

1. :func:`check_places` (read only): source, target and temp are pairwise
   disjoint, whatever their spelling; the target is empty unless the user
   asked to overwrite it; no intermediate would land on something that exists.
2. :func:`create_specs`: each place is claimed atomically (two runs never
   write into one place), checked again under the claim, cleared if the user
   asked to overwrite it, and the zarr metadata is created. If anything fails,
   what this call created is removed and its claims released.
3. The specs list exactly what the run created for cleanup, so
   :func:`rechunker_core.copy.finish` deletes nothing else.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import zarr
from zarr.storage import MemoryStore

from rechunker_core.executors import Executor
from rechunker_core.jobs import ArrayJob, overwrites
from rechunker_core.locations import (
    Claim,
    StoreLocation,
    check_writable_place,
    overlap,
    take_claim,
)
from rechunker_core.options import ZarrFormat
from rechunker_core.places import Destination
from rechunker_core.sources import Source, SourceArray
from rechunker_core.spec import CopySpec, StagedCopySpec
from rechunker_core.storage import ZarrRef, clear_cache
from rechunker_core.zarr_internals import sync

__all__ = ["check_places", "create_specs", "rehearse"]

T = TypeVar("T")


def _targets(jobs: Sequence[ArrayJob], dest: Destination) -> list[StoreLocation]:
    """The places the run writes its target into (arrays in a user's group)."""
    return [job.target for job in jobs] if dest.is_group else [dest.target]


def _intermediates(jobs: Sequence[ArrayJob], dest: Destination) -> list[StoreLocation]:
    """Every intermediate array the layouts need."""
    return [
        dest.intermediate(job.name, i)
        for job in jobs
        for i in range(1, len(job.layout.intermediate_chunks) + 1)
    ]


def check_places(source: Source, jobs: Sequence[ArrayJob], dest: Destination) -> None:
    """Refuse, before anything is written, every place a rechunk must not write.

    Raises
    ------
    ValueError
        Naming the places in conflict and what to do instead.
    """
    targets = _targets(jobs, dest)
    # A group target's root gets group metadata listing all it holds: it is written too.
    written = [dest.target] if source.is_group else targets
    places: list[tuple[str, StoreLocation]] = [("the target", place) for place in written]
    if dest.temp is not None:
        places.append(("temp_store", dest.temp.base))
    if source.location is not None:
        places.insert(0, ("the source", source.location))
    for what, place in places[1 if source.location is not None else 0 :]:
        check_writable_place(place, what)
    for i, (what_a, a) in enumerate(places):
        for what_b, b in places[i + 1 :]:
            if what_a == what_b == "the target":
                continue  # arrays of one group target: distinct children
            if overlap(a, b):
                ia, ib = a.identity, b.identity
                relation = (
                    "the same place as" if ia == ib else "inside" if ia.contains(ib) else "holds"
                )
                raise ValueError(
                    f"{what_b} {b.describe()} is {relation} {what_a} {a.describe()}; give "
                    "each of source, target and temp_store a place of its own"
                )
    overwrite = overwrites(jobs, "target")
    for place in targets:
        if not overwrite and _holds_data(place):
            raise ValueError(
                f"the target {place.describe()} already holds data; pass "
                "target_options={'overwrite': True} to replace it"
            )
    for location in _intermediates(jobs, dest):
        _check_intermediate_free(location, _replace_intermediates(jobs, dest))


def _replace_intermediates(jobs: Sequence[ArrayJob], dest: Destination) -> bool:
    """Whether intermediates an earlier run left may be replaced.

    In the scratch directory beside the target they are always ours; in a
    user's temp_store, only when the user asks.
    """
    return (dest.temp is not None and dest.temp.scratch) or overwrites(jobs, "temp")


def _holds_data(location: StoreLocation) -> bool:
    return location.exists() and not location.holds_only_claims()


def _check_intermediate_free(location: StoreLocation, overwrite: bool) -> None:
    """An intermediate may replace only an intermediate of an earlier run."""
    if not _holds_data(location):
        return
    if overwrite and _is_zarr_array(location):
        return
    raise ValueError(
        f"temp_store already holds {location.describe()}, where this run would put an "
        "intermediate array; give an empty temp_store, or pass "
        "temp_options={'overwrite': True} to replace intermediates left by an earlier run"
    )


def _is_zarr_array(location: StoreLocation) -> bool:
    try:
        zarr.open_array(store=location.open_store(read_only=True), path=location.path, mode="r")
    except Exception:  # anything that is not a readable array is the user's
        return False
    return True


def rehearse(source: Source, jobs: Sequence[ArrayJob], dest: Destination, fmt: ZarrFormat) -> None:
    """Create everything once in scratch in-memory stores first.

    zarr itself then rejects bad creation options (shards on a format 2
    target, a codec that does not fit the dtype, ...) before the real stores
    are touched, without a list of rules here that would go stale.
    """
    targets, temps = MemoryStore(), MemoryStore()
    scratch_jobs = [replace(job, target=StoreLocation(targets, job.target.path)) for job in jobs]
    temp = dest.temp
    scratch_temp = replace(temp, base=StoreLocation(temps, temp.base.path)) if temp else None
    scratch = replace(dest, target=StoreLocation(targets, dest.target.path), temp=scratch_temp)
    _create_metadata(source, scratch_jobs, scratch, fmt)


class _Ledger:
    """What one call of :func:`create_specs` claimed and created, to undo it on failure."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.created: list[StoreLocation] = []  # removed whole on failure
        self.new_dirs: list[StoreLocation] = []  # local directories made, deepest first
        self.temp_dirs: list[StoreLocation] = []  # those of them made for intermediates
        self.added_keys: list[StoreLocation] = []  # group metadata zarr added to the temp

    def claim(self, location: StoreLocation, what: str, process_bound: bool) -> Claim:
        """Claim ``location``, noting the directories the claim had to create."""
        missing = _missing_dirs(location)
        claim = take_claim(location, what, process_bound=process_bound)
        self.claims.append(claim)
        self.new_dirs[:0] = missing
        return claim

    def undo(self) -> None:
        for location in self.added_keys:
            location.delete()
        for location in self.created:
            if location.exists():
                location.delete_contents(keep="")
        for claim in self.claims:
            claim.release()
        for location in self.new_dirs:
            location.remove_if_empty()


#: The keys of zarr group metadata, in either format.
_GROUP_KEYS = (".zgroup", ".zattrs", ".zmetadata", "zarr.json")


def _group_keys(location: StoreLocation) -> set[str]:
    """Which group metadata keys exist at ``location`` (asked all at once: on an
    object store each is a request)."""
    store = location.open_store(read_only=True)

    async def ask() -> list[bool]:
        return list(
            await asyncio.gather(*(store.exists(location.child(k).path) for k in _GROUP_KEYS))
        )

    return {key for key, found in zip(_GROUP_KEYS, sync(ask())) if found}


def _missing_dirs(location: StoreLocation) -> list[StoreLocation]:
    """The local directories, deepest first, that creating ``location`` makes."""
    local = location.local_path
    if local is None:
        return []
    missing = [p for p in (local, *local.parents) if not p.exists()]
    return [StoreLocation(str(p)) for p in missing]


def create_specs(
    source: Source,
    jobs: Sequence[ArrayJob],
    dest: Destination,
    fmt: ZarrFormat,
    executor: Executor[T],
    *,
    keep_temp: bool,
) -> tuple[tuple[StagedCopySpec, ...], T]:
    """Claim the target and intermediates, create their metadata, prepare the plan.

    Parameters
    ----------
    fmt : {2, 3}
        The target's zarr format.
    executor : Executor
        Its ``prepare_plan`` makes the plan; if that fails, the creation is
        undone too. The claims end with this process unless the executor's
        plan outlives it (``runs_after_exit``, as for the parts workflow):
        then they are held by lease.
    keep_temp : bool
        Whether the specs leave the intermediates in place.

    Raises
    ------
    ValueError
        When another run holds a place, or a place filled up since
        :func:`check_places`. Nothing this call made is left behind.
    """
    ledger = _Ledger()
    try:
        process_bound = not getattr(executor, "runs_after_exit", False)
        claims = _claim_all(jobs, dest, ledger, process_bound)
        temp_before = _group_keys(dest.temp.base) if dest.temp else set()
        specs = _create_metadata(source, jobs, dest, fmt)
        if (session := dest.target.icechunk) is not None:
            session.seal()  # what tasks in other processes start from: the metadata
        if dest.temp is not None:
            # zarr writes group metadata above a new array: in the temp store, it is ours.
            added = sorted(_group_keys(dest.temp.base) - temp_before)
            ledger.added_keys = [dest.temp.base.child(key) for key in added]
        cleanup = () if keep_temp else (*_intermediates(jobs, dest), *ledger.added_keys)
        remove_empty = () if keep_temp else tuple(ledger.temp_dirs)
        last = replace(specs[-1], cleanup=cleanup, remove_empty=remove_empty, claims=claims)
        specs = (*(replace(spec, claims=claims) for spec in specs[:-1]), last)
        return specs, executor.prepare_plan(specs)
    except BaseException:
        ledger.undo()
        raise


def _claim_all(
    jobs: Sequence[ArrayJob], dest: Destination, ledger: _Ledger, process_bound: bool
) -> tuple[Claim, ...]:
    """Claim every place, check it again under the claim, and clear it if asked."""
    overwrite = overwrites(jobs, "target")
    for place in _targets(jobs, dest):
        fresh = not place.exists()
        # An Icechunk session needs no claim: the run writes into a fork of
        # its own, and the session's commit detects a conflicting writer.
        if place.icechunk is None:
            ledger.claim(place, "the target", process_bound)
        if _holds_data(place):
            if not overwrite:
                raise ValueError(
                    f"the target {place.describe()} already holds data (written by another "
                    "run just now); pass target_options={'overwrite': True} to replace it"
                )
            clear_cache(place)
            place.delete_contents()
        if fresh or overwrite:
            ledger.created.append(place)
    if dest.temp is not None:
        ledger.temp_dirs = _missing_dirs(dest.temp.base)
    for location in _intermediates(jobs, dest):
        ledger.claim(location, "temp_store", process_bound)
        _check_intermediate_free(location, _replace_intermediates(jobs, dest))
        clear_cache(location)
        location.delete_contents()
        ledger.created.append(location)
    return tuple(ledger.claims)


def _create_chain(job: ArrayJob, dest: Destination, fmt: ZarrFormat) -> StagedCopySpec:
    """Create one array's target and intermediates; return its spec."""
    shape, dtype = job.array.ref.shape, job.array.ref.dtype
    kwargs = _create_kwargs(job.array, {**job.options.target, "zarr_format": fmt}, fmt)
    target_ref = _create_array(job.target, shape, dtype, job.target_chunks, kwargs)
    assert target_ref.chunks == job.layout.stages[-1].write_chunks
    refs: list[Any] = [job.array.ref]
    for i, chunks in enumerate(job.layout.intermediate_chunks, start=1):
        temp_kwargs = {**_create_kwargs(job.array, dict(job.options.temp), fmt), "attributes": {}}
        refs.append(
            _create_array(dest.intermediate(job.name, i), shape, dtype, chunks, temp_kwargs)
        )
    refs.append(target_ref)
    return StagedCopySpec(
        tuple(
            CopySpec(refs[i], refs[i + 1], stage.task_chunks)
            for i, stage in enumerate(job.layout.stages)
        )
    )


def _create_metadata(
    source: Source, jobs: Sequence[ArrayJob], dest: Destination, fmt: ZarrFormat
) -> tuple[StagedCopySpec, ...]:
    """Create target groups and arrays, and the intermediates; return the specs."""
    if source.is_group:
        _create_groups(source, dest.target, fmt)
    specs = tuple(_create_chain(job, dest, fmt) for job in jobs)
    store = dest.target.open_store()
    if source.is_group and store.supports_consolidated_metadata:  # Icechunk has no need
        with _quiet_about_claims():
            zarr.consolidate_metadata(store, path=dest.target.path, zarr_format=fmt)
    return specs


@contextmanager
def _quiet_about_claims() -> Iterator[None]:
    """Silence two warnings zarr gives every group target, on purpose.

    zarr warns about the claim file (not a zarr node) while it lists a group,
    and that consolidated metadata is not part of the Zarr format 3
    specification. We write consolidated metadata deliberately: xarray's
    ``open_zarr`` reads a group in one request with it, and warns without it.
    docs/sources.md says so once, instead of every run.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\.rechunker-claim.*")
        warnings.filterwarnings("ignore", message=r"Consolidated metadata is currently not part")
        yield


def _create_kwargs(
    array: SourceArray, options: dict[str, Any], source_format: int
) -> dict[str, Any]:
    """zarr.create_array keywords: source metadata, then the user's options.

    ``overwrite`` is never passed on: zarr would delete the whole place, claim
    included; :func:`_claim_all` clears what the user asked to replace.
    """
    kwargs: dict[str, Any] = {**array.create_options, **options}
    for key in ("storage_options", "overwrite", "dtype"):
        kwargs.pop(key, None)
    zarr_format = kwargs.get("zarr_format") or source_format or 3
    kwargs["zarr_format"] = zarr_format
    attributes = dict(array.attributes)
    attributes.update(kwargs.pop("attributes", None) or {})
    dims = kwargs.pop("dimension_names", None) or array.dimension_names
    if dims is not None:
        if zarr_format == 2:
            attributes["_ARRAY_DIMENSIONS"] = list(dims)
        else:
            kwargs["dimension_names"] = tuple(dims)
    kwargs["attributes"] = attributes
    # In format 2 a null fill_value means "no fill value" (xarray reads it so);
    # dropping it would make zarr store 0.
    if kwargs.get("fill_value") is None and zarr_format != 2:
        kwargs.pop("fill_value", None)
    return kwargs


def _create_array(
    location: StoreLocation,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    kwargs: dict[str, Any],
) -> ZarrRef:
    array = zarr.create_array(
        store=location.open_store(),
        name=location.path or None,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        **kwargs,
    )
    # An array this process opened here before (an overwritten target) is stale.
    clear_cache(location)
    return ZarrRef.from_array(array, location)


def _create_groups(source: Source, target: StoreLocation, fmt: ZarrFormat) -> None:
    store = target.open_store()
    for path, attributes in sorted(source.groups.items()):
        location = target.child(path)
        group = zarr.open_group(store=store, path=location.path, mode="a", zarr_format=fmt)
        group.attrs.update(attributes)
