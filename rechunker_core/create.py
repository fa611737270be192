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
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import zarr
from zarr.storage import MemoryStore

from rechunker_core.executors import Executor
from rechunker_core.jobs import ArrayJob, overwrites
from rechunker_core.journal import (
    INCOMPLETE_KEY,
    JOURNAL_KEY,
    JournalRef,
    read_marker,
    remove_marker,
    write_marker,
)
from rechunker_core.locations import (
    CLAIM_KEY,
    Claim,
    StoreLocation,
    check_writable_place,
    overlap,
    take_claim,
)
from rechunker_core.options import ZarrFormat
from rechunker_core.places import Destination
from rechunker_core.resume import (
    check_marker,
    fingerprint,
    marker_document,
    metadata_differences,
    settle,
)
from rechunker_core.retry import RetryPolicy
from rechunker_core.sources import Source, SourceArray
from rechunker_core.spec import CopySpec, StagedCopySpec
from rechunker_core.storage import ZarrRef, clear_cache
from rechunker_core.zarr_internals import sync

__all__ = ["check_places", "check_resume", "create_specs", "prepared_earlier", "rehearse"]

T = TypeVar("T")


def _targets(jobs: Sequence[ArrayJob], dest: Destination) -> list[StoreLocation]:
    """The places the run writes its target into (arrays in a user's group)."""
    return [job.target for job in jobs] if dest.is_group else [dest.target]


def _job_intermediates(job: ArrayJob, dest: Destination) -> list[StoreLocation]:
    """The intermediate arrays of one job's layout."""
    return [
        dest.intermediate(job.name, i) for i in range(1, len(job.layout.intermediate_chunks) + 1)
    ]


def _intermediates(jobs: Sequence[ArrayJob], dest: Destination) -> list[StoreLocation]:
    """Every intermediate array the layouts need."""
    return [location for job in jobs for location in _job_intermediates(job, dest)]


def _place_of(job: ArrayJob, dest: Destination) -> StoreLocation:
    """The target place (one of :func:`_targets`) that holds ``job``'s target."""
    return job.target if dest.is_group else dest.target


def _resumed(jobs: Sequence[ArrayJob], dest: Destination) -> list[bool]:
    """Per job: whether an interrupted run left its target place incomplete."""
    marked = {str(p.identity): read_marker(p) is not None for p in _targets(jobs, dest)}
    return [marked[str(_place_of(job, dest).identity)] for job in jobs]


def check_places(
    source: Source, jobs: Sequence[ArrayJob], dest: Destination, *, resume: bool = False
) -> None:
    """Refuse, before anything is written, every place a rechunk must not write.

    With ``resume``, a target an interrupted run left incomplete (and its
    intermediates) may hold data; :func:`check_resume` then compares it with the plan.

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
    _check_free(jobs, dest, resume)


def _check_free(jobs: Sequence[ArrayJob], dest: Destination, resume: bool) -> None:
    """Targets and intermediates hold nothing, unless asked to replace or resume it."""
    overwrite = overwrites(jobs, "target")
    if resume and overwrite:
        raise ValueError(
            "resume=True continues an interrupted run, and target_options={'overwrite': True} "
            "replaces it: pass one of them"
        )
    for place in _targets(jobs, dest):
        if not overwrite and _holds_data(place):
            incomplete = read_marker(place) is not None
            if resume and incomplete:
                continue
            if resume:
                raise ValueError(
                    f"resume=True, but the target {place.describe()} holds data that no "
                    "interrupted rechunk left (it is complete, or not a rechunk's): nothing to "
                    "resume; pass target_options={'overwrite': True} to replace it"
                )
            hint = " left incomplete by an interrupted rechunk; pass resume=True to finish it, or"
            raise ValueError(
                f"the target {place.describe()} already holds data{hint if incomplete else ';'} "
                "pass target_options={'overwrite': True} to replace it"
            )
    resumed = _resumed(jobs, dest) if resume else [False] * len(jobs)
    replaceable = _replace_intermediates(jobs, dest)
    for job, resuming in zip(jobs, resumed):
        for location in _job_intermediates(job, dest):
            if resuming and (not _holds_data(location) or _is_zarr_array(location)):
                continue  # the interrupted run's: check_resume compares it with the plan
            _check_intermediate_free(location, replaceable)


def _replace_intermediates(jobs: Sequence[ArrayJob], dest: Destination) -> bool:
    """Whether intermediates an earlier run left may be replaced.

    In the scratch directory beside the target they are always ours; in a
    user's temp_store, only when the user asks.
    """
    return (dest.temp is not None and dest.temp.scratch) or overwrites(jobs, "temp")


def check_resume(
    source: Source, jobs: Sequence[ArrayJob], dest: Destination, fmt: ZarrFormat
) -> None:
    """For ``resume=True``, read only: what an interrupted run left must fit this plan.

    Each incomplete target must hold the marker of a run of this same job
    (:func:`rechunker_core.resume.check_marker`), and every array that run
    created must have the metadata this run would create.

    Raises
    ------
    ValueError
        Naming the place and what differs, before anything is written.
    """
    plan = fingerprint(source, jobs)
    for place in _targets(jobs, dest):
        if read_marker(place) is not None:
            check_marker(place, plan, dest)
    for job, resuming in zip(jobs, _resumed(jobs, dest)):
        if resuming:
            for planned in _planned_arrays(job, dest, fmt):
                if _is_zarr_array(planned.location):
                    planned.check_matches()


#: The keys of zarr group metadata, in either format.
_GROUP_KEYS = (".zgroup", ".zattrs", ".zmetadata", "zarr.json")


#: What a rechunk() that was never executed leaves in a place: metadata, claim, marker.
_UNSTARTED_KEYS = frozenset({*_GROUP_KEYS, ".zarray", CLAIM_KEY, INCOMPLETE_KEY})


def prepared_earlier(source: Source, jobs: Sequence[ArrayJob], dest: Destination) -> bool:
    """Whether an identical ``rechunk()`` created every place of this run, and none ran.

    A notebook cell run twice calls ``rechunk()`` again before the first plan
    was executed: its target holds the marker of this same job and nothing
    but zarr metadata, and so do its intermediates. Such places are taken over
    as a resume with nothing done yet. A run still holding them (another live
    process) is refused by its claim, as always.
    """
    if overwrites(jobs, "target"):
        return False
    places = _targets(jobs, dest)
    marked = [place for place in places if read_marker(place) is not None]
    if not marked:
        return False
    plan = fingerprint(source, jobs)
    try:
        for place in marked:
            check_marker(place, plan, dest)
    except ValueError:
        return False
    return all(
        place.holds_only(_UNSTARTED_KEYS) for place in [*places, *_intermediates(jobs, dest)]
    )


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
    _create_metadata(
        source, scratch_jobs, scratch, _Chains(fmt, "", RetryPolicy()), [False] * len(jobs)
    )


class _Ledger:
    """What one call of :func:`create_specs` claimed and created, to undo it on failure."""

    def __init__(self) -> None:
        self.claims: list[Claim] = []
        self.created: list[StoreLocation] = []  # removed whole on failure
        self.new_dirs: list[StoreLocation] = []  # local directories made, deepest first
        self.temp_dirs: list[StoreLocation] = []  # those of them made for intermediates
        self.added_keys: list[StoreLocation] = []  # group metadata zarr added to the temp
        self.markers: list[StoreLocation] = []  # incomplete markers this call wrote
        self.tokens: dict[str, str] = {}  # target place -> its job token (journals carry it)

    def claim(self, location: StoreLocation, what: str, process_bound: bool) -> Claim:
        """Claim ``location``, noting the directories the claim had to create."""
        missing = _missing_dirs(location)
        claim = take_claim(location, what, process_bound=process_bound)
        self.claims.append(claim)
        self.new_dirs[:0] = missing
        return claim

    def undo(self) -> None:
        for location in self.markers:
            remove_marker(location)
        for location in self.added_keys:
            location.delete()
        for location in self.created:
            if location.exists():
                location.delete_contents(keep="")
        for claim in self.claims:
            claim.release()
        for location in self.new_dirs:
            location.remove_if_empty()


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
    resume: bool = False,
    retry: RetryPolicy | None = None,
) -> tuple[tuple[StagedCopySpec, ...], T]:
    """Claim the target and intermediates, create their metadata, prepare the plan.

    A new target gets the incomplete marker right after its claim.

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
    resume : bool
        Continue what an interrupted run of this job left (checked by
        :func:`check_resume`): its arrays are kept, not created again.
    retry : RetryPolicy, optional
        How every chunk operation of the plan is retried.

    Raises
    ------
    ValueError
        When another run holds a place, or a place filled up since
        :func:`check_places`. Nothing this call made is left behind.
    """
    ledger = _Ledger()
    try:
        process_bound = not getattr(executor, "runs_after_exit", False)
        plan = fingerprint(source, jobs)
        claims, resumed = _claim_all(jobs, dest, ledger, process_bound, resume, plan)
        temp_before = _group_keys(dest.temp.base) if dest.temp else set()
        chains = _Chains(fmt, uuid.uuid4().hex, retry or RetryPolicy(), ledger.tokens, keep_temp)
        specs = _create_metadata(source, jobs, dest, chains, resumed)
        if dest.temp is not None:
            # zarr writes group metadata above a new array: in the temp store, it is ours.
            added = sorted(_group_keys(dest.temp.base) - temp_before)
            ledger.added_keys = [dest.temp.base.child(key) for key in added]
        kept, dirs = _write_markers(jobs, dest, ledger, plan, resumed)
        cleanup = () if keep_temp else (*_intermediates(jobs, dest), *kept)
        specs = _with_bookkeeping(specs, jobs, dest, claims, cleanup, () if keep_temp else dirs)
        for spec in (spec for spec, resuming in zip(specs, resumed) if resuming):
            settle(spec)
        return specs, executor.prepare_plan(specs)
    except BaseException:
        ledger.undo()
        raise


def _with_bookkeeping(
    specs: Sequence[StagedCopySpec],
    jobs: Sequence[ArrayJob],
    dest: Destination,
    claims: tuple[Claim, ...],
    cleanup: tuple[StoreLocation, ...],
    remove_empty: tuple[StoreLocation, ...],
) -> tuple[StagedCopySpec, ...]:
    """The specs with what their last step releases, marks complete and deletes."""
    marked = tuple(
        replace(spec, claims=claims, incomplete=_marked(_place_of(job, dest)))
        for spec, job in zip(specs, jobs)
    )
    return (*marked[:-1], replace(marked[-1], cleanup=cleanup, remove_empty=remove_empty))


def _marked(place: StoreLocation) -> tuple[StoreLocation, ...]:
    """The places whose incomplete marker the run removes last: none in an Icechunk session."""
    return () if place.icechunk is not None else (place,)


def _write_markers(
    jobs: Sequence[ArrayJob],
    dest: Destination,
    ledger: _Ledger,
    plan: dict[str, Any],
    resumed: Sequence[bool],
) -> tuple[tuple[StoreLocation, ...], tuple[StoreLocation, ...]]:
    """Complete the markers of new targets; return the temp keys and directories to clean up.

    A resumed run cleans up what the interrupted run's marker lists, too.
    """
    keys = {str(k.identity): k for k in ledger.added_keys}
    dirs = {str(d.identity): d for d in ledger.temp_dirs}
    for place in _targets(jobs, dest):
        if place.icechunk is not None:
            continue  # no marker: see _claim_all
        if any(str(place.identity) == str(m.identity) for m in ledger.markers):
            write_marker(place, _document(place, jobs, dest, ledger, plan))
            continue
        temp = (read_marker(place) or {}).get("temp") or {}
        if dest.temp is not None:
            for key in temp.get("added_keys", ()):
                location = dest.temp.base.child(key)
                keys.setdefault(str(location.identity), location)
        for path in temp.get("new_dirs", ()):
            dirs.setdefault(str(StoreLocation(path).identity), StoreLocation(path))
    return tuple(keys.values()), tuple(dirs.values())


def _document(
    place: StoreLocation,
    jobs: Sequence[ArrayJob],
    dest: Destination,
    ledger: _Ledger,
    plan: dict[str, Any],
) -> dict[str, Any]:
    """The marker of the target place ``place``: the plan, and what the run created."""
    here = [job for job in jobs if str(_place_of(job, dest).identity) == str(place.identity)]
    base = dest.temp.base if dest.temp is not None else None
    return marker_document(
        plan,
        place,
        dest,
        [loc for job in here for loc in _job_intermediates(job, dest)],
        [d for d in ledger.new_dirs if place.identity.contains(d.identity)],
        ledger.temp_dirs,
        [k.path[len(base.path) :].lstrip("/") for k in ledger.added_keys] if base else [],
        job=ledger.tokens[str(place.identity)],
    )


def _claim_all(
    jobs: Sequence[ArrayJob],
    dest: Destination,
    ledger: _Ledger,
    process_bound: bool,
    resume: bool,
    plan: dict[str, Any],
) -> tuple[tuple[Claim, ...], list[bool]]:
    """Claim every place, check it again under the claim, and clear it if asked.

    A new target gets its incomplete marker at once; an incomplete one is
    kept when resuming (its marker checked again under the claim). Returns
    the claims and, per job, whether it resumes.
    """
    overwrite = overwrites(jobs, "target")
    kept: set[str] = set()
    for place in _targets(jobs, dest):
        fresh = not place.exists()
        # An Icechunk session needs no claim and no marker: the run writes into
        # a fork of its own, the session's commit detects a conflicting writer,
        # and nothing reaches the session before the run completes.
        if place.icechunk is None:
            ledger.claim(place, "the target", process_bound)
        if resume and place.icechunk is None and (marker := read_marker(place)) is not None:
            check_marker(place, plan, dest)
            kept.add(str(place.identity))
            ledger.tokens[str(place.identity)] = str(marker.get("job", ""))
            continue
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
        ledger.tokens[str(place.identity)] = uuid.uuid4().hex
        if place.icechunk is None:
            ledger.markers.append(place)
            write_marker(place, _document(place, jobs, dest, ledger, plan))
    resumed = [str(_place_of(job, dest).identity) in kept for job in jobs]
    if dest.temp is not None:
        ledger.temp_dirs = _missing_dirs(dest.temp.base)
    replaceable = _replace_intermediates(jobs, dest)
    for job, resuming in zip(jobs, resumed):
        for location in _job_intermediates(job, dest):
            existed = location.exists()
            ledger.claim(location, "temp_store", process_bound)
            if resuming and (not _holds_data(location) or _is_zarr_array(location)):
                if not existed:
                    ledger.created.append(location)
                continue
            _check_intermediate_free(location, replaceable)
            clear_cache(location)
            location.delete_contents()
            ledger.created.append(location)
    return tuple(ledger.claims), resumed


@dataclass(frozen=True)
class _Chains:
    """What every created chain shares: the target's zarr format, the run, the retries."""

    fmt: ZarrFormat
    run: str
    retry: RetryPolicy
    tokens: dict[str, str] = field(default_factory=dict)  # target place -> job token
    #: Unless the intermediates are kept for the user to look at, stages after
    #: the first delete the intermediate chunks they have read.
    keep_temp: bool = False


@dataclass(frozen=True)
class _PlannedArray:
    """An array this plan would create: where, and with which metadata."""

    location: StoreLocation
    shape: tuple[int, ...]
    dtype: Any
    chunks: tuple[int, ...]
    kwargs: Mapping[str, Any]  # zarr.create_array keywords (:func:`_create_kwargs`)
    #: The user's options these keywords came from, for an error: (name, options).
    given: tuple[str, Mapping[str, Any]] = ("target_options", {})

    def create(self, *, resume: bool = False) -> ZarrRef:
        """Create the array; when resuming, open the one already there (it must fit the plan)."""
        location = self.location
        if resume and _is_zarr_array(location):
            self.check_matches()
            clear_cache(location)
            existing = zarr.open_array(store=location.open_store(), path=location.path, mode="r+")
            return ZarrRef.from_array(existing, location)
        array = self._create_in(location.open_store())
        # An array this process opened here before (an overwritten target) is stale.
        clear_cache(location)
        return ZarrRef.from_array(array, location)

    def check_matches(self) -> None:
        """Raise ValueError unless the array at the location is the one this plan would create."""
        location = self.location
        existing = zarr.open_array(
            store=location.open_store(read_only=True), path=location.path, mode="r"
        )
        differences = metadata_differences(existing, self._create_in(MemoryStore()))
        if differences:
            raise ValueError(
                f"resume=True, but the array {location.describe()} the interrupted run left does "
                f"not match this plan: {'; '.join(differences)}; resume with the same arguments, "
                "or pass target_options={'overwrite': True}"
            )

    def _create_in(self, store: Any) -> zarr.Array[Any]:
        try:
            return zarr.create_array(
                store=store,
                name=self.location.path or None,
                shape=self.shape,
                dtype=self.dtype,
                chunks=self.chunks,
                **self.kwargs,
            )
        except (TypeError, ValueError) as error:
            # zarr's own words ("'Blosc' object is not iterable") rarely name the option.
            name, options = self.given
            raise ValueError(
                f"zarr cannot create the {'target' if name == 'target_options' else 'intermediate'}"
                f" array (Zarr format {self.kwargs.get('zarr_format')}, chunks {self.chunks}) "
                f"with {name}={dict(options)!r}: {type(error).__name__}: {error}"
            ) from error


def _planned_arrays(job: ArrayJob, dest: Destination, fmt: ZarrFormat) -> list[_PlannedArray]:
    """The arrays a job creates: its target, then its intermediates."""
    shape, dtype = job.array.ref.shape, job.array.ref.dtype
    kwargs = _create_kwargs(job.array, {**job.options.target, "zarr_format": fmt}, fmt)
    target = ("target_options", job.options.target)
    planned = [_PlannedArray(job.target, shape, dtype, job.target_chunks, kwargs, target)]
    for i, chunks in enumerate(job.layout.intermediate_chunks, start=1):
        temp_kwargs = {**_create_kwargs(job.array, dict(job.options.temp), fmt), "attributes": {}}
        location = dest.intermediate(job.name, i)
        given = ("temp_options", job.options.temp)
        planned.append(_PlannedArray(location, shape, dtype, chunks, temp_kwargs, given))
    return planned


def _create_chain(
    job: ArrayJob, dest: Destination, chains: _Chains, resume: bool
) -> StagedCopySpec:
    """Create one array's target and intermediates (or, resuming, open them); return its spec.

    Each stage records its finished tasks in a journal inside the array it writes,
    and each stage after the first frees the intermediate chunks it has read.
    """
    token = chains.tokens.get(str(_place_of(job, dest).identity), "")
    target_ref, *temp_refs = [
        planned.create(resume=resume) for planned in _planned_arrays(job, dest, chains.fmt)
    ]
    assert target_ref.chunks == job.layout.stages[-1].write_chunks
    source = job.array.ref
    refs: list[Any] = [
        replace(source, retry=chains.retry) if isinstance(source, ZarrRef) else source,
        *(replace(ref, retry=chains.retry) for ref in (*temp_refs, target_ref)),
    ]
    journals = [_journal(ref, chains.run, token) for ref in refs[1:]]
    return StagedCopySpec(
        tuple(
            CopySpec(
                refs[i],
                refs[i + 1],
                stage.task_chunks,
                journals[i],
                frees_source=i > 0 and not chains.keep_temp and journals[i] is not None,
            )
            for i, stage in enumerate(job.layout.stages)
        )
    )


def _journal(written: ZarrRef, run: str, token: str) -> JournalRef | None:
    """Where a stage writing ``written`` records its finished tasks; none in an
    Icechunk session (its writes reach the session only once the run completes)."""
    if written.location.icechunk is not None:
        return None
    return JournalRef(written.location.child(JOURNAL_KEY), run, token)


def _create_metadata(
    source: Source,
    jobs: Sequence[ArrayJob],
    dest: Destination,
    chains: _Chains,
    resumed: Sequence[bool],
) -> tuple[StagedCopySpec, ...]:
    """Create target groups and arrays, and the intermediates; return the specs."""
    fmt = chains.fmt
    if source.is_group:
        _create_groups(source, dest.target, fmt)
    specs = tuple(
        _create_chain(job, dest, chains, resuming) for job, resuming in zip(jobs, resumed)
    )
    store = dest.target.open_store()
    if source.is_group and store.supports_consolidated_metadata:  # Icechunk has no need
        with _quiet_about_claims():
            zarr.consolidate_metadata(store, path=dest.target.path, zarr_format=fmt)
    if (session := dest.target.icechunk) is not None:
        session.seal()  # what tasks in other processes start from: the metadata
    return specs


@contextmanager
def _quiet_about_claims() -> Iterator[None]:
    """Silence two warnings zarr gives every group target, on purpose.

    zarr warns about the claim and marker files (not zarr nodes) while it lists a group,
    and that consolidated metadata is not part of the Zarr format 3
    specification. We write consolidated metadata deliberately: xarray's
    ``open_zarr`` reads a group in one request with it, and warns without it.
    docs/sources.md says so once, instead of every run.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\.rechunker-(claim|incomplete).*")
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


def _create_groups(source: Source, target: StoreLocation, fmt: ZarrFormat) -> None:
    store = target.open_store()
    for path, attributes in sorted(source.groups.items()):
        location = target.child(path)
        group = zarr.open_group(store=store, path=location.path, mode="a", zarr_format=fmt)
        group.attrs.update(attributes)
