"""The one place data moves: every executor calls these, and nothing else copies."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import zip_longest

from rechunker_core.geometry import Region
from rechunker_core.spec import CopySpec, StagedCopySpec
from rechunker_core.storage import remove

__all__ = ["copy_region", "copy_tasks", "finish", "stages_in_order"]


def copy_region(stage: CopySpec, region: Region) -> None:
    """Copy one task's region: read it from the stage's source, write it to its target."""
    stage.target.write(region, stage.source.read(region))


def copy_tasks(stage: CopySpec, tasks: Iterable[int]) -> int:
    """Copy the regions of the given task numbers; return how many were copied."""
    count = 0
    for task in tasks:
        copy_region(stage, stage.task_region(task))
        count += 1
    return count


def finish(specs: Iterable[StagedCopySpec]) -> None:
    """The last step of every plan: delete the intermediates the run created,
    then the directories it made for them if they are empty, and release its claims.

    Nothing else is deleted: the specs list only what the run itself created.
    """
    specs = tuple(specs)
    for spec in specs:
        for location in spec.cleanup:
            remove(location)
    for spec in specs:
        for location in spec.remove_empty:
            location.remove_if_empty()
    for spec in specs:
        for claim in spec.claims:
            claim.release()


def stages_in_order(specs: Sequence[StagedCopySpec]) -> Iterator[list[CopySpec]]:
    """Group the copies of several specs into rounds that may run concurrently.

    Round ``k`` holds stage ``k`` of every spec that has one; every task of a
    round must finish before the next round starts.

    >>> from types import SimpleNamespace as NS
    >>> [len(r) for r in stages_in_order([NS(stages=(1, 2)), NS(stages=(3,))])]
    [2, 1]
    """
    for round_ in zip_longest(*(spec.stages for spec in specs)):
        yield [stage for stage in round_ if stage is not None]
