"""What an interrupted run leaves behind: resuming it, telling it apart, cleaning it up.

A run writes the incomplete marker (:data:`~rechunker_core.journal.INCOMPLETE_KEY`)
into its target before the first chunk, and removes it as its last step. The
marker holds the run's *plan fingerprint* and a *manifest*: what the run
created, named relative to the target and temp stores. So:

- :func:`check_marker` lets ``rechunk(..., resume=True)`` continue only the
  same job (same source, shapes, chunks and stage layout), and
  :func:`metadata_differences` checks each array it finds against the plan;
- :func:`is_complete` tells a reader whether a target is finished;
- :func:`clean` removes what an abandoned run created, and nothing else.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import zarr
from zarr.core.buffer import default_buffer_prototype

from rechunker_core.jobs import ArrayJob
from rechunker_core.journal import (
    INCOMPLETE_KEY,
    JOURNAL_KEY,
    JournalRef,
    discard,
    finished,
    read_marker,
    record_all,
)
from rechunker_core.locations import (
    CLAIM_KEY,
    StoreLocation,
    check_writable_place,
    resolve_location,
    take_claim,
)
from rechunker_core.places import Destination
from rechunker_core.sources import Source
from rechunker_core.spec import StagedCopySpec
from rechunker_core.storage import remove

__all__ = [
    "MARKER_FORMAT",
    "check_marker",
    "clean",
    "fingerprint",
    "is_complete",
    "marker_document",
    "metadata_differences",
    "settle",
]

#: Names the marker's format, so a marker of another version is recognised.
MARKER_FORMAT = "rechunker-core incomplete target, version 1"


def _portable(location: StoreLocation | None) -> str | None:
    """A location's identity when it means the same in every process, else None."""
    if location is None:
        return None
    identity = location.identity
    return None if ":" in identity.namespace else str(identity)


def fingerprint(source: Source, jobs: Sequence[ArrayJob]) -> dict[str, Any]:
    """What a resumed run must plan exactly as the interrupted one did.

    The source (when it has a place that means the same in every process),
    and per array its shape, dtype, target chunks and each stage's write and
    task chunks: a journal numbers tasks on that grid.
    """
    return {
        "source": _portable(source.location),
        "arrays": [
            {
                "name": job.name,
                "shape": list(job.array.ref.shape),
                "dtype": job.array.ref.dtype.str,
                "target_chunks": list(job.target_chunks),
                "stages": [
                    {"write_chunks": list(s.write_chunks), "task_chunks": list(s.task_chunks)}
                    for s in job.layout.stages
                ],
            }
            for job in jobs
        ],
    }


def marker_document(
    plan: dict[str, Any],
    place: StoreLocation,
    dest: Destination,
    intermediates: Sequence[StoreLocation],
    new_dirs: Sequence[StoreLocation],
    temp_dirs: Sequence[StoreLocation],
    added_keys: Sequence[str] = (),
    job: str = "",
) -> dict[str, Any]:
    """The incomplete marker of one target place: the job, its plan and what it created there.

    Paths of intermediates and temp keys are relative to the temp store, so
    :func:`clean` can find them through a store object given again.
    """
    temp = dest.temp
    base = temp.base if temp is not None else None
    return {
        "format": MARKER_FORMAT,
        "job": job,
        "plan": plan,
        "run": {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()},
        "target": {
            "identity": str(place.identity),
            "new_dirs": [str(d.local_path) for d in new_dirs],
        },
        "temp": None
        if base is None
        else {
            "identity": str(base.identity),
            "store": base.store if isinstance(base.store, str) else None,
            "path": base.path,
            "intermediates": [_relative(loc, base) for loc in intermediates],
            "added_keys": list(added_keys),
            "new_dirs": [str(d.local_path) for d in temp_dirs],
        },
    }


def _relative(location: StoreLocation, base: StoreLocation) -> str:
    """``location``'s path below ``base``: ``"a.intermediate1"``."""
    prefix = f"{base.path}/" if base.path else ""
    return location.path[len(prefix) :]


def check_marker(place: StoreLocation, plan: dict[str, Any], dest: Destination) -> None:
    """Raise ValueError unless ``place`` holds the marker of a run of this same job.

    Raises
    ------
    ValueError
        When there is no marker (the data there is no interrupted run's),
        the marker is unreadable or of another version, or the plan or the
        temp store differ from the interrupted run's.
    """
    marker = read_marker(place)
    where = place.describe()
    if marker is None:
        raise ValueError(
            f"resume=True, but the target {where} holds data that no interrupted rechunk "
            "left (it has no incomplete marker): there is nothing to resume; pass "
            "target_options={'overwrite': True} to replace it"
        )
    if marker.get("format") != MARKER_FORMAT:
        raise ValueError(
            f"resume=True, but the incomplete marker in {where} is unreadable or of another "
            "version of rechunker-core; pass target_options={'overwrite': True} to start again"
        )
    if marker.get("plan") != plan:
        raise ValueError(
            f"resume=True, but the interrupted run into {where} made another plan: "
            f"{_plan_difference(marker.get('plan') or {}, plan)}; resume with the same "
            "source, target_chunks, max_mem and executor (an executor's engine memory "
            "shrinks tasks that come close to max_mem), or pass "
            "target_options={'overwrite': True}"
        )
    recorded = (marker.get("temp") or {}).get("identity")
    given = str(dest.temp.base.identity) if dest.temp is not None else None
    if recorded is not None and given is not None and recorded != given:
        raise ValueError(
            f"resume=True, but the interrupted run into {where} kept its intermediates in "
            f"{recorded}, not in the temp_store {given}; pass the same temp_store"
        )


def _plan_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first difference between two plan fingerprints, in words."""
    if old.get("source") != new.get("source"):
        return f"it read the source {old.get('source')}, this run reads {new.get('source')}"
    old_arrays = {a["name"]: a for a in old.get("arrays", ())}
    for array in new["arrays"]:
        before = old_arrays.get(array["name"])
        name = array["name"] or "the array"
        if before is None:
            return f"it did not rechunk {name}"
        for key in ("shape", "dtype", "target_chunks", "stages"):
            if before.get(key) != array[key]:
                return f"{name} had {key} {before.get(key)}, this run plans {array[key]}"
    return f"it rechunked {sorted(old_arrays)}, this run {[a['name'] for a in new['arrays']]}"


def metadata_differences(existing: zarr.Array[Any], planned: zarr.Array[Any]) -> list[str]:
    """How the stored metadata of ``existing`` differs from that of ``planned``, field by field.

    Both arrays' metadata documents are compared as stored (``zarr.json``,
    or ``.zarray`` and ``.zattrs``): shape, dtype, chunk grid, shards,
    codecs, fill value, dimension names and attributes.
    """
    old, new = _documents(existing), _documents(planned)
    differences = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            differences.append(f"{key}: found {old.get(key)!r}, planned {new.get(key)!r}")
    return differences


def _documents(array: zarr.Array[Any]) -> dict[str, Any]:
    prototype = default_buffer_prototype()
    merged: dict[str, Any] = {}
    for name, buffer in array.metadata.to_buffer_dict(prototype).items():
        document = json.loads(buffer.to_bytes())
        merged.update({f"{name}:{k}": v for k, v in document.items()})
    return merged


# --------------------------------------------------------------------------
# Telling an incomplete target
# --------------------------------------------------------------------------


def _location_of(target: Any, storage_options: dict[str, Any] | None) -> StoreLocation:
    if isinstance(target, zarr.Array):
        return resolve_location(target.store).child(target.path)
    return resolve_location(target, storage_options)


def is_complete(target: Any, *, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether a rechunk target is complete: no run is still writing it, or left it unfinished.

    A run puts an incomplete marker (a ``.rechunker-incomplete`` key) into
    its target before writing the first chunk and removes it as its last
    step. This looks for that marker at the target, at the groups above it
    (an array of a rechunked group) and, for a group, in every array below it.

    Parameters
    ----------
    target : path, fsspec URL, zarr Store, zarr.Array or zarr.Group
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    bool
        ``False`` when a marker is found, or when nothing is stored there.
    """
    location = _location_of(target, storage_options)
    if not location.exists():
        return False
    places = [location, *_groups_above(location), *_arrays_below(location)]
    return all(read_marker(place) is None for place in places)


def _groups_above(location: StoreLocation) -> list[StoreLocation]:
    """The places above ``location`` in its zarr hierarchy (an array of a rechunked group).

    On disk the hierarchy may begin above the store given (``t.zarr/temp``
    opened as a store of its own): directories holding group metadata count.
    """
    local = location.local_path
    if local is None:
        parts = PurePosixPath(location.path).parts
        return [
            StoreLocation(location.store, "/".join(parts[:i]), location.storage_options)
            for i in range(len(parts))
        ]
    found = []
    for parent in local.parents:
        if not any((parent / key).exists() for key in ("zarr.json", ".zgroup")):
            break
        found.append(StoreLocation(str(parent)))
    return found


def _arrays_below(location: StoreLocation) -> list[StoreLocation]:
    """Every array of the group at ``location`` (none when it is not a group)."""
    store = location.open_store(read_only=True)
    try:
        group = zarr.open_group(store=store, path=location.path, mode="r")
    except Exception:  # an array, or nothing zarr reads: no members
        return []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*\.rechunker-")
        return [location.child(name) for name, _ in group.members(max_depth=None)]


# --------------------------------------------------------------------------
# Cleaning up after an abandoned run
# --------------------------------------------------------------------------


def clean(
    target_store: Any,
    temp_store: Any = None,
    *,
    array_name: str | None = None,
    storage_options: dict[str, Any] | None = None,
    temp_storage_options: dict[str, Any] | None = None,
) -> list[str]:
    """Remove what an abandoned (interrupted, never resumed) run created, and only that.

    The target's incomplete marker lists what the run created (the target's
    contents, intermediates, group metadata it added to the temp store, the
    directories it made); those go, the marker last. A complete target is
    kept; only a journal or stale claim a crash in its last step left goes.

    Parameters
    ----------
    target_store : path, fsspec URL, zarr Store or zarr.Group
        As given to :func:`rechunker_core.rechunk`.
    temp_store : path, fsspec URL, zarr Store or zarr.Group, optional
        The run's temp store; needed only when it was not a path or URL.
    array_name : str, optional
        As given to :func:`rechunker_core.rechunk`, for a group target.
    storage_options, temp_storage_options : dict, optional
        fsspec options for URLs.

    Returns
    -------
    list of str
        What was removed.

    Raises
    ------
    ValueError
        When nothing is stored at the target, a run still holds it
        (``ClaimError``), its marker names another place (a copied target),
        or the temp store is not the run's.
    """
    place = resolve_location(target_store, storage_options, what="target_store", writable=True)
    if array_name:
        place = place.child(array_name)
    check_writable_place(place, "the target")
    if not place.exists():
        raise ValueError(f"the target {place.describe()} holds nothing: nothing to clean")
    marker = read_marker(place)
    if marker is None:
        return _clean_complete(place)
    _check_own_marker(place, marker)
    base = _temp_base(marker, temp_store, temp_storage_options or storage_options)
    claim = take_claim(place, "the target")  # refuses while the run is alive
    removed = _remove_temp(marker, base) if base is not None else []
    # The marker goes last: until then the target still reads as incomplete.
    place.delete_contents(keep=(CLAIM_KEY, INCOMPLETE_KEY))
    place.child(INCOMPLETE_KEY).delete()
    claim.release()
    removed.append(place.describe())
    for path in marker["target"].get("new_dirs", ()):
        StoreLocation(path).remove_if_empty()
    return removed


def _check_own_marker(place: StoreLocation, marker: dict[str, Any]) -> None:
    """Refuse a marker of another version, or one written for another place."""
    if marker.get("format") != MARKER_FORMAT or "target" not in marker:
        raise ValueError(
            f"the incomplete marker in {place.describe()} is unreadable or of another version "
            "of rechunker-core; nothing removed: delete the target by hand"
        )
    if marker["target"].get("identity") != str(place.identity):
        raise ValueError(
            f"the incomplete marker in {place.describe()} was written for "
            f"{marker['target'].get('identity')} (was the target copied or moved?); "
            "nothing removed"
        )


def _temp_base(
    marker: dict[str, Any], temp_store: Any, options: dict[str, Any] | None
) -> StoreLocation | None:
    """The run's temp store, checked against the identity the marker recorded."""
    temp = marker.get("temp")
    if temp is None:
        return None
    if temp_store is None:
        if temp.get("store") is None:
            raise ValueError(
                f"the abandoned run kept its intermediates in {temp['identity']}, a store "
                "object with no path: pass it again as temp_store"
            )
        base = StoreLocation(temp["store"], temp.get("path", ""), options or {})
    else:
        base = resolve_location(temp_store, options, what="temp_store", writable=True)
    if str(base.identity) != temp["identity"]:
        raise ValueError(
            f"the abandoned run kept its intermediates in {temp['identity']}, not in "
            f"{base.identity}; nothing removed"
        )
    return base


def _remove_temp(marker: dict[str, Any], base: StoreLocation) -> list[str]:
    """Remove the intermediates and temp keys the marker lists (each inside ``base``)."""
    temp, removed = marker["temp"], []
    for relative in [*temp.get("intermediates", ()), *temp.get("added_keys", ())]:
        location = _inside(base, relative)
        if location.exists():
            discard(JournalRef(location.child(JOURNAL_KEY), ""))
            remove(location)
            removed.append(location.describe())
    for path in temp.get("new_dirs", ()):
        StoreLocation(path).remove_if_empty()
    return removed


def _inside(base: StoreLocation, relative: str) -> StoreLocation:
    """``base.child(relative)``, refused unless it lies strictly inside ``base``."""
    location = base.child(relative)
    inner, outer = location.identity, base.identity
    if PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts:
        raise ValueError(f"the incomplete marker names {relative!r}, not a name in the temp store")
    if inner == outer or not outer.contains(inner):
        raise ValueError(
            f"the incomplete marker names {relative!r}, which is not inside the temp store "
            f"{base.describe()} (a symlink?); nothing more removed"
        )
    return location


def _clean_complete(place: StoreLocation) -> list[str]:
    """A complete target: remove only journals and a stale claim a crash may have left."""
    removed = []
    for location in [place, *_arrays_below(place)]:
        journal = location.child(JOURNAL_KEY)
        if journal.exists():
            discard(JournalRef(journal, ""))
            removed.append(journal.describe())
    if place.child(CLAIM_KEY).exists():
        take_claim(place, "the target").release()  # refuses while a run holds it
        removed.append(place.child(CLAIM_KEY).describe())
    return removed


def settle(spec: StagedCopySpec) -> None:
    """Record as done every stage before the last stage its journals show complete.

    A stage reads only what the stage before it wrote, so once a later stage
    is complete the earlier ones are too, even if the run's last step had
    begun deleting their intermediates (and journals) when it was killed.
    """
    complete = [
        finished(s.journal, s.grid, s.target.retry).count == s.num_tasks for s in spec.stages
    ]
    last = max((k for k, done in enumerate(complete) if done), default=0)
    for stage, done in zip(spec.stages[:last], complete):
        if not done:
            record_all(stage.journal, stage.grid)
