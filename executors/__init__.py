"""Executors: thin translations of a :class:`~rechunker_core.StagedCopySpec` into an engine.

Each module here turns specs into its engine's own delayed object (the *plan*)
and runs it. None copies data itself: every task calls
:mod:`rechunker_core.copy`. Executors are looked up by name in the entry-point
group ``rechunker_core.executors``; the five built-in ones are always listed,
whether or not their engine is installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    # Annotation only: rechunker_core.api imports this module while the
    # rechunker_core package is still initialising, so it imports none of it at run time.
    from rechunker_core.spec import StagedCopySpec

__all__ = [
    "BUILTIN_EXECUTORS",
    "Executor",
    "get_executor",
    "import_engine",
    "refuse_in_memory",
    "refuse_in_memory_locations",
    "registered_executors",
    "shares_memory",
]

T = TypeVar("T")

#: Built-in executor names and where they live.
BUILTIN_EXECUTORS: dict[str, str] = {
    "python": "rechunker_core.executors.python:PythonExecutor",
    "threads": "rechunker_core.executors.threads:ThreadsExecutor",
    "dask": "rechunker_core.executors.dask:DaskExecutor",
    "prefect": "rechunker_core.executors.prefect:PrefectExecutor",
    "beam": "rechunker_core.executors.beam:BeamExecutor",
}

ENTRY_POINT_GROUP = "rechunker_core.executors"


@runtime_checkable
class Executor(Protocol[T]):
    """Turns specs into an engine's plan, and runs plans."""

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> T:
        """Return the engine's delayed object for ``specs``."""
        ...

    def execute_plan(self, plan: T, **kwargs: Any) -> None:
        """Run a plan made by :meth:`prepare_plan`."""
        ...


def registered_executors() -> dict[str, str]:
    """Return every executor name and its ``module:attribute``, built-ins first."""
    found = dict(BUILTIN_EXECUTORS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def get_executor(executor: str | Executor[Any]) -> Executor[Any]:
    """Return an executor instance for a registered name (or the instance itself).

    Raises
    ------
    ValueError
        For an unknown name; the message lists every registered name.
    ImportError
        When the executor's engine is not installed; the message names the extra.
    """
    if isinstance(executor, type):
        raise ValueError(
            f"executor={executor.__name__} is a class; pass an instance such as "
            f"{executor.__name__}() or a registered name such as 'threads'"
        )
    if not isinstance(executor, str):
        if not isinstance(executor, Executor):
            raise ValueError(
                f"executor={executor!r} is neither a registered name nor an Executor "
                "(an object with prepare_plan and execute_plan)"
            )
        return executor
    names = registered_executors()
    if executor not in names:
        raise ValueError(
            f"unknown executor {executor!r}; registered executors: {', '.join(sorted(names))}"
        )
    module_name, _, attribute = names[executor].partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    instance: Executor[Any] = factory()
    return instance


def import_engine(module: str, extra: str) -> Any:
    """Import an optional engine, or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this executor needs {module.split('.')[0]}, which is not installed: "
            f'pip install "rechunker-core[{extra}]"'
        ) from error


def shares_memory(executor: Any) -> bool:
    """Whether every task of ``executor`` runs in the calling process.

    Executors may set a ``shares_memory`` attribute; without one, True is
    assumed. When it is False, :func:`rechunker_core.rechunk` refuses
    in-memory stores before it writes anything.
    """
    return bool(getattr(executor, "shares_memory", True))


def refuse_in_memory_locations(locations: Iterable[Any], executor: str) -> None:
    """Raise ValueError if any of ``locations`` (StoreLocation or None) is in memory.

    For executors whose tasks run in other processes: writes there would be
    lost, and reads would see only fill values.
    """
    for location in locations:
        if location is not None and location.in_memory:
            raise ValueError(
                f"the {executor} executor runs tasks in other processes, which cannot "
                f"see the in-memory store {location.describe()}; use a local path, "
                "a file:// or s3:// URL, or an in-process executor (python, threads)"
            )


def refuse_in_memory(specs: Sequence[StagedCopySpec], executor: str) -> None:
    """Raise ValueError if any array of ``specs`` lives in one process's memory."""
    refuse_in_memory_locations(
        (
            getattr(ref, "location", None)
            for spec in specs
            for stage in spec.stages
            for ref in (stage.source, stage.target)
        ),
        executor,
    )
