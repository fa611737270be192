"""The backend-neutral description of a rechunk: data, not code.

A :class:`CopySpec` copies one array into another, task by task; a
:class:`StagedCopySpec` chains copies from source through intermediates to
target. Executors walk these; :mod:`rechunker_core.copy` does each task.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rechunker_core.blocks import Blocks
from rechunker_core.geometry import Region, TaskGrid, region_slices
from rechunker_core.journal import JournalRef
from rechunker_core.locations import Claim, StoreLocation, location_from_dict, location_to_dict
from rechunker_core.storage import ZarrRef

__all__ = ["ArrayRef", "CopySpec", "StagedCopySpec", "dump_specs", "load_specs"]


@runtime_checkable
class ArrayRef(Protocol):
    """Anything a stage can read from: a zarr array, a dask array, ...

    References are small picklable values; ``read`` opens whatever it needs.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    @property
    def chunks(self) -> tuple[int, ...]: ...

    @property
    def read_chunks(self) -> tuple[int, ...]: ...

    def read_into(self, region: Region, blocks: Blocks) -> None:
        """Put the values in ``region`` into ``blocks``."""
        ...


@dataclass(frozen=True)
class CopySpec:
    """One chunk-aligned copy from ``source`` to ``target``.

    Tasks tile the array with regions of ``task_chunks`` (clipped at the edges).
    Each region covers whole write chunks of the target, so tasks never write
    the same stored object and may run in any order, at once, or again.

    Attributes
    ----------
    source : ArrayRef
    target : ZarrRef
    task_chunks : tuple of int
    journal : JournalRef, optional
        Where finished tasks are recorded, so a resumed run skips them
        (:mod:`rechunker_core.journal`); ``None`` records nothing.
    frees_source : bool
        Delete the source's chunks each task holds whole once the task is
        recorded (:meth:`ZarrRef.free`): for an intermediate the run created,
        which no other stage reads. Needs a journal, so that a task done is
        never run again on freed chunks.
    """

    source: ArrayRef
    target: ZarrRef
    task_chunks: tuple[int, ...]
    journal: JournalRef | None = None
    frees_source: bool = False

    def __post_init__(self) -> None:
        source, target, tasks = self.source, self.target, self.task_chunks
        if self.frees_source and (self.journal is None or not isinstance(source, ZarrRef)):
            raise ValueError(
                f"frees_source needs a zarr source and a journal, got {source!r} and "
                f"{self.journal!r}: a task run again would read the chunks it freed"
            )
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"source shape {source.shape} != target shape {target.shape}")
        if np.dtype(source.dtype) != np.dtype(target.dtype):
            raise ValueError(f"source dtype {source.dtype} != target dtype {target.dtype}")
        if len(tasks) != len(target.shape) or any(c < 1 for c in tasks):
            raise ValueError(
                f"task_chunks {tasks} must be {len(target.shape)} positive integers "
                f"for shape {target.shape}"
            )
        if any(c > max(n, 1) for c, n in zip(tasks, target.shape)):
            raise ValueError(f"task_chunks {tasks} do not fit the shape {target.shape}")
        for n, c, w in zip(target.shape, tasks, target.chunks, strict=True):
            if c < n and c % w:
                raise ValueError(
                    f"task_chunks {tasks} do not align with the target's write chunks "
                    f"{target.chunks}: tasks would write parts of a stored chunk"
                )

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of both arrays."""
        return tuple(self.target.shape)

    @cached_property
    def grid(self) -> TaskGrid:
        """The tasks of the copy: its shape cut into ``task_chunks``."""
        return TaskGrid(self.shape, self.task_chunks)

    @cached_property
    def task_grid(self) -> tuple[int, ...]:
        """Tasks along each dimension."""
        return self.grid.counts

    @cached_property
    def num_tasks(self) -> int:
        """How many tasks the copy has."""
        return self.grid.num_tasks

    def task_region(self, task: int) -> Region:
        """Return the region of task number ``task`` (C order over the task grid)."""
        index = np.unravel_index(task, self.task_grid) if self.shape else ()
        return region_slices(tuple(int(i) for i in index), self.task_chunks, self.shape)

    def task_regions(self, start: int = 0, stop: int | None = None) -> Iterator[Region]:
        """Yield the regions of tasks ``start .. stop-1`` lazily, in C order."""
        stop = self.num_tasks if stop is None else min(stop, self.num_tasks)
        for task in range(start, stop):
            yield self.task_region(task)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (zarr sources only)."""
        if not isinstance(self.source, ZarrRef):
            raise ValueError(
                f"a plan reading {self.source!r} cannot be saved as JSON: a JSON plan names "
                "zarr arrays by store and path, and cannot carry a dask graph (a dask array, "
                "or the variables of an xarray Dataset). Write the source to zarr first "
                "(to_zarr), or run the plan from Python with an executor"
            )
        return {
            "source": self.source.to_dict(),
            "target": self.target.to_dict(),
            "task_chunks": list(self.task_chunks),
            "journal": None if self.journal is None else self.journal.to_dict(),
            "frees_source": self.frees_source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CopySpec:
        """Inverse of :meth:`to_dict`."""
        journal = data.get("journal")
        return cls(
            ZarrRef.from_dict(data["source"]),
            ZarrRef.from_dict(data["target"]),
            tuple(data["task_chunks"]),
            None if journal is None else JournalRef.from_dict(journal),
            bool(data.get("frees_source", False)),
        )


@dataclass(frozen=True)
class StagedCopySpec:
    """An ordered chain of copies: source -> intermediate(s) -> target.

    Attributes
    ----------
    stages : tuple of CopySpec
        Stage ``k + 1`` reads what stage ``k`` wrote.
    cleanup : tuple of StoreLocation
        Deleted after the last stage succeeds: the intermediate arrays the run
        created (none when the user asked to keep them). Never anything else.
    remove_empty : tuple of StoreLocation
        Directories the run created for its intermediates, deepest first:
        removed after the cleanup if nothing else is in them.
    claims : tuple of Claim
        The run's claims on its target and intermediates, released last.
    incomplete : tuple of StoreLocation
        Targets holding the marker that says they are incomplete
        (:data:`~rechunker_core.journal.INCOMPLETE_KEY`), removed once every
        stage is done.
    """

    stages: tuple[CopySpec, ...]
    cleanup: tuple[StoreLocation, ...] = ()
    remove_empty: tuple[StoreLocation, ...] = ()
    claims: tuple[Claim, ...] = ()
    incomplete: tuple[StoreLocation, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a StagedCopySpec needs at least one stage")
        for k, (before, after) in enumerate(zip(self.stages, self.stages[1:])):
            if before.target != after.source:
                raise ValueError(
                    f"stage {k + 1} reads {after.source!r} but stage {k} writes {before.target!r}"
                )

    @property
    def source(self) -> ArrayRef:
        """What the first stage reads."""
        return self.stages[0].source

    @property
    def target(self) -> ZarrRef:
        """What the last stage writes."""
        return self.stages[-1].target

    @property
    def intermediates(self) -> tuple[ZarrRef, ...]:
        """The arrays between stages."""
        return tuple(stage.target for stage in self.stages[:-1])

    @property
    def num_tasks(self) -> int:
        """Tasks over all stages."""
        return sum(stage.num_tasks for stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (zarr arrays at paths or URLs only).

        Raises
        ------
        ValueError
            For an array that JSON cannot name: a dask graph, or a store that
            is a Python object.
        """
        return {
            "stages": [stage.to_dict() for stage in self.stages],
            "cleanup": [location_to_dict(loc) for loc in self.cleanup],
            "remove_empty": [location_to_dict(loc) for loc in self.remove_empty],
            "claims": [{**location_to_dict(c.location), "token": c.token} for c in self.claims],
            "incomplete": [location_to_dict(loc) for loc in self.incomplete],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StagedCopySpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            tuple(CopySpec.from_dict(stage) for stage in data["stages"]),
            tuple(location_from_dict(d) for d in data["cleanup"]),
            tuple(location_from_dict(d) for d in data.get("remove_empty", ())),
            tuple(Claim(location_from_dict(d), d["token"]) for d in data.get("claims", ())),
            tuple(location_from_dict(d) for d in data.get("incomplete", ())),
        )

    def to_json(self) -> str:
        """Serialise to JSON; :meth:`from_json` restores an equal spec."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> StagedCopySpec:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


def dump_specs(specs: Sequence[StagedCopySpec]) -> list[dict[str, Any]]:
    """Several specs as JSON-ready data (see :meth:`StagedCopySpec.to_dict`)."""
    return [spec.to_dict() for spec in specs]


def load_specs(data: Sequence[Mapping[str, Any]]) -> tuple[StagedCopySpec, ...]:
    """Inverse of :func:`dump_specs`.

    Raises
    ------
    ValueError
        If ``data`` does not describe specs.
    """
    try:
        return tuple(StagedCopySpec.from_dict(item) for item in data)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a list of specs: {error!r}") from error
