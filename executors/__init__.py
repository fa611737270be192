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
from typing import Any, Protocol, TypeVar, runtime_checkable

from rechunker_core.locations import StoreLocation
from rechunker_core.spec import StagedCopySpec

__all__ = [
    "BUILTIN_EXECUTORS",
    "Executor",
    "engine_memory",
    "get_executor",
    "import_engine",
    "refuse_in_memory",
    "registered_executors",
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
    """Turns specs into an engine's plan, and runs plans.

    An executor may also have ``engine_memory``, an int: the bytes its
    engine holds on each worker besides the tasks while a plan runs (see
    :func:`engine_memory`). The planner counts it in every task's peak.

    Attributes
    ----------
    shares_memory : bool
        Whether every task runs in the calling process. When it is False,
        :func:`rechunker_core.rechunk` refuses in-memory stores before it
        writes anything; should a task reach one from another process
        anyway (a plan run on another scheduler than the one declared),
        opening it raises the same ``ValueError``
        (:meth:`rechunker_core.locations.StoreLocation.open_store`).
    """

    shares_memory: bool

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> T:
        """Return the engine's delayed object for ``specs``."""
        ...

    def execute_plan(self, plan: T, *args: Any, **kwargs: Any) -> None:
        """Run a plan made by :meth:`prepare_plan`.

        Keyword arguments are the executor's own run options.
        :meth:`rechunker_core.Rechunked.execute` passes ``progress=``, a
        :class:`rechunker_core.copy.Tracker`, when the method accepts it.
        """
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


def engine_memory(executor: Executor[Any]) -> int:
    """The bytes ``executor``'s engine holds per worker besides the tasks: 0 when undeclared.

    >>> from rechunker_core.executors.threads import ThreadsExecutor
    >>> engine_memory(ThreadsExecutor())
    0
    """
    value = getattr(executor, "engine_memory", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(
            f"{type(executor).__name__}.engine_memory={value!r} must be a non-negative int "
            "(bytes per worker)"
        )
    return value


def import_engine(module: str, extra: str) -> Any:
    """Import an optional engine, or raise an ImportError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"this executor needs {module.split('.')[0]}, which is not installed: "
            f'pip install "rechunker-core[{extra}]"'
        ) from error


def refuse_in_memory(locations: Iterable[StoreLocation | None], executor: str) -> None:
    """Raise ValueError if any of ``locations`` lives in this process's memory only.

    For executors whose tasks run in other processes: writes there would be
    lost, and reads would see only fill values.
    """
    for location in locations:
        if location is not None and location.in_memory:
            raise ValueError(location.in_memory_message(f"the {executor} executor runs tasks"))
