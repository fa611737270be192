"""``rechunk()`` and ``Rechunked``: the public entry point.

``rechunk`` validates every input and plans every array before it writes
anything (:mod:`~rechunker_core.options`, :mod:`~rechunker_core.places`,
:mod:`~rechunker_core.jobs`); then it creates the target (and temp) arrays'
metadata (:mod:`~rechunker_core.create`) and asks the executor for its plan.
``Rechunked.execute()`` writes the data.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import zarr

from rechunker_core.algorithm import format_bytes
from rechunker_core.copy import Tracker, complete, count_done
from rechunker_core.create import (
    check_places,
    check_resume,
    create_specs,
    prepared_earlier,
    rehearse,
)
from rechunker_core.display import (
    describe_jobs,
    html_table,
    plan_svg,
    result_line,
    summary_line,
    text_table,
)
from rechunker_core.executors import Executor, engine_memory, get_executor, refuse_in_memory
from rechunker_core.jobs import ArrayJob, plan_jobs
from rechunker_core.locations import StoreLocation
from rechunker_core.options import Options, ZarrFormat, parse_bytes, resolve_options
from rechunker_core.places import Destination, TempPlace, resolve_destination
from rechunker_core.progress import choose_progress
from rechunker_core.retry import DEFAULT_BACKOFF, DEFAULT_RETRIES, RetryPolicy
from rechunker_core.sources import Source, open_source
from rechunker_core.spec import StagedCopySpec

__all__ = ["PlanView", "Rechunked", "describe_plan", "draw_plan", "rechunk"]

logger = logging.getLogger("rechunker_core")

#: A temp store for :func:`describe_plan`, which plans but writes nowhere.
_ANY_TEMP = TempPlace(StoreLocation("<temp>"))


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
        dest: Destination,
        resumed: bool = False,
    ) -> None:
        self._executor = executor
        self.plan = plan
        self.spec = spec
        self._jobs = tuple(jobs)
        self._source = source
        self._dest = dest
        self._resumed = resumed
        self._executed = False

    def execute(
        self, progress: Any = None, commit: str | None = None, **kwargs: Any
    ) -> zarr.Array[Any] | zarr.Group:
        """Run the plan on its executor and return the target.

        A run that failed may be executed again: tasks are idempotent and
        the intermediates stay until a run succeeds.

        Parameters
        ----------
        progress : None, bool or callable
            ``None`` (default): one progress bar per stage when standard
            error is a terminal or in a notebook; ``True``: bars always;
            ``False``: silent; a callable: called with
            ``(tasks_done, tasks_total)`` as tasks finish.
        commit : str, optional
            Icechunk targets only: commit the session with this message once
            everything is written. Without it the target's changes are left
            in the session, for the caller to commit (docs/icechunk.md).
        **kwargs
            Options of the executor's ``execute_plan``: ``max_workers=``
            (threads), ``scheduler=`` (dask), ``options=`` (beam), ...;
            docs/executors.md lists them per executor.

        Raises
        ------
        ValueError
            When called after a run succeeded: it deleted the intermediates
            and released the target; call :func:`rechunk` again instead. Or
            for ``commit`` with a target that is not an Icechunk session.
        TypeError
            For a ``progress`` that is none of the above.
        """
        if commit is not None and self._dest.target.icechunk is None:
            raise ValueError(
                f"commit={commit!r} is for Icechunk targets; {self._dest.target.describe()} "
                "is written in place, with nothing to commit"
            )
        if self._executed:
            raise ValueError(
                "this Rechunked has already been executed (its intermediates are gone and "
                "its target is released); call rechunk() again to run another rechunk"
            )
        tracker = Tracker(self.spec, choose_progress(progress))
        if self._resumed:  # what the interrupted run finished counts as done from the start
            count_done(self.spec, tracker)
        logger.info("executing %s", self._header())
        try:
            if _takes_progress(self._executor):
                kwargs["progress"] = tracker
            self._executor.execute_plan(self.plan, **kwargs)
        finally:
            tracker.close()
        self._executed = True
        complete(self.spec, commit)
        logger.info("done: %d tasks", tracker.done)
        return self.target

    @property
    def target(self) -> zarr.Array[Any] | zarr.Group:
        """The target, opened fresh: a ``zarr.Array``, or a ``zarr.Group`` for groups."""
        root = self._dest.target
        store = root.open_store()
        # A committed Icechunk session is read-only.
        mode: Literal["r", "r+"] = "r" if store.read_only else "r+"
        fmt = self.spec[0].target.zarr_format
        if self._source.is_group:
            return zarr.open_group(store=store, path=root.path, mode=mode, zarr_format=fmt)
        return zarr.open_array(
            store=store, path=self._jobs[0].target.path, mode=mode, zarr_format=fmt
        )

    @property
    def peak_task_memory(self) -> int:
        """Most bytes of array data any one task of the plan holds (at most max_mem)."""
        return max(job.layout.peak_task_memory for job in self._jobs)

    def _header(self) -> str:
        where = self._dest.target.describe()
        tasks = sum(spec.num_tasks for spec in self.spec)
        return f"{self._source.kind} -> {where}: {summary_line(self._jobs, tasks)}"

    def __repr__(self) -> str:
        return text_table(f"<Rechunked {self._header()}>", self._jobs)

    def _repr_html_(self) -> str:
        return html_table(f"Rechunked {self._header()}", self._jobs)

    def svg(self) -> str:
        """The plan as an SVG picture: every array's chunk grid, an arrow per stage."""
        return plan_svg(self._jobs, f"Rechunked {self._header()}")

    def result_line(self, elapsed: float) -> str:
        """What a run that took ``elapsed`` seconds did: speed, stages, tasks, bytes."""
        return result_line(self._jobs, sum(spec.num_tasks for spec in self.spec), elapsed)

    def summary(self) -> str:
        """The plan of every array: stages, tasks, bytes and peak task memory."""
        lines = [repr(self), *describe_jobs(self._jobs)]
        temp = self._dest.temp
        if temp is not None and temp.scratch and any(s.intermediates for s in self.spec):
            lines.append(
                f"intermediates: in {temp.base.describe()}, a scratch directory beside the "
                "target (no temp_store given), removed after a successful run"
            )
        return "\n".join(lines)


def _takes_progress(executor: Executor[Any]) -> bool:
    """Whether the executor's ``execute_plan`` accepts ``progress=`` (every built-in one does)."""
    parameters = inspect.signature(executor.execute_plan).parameters
    return "progress" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


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
    resume: bool = False,
    *,
    retries: int = DEFAULT_RETRIES,
    retry_backoff: float = DEFAULT_BACKOFF,
) -> Rechunked:
    """Plan a rechunk of ``source`` into ``target_store`` within ``max_mem`` per task.

    Same parameters as ``rechunker.rechunk``; see docs/api.md for every detail.

    Parameters
    ----------
    source : zarr.Array, zarr.Group, dask.array.Array or xarray.Dataset
    target_chunks : tuple, dict or None
        Sizes; or a dict by dimension name (or, for groups, by array name); ``-1``: all.
    max_mem : int or str
        Most bytes of array data one task may hold: ``268435456``, ``"256MB"``.
    target_store, temp_store : path, fsspec URL, zarr Store or zarr.Group
        Where the target and the intermediates go (``temp_store`` only when
        needed); the target may be a writable ``icechunk.Session`` (docs/icechunk.md).
    target_options, temp_options : dict, optional
        ``zarr.create_array`` keywords (``compressors``, ``shards``, ``overwrite``,
        ``storage_options``, ...), shared or keyed by array name.
    executor : str or Executor
        ``"threads"`` (default), ``"python"``, ``"dask"``, ``"prefect"``, ``"beam"``, ...
    array_name : str, optional
        The array's name inside a target or temp ``zarr.Group``.
    keep_temp : bool
        Keep the intermediates after a successful run.
    resume : bool
        Continue an interrupted run of the same job (docs/failures.md): what
        it left must match this plan, and ``execute()`` skips finished tasks.
    retries, retry_backoff : int, float
        Retries of each chunk read or write after a transient store error,
        and the seconds before the first (each later wait doubles).

    Raises
    ------
    ValueError, TypeError
        For bad input, before anything is written.
    """
    retry = RetryPolicy(retries, retry_backoff)  # checked first: it is plain input
    chosen = get_executor(executor)
    found, options = _resolve_source(open_source(source), target_options, temp_options)
    memory = parse_bytes(max_mem)
    dest = resolve_destination(
        target_store, temp_store, options, array_name=array_name, source_is_group=found.is_group
    )
    jobs = plan_jobs(found, target_chunks, memory, dest, options, engine_memory(chosen))
    return _prepare(found, jobs, dest, chosen, options.zarr_format, keep_temp, resume, retry)


def _prepare(
    found: Source,
    jobs: Sequence[ArrayJob],
    dest: Destination,
    chosen: Executor[Any],
    fmt: ZarrFormat,
    keep_temp: bool,
    resume: bool,
    retry: RetryPolicy,
) -> Rechunked:
    """Every check that needs the plan, in order; then create what the run writes into."""
    resume = resume or prepared_earlier(found, jobs, dest)
    check_places(found, jobs, dest, resume=resume)
    if not chosen.shares_memory:
        refuse_in_memory(
            [found.location, dest.target, dest.temp.base if dest.temp else None],
            type(chosen).__name__,
        )
    rehearse(found, jobs, dest, fmt)
    if resume:
        check_resume(found, jobs, dest, fmt)
    specs, plan = create_specs(
        found, jobs, dest, fmt, chosen, keep_temp=keep_temp, resume=resume, retry=retry
    )
    return Rechunked(chosen, plan, specs, jobs, found, dest, resumed=resume)


def _resolve_source(
    source: Source,
    target_options: Mapping[str, Any] | None,
    temp_options: Mapping[str, Any] | None,
) -> tuple[Source, Options]:
    """Resolve the options once, and describe the source as the target stores it."""
    options = resolve_options(
        [a.name for a in source.arrays],
        target_options,
        temp_options,
        encoding_keys=source.option_keys,
        source_format=source.zarr_format,
    )
    return source.encoded(options.encodings, options.zarr_format), options


def _as_text(heading: str, jobs: Sequence[ArrayJob]) -> str:
    """One line per array: its title, shape, dtype and layout."""
    lines = [heading]
    for job in jobs:
        lines.append(f"{job.array.title} {job.array.ref.shape} {job.array.ref.dtype}: ")
        lines[-1] += job.layout.summary()
    return "\n".join(lines)


def _as_svg(heading: str, jobs: Sequence[ArrayJob]) -> str:
    """The picture of :func:`~rechunker_core.display.plan_svg`, under a one-line summary."""
    tasks = sum(stage.num_tasks for job in jobs for stage in job.layout.stages)
    return plan_svg(jobs, f"{heading}: {summary_line(jobs, tasks)}")


@dataclass(frozen=True)
class PlanView:
    """A view of the plan ``rechunk`` would make, drawn without writing anything.

    :func:`describe_plan` and :func:`draw_plan` are its two instances: the
    same planning, two renderings.

    Attributes
    ----------
    render : callable
        ``render(heading, jobs)``: the view of the planned jobs, under a
        heading that names the source kind and ``max_mem``.
    """

    render: Callable[[str, Sequence[ArrayJob]], str]

    def __call__(
        self,
        source: Any,
        target_chunks: Any,
        max_mem: int | str,
        target_options: Mapping[str, Any] | None = None,
    ) -> str:
        """Plan as :func:`rechunk` would and return the view of that plan.

        Parameters
        ----------
        source : zarr.Array, zarr.Group, dask.array.Array or xarray.Dataset
            What :func:`rechunk` would read.
        target_chunks : tuple, dict or None
            The chunks wanted, as for :func:`rechunk`.
        max_mem : int or str
            The memory bound per task, as for :func:`rechunk`.
        target_options : dict, optional
            The target's ``zarr.create_array`` keywords, as for :func:`rechunk`
            (its ``shards`` change the plan).

        Returns
        -------
        str
            The rendered plan.
        """
        found, options = _resolve_source(open_source(source), target_options, None)
        memory = parse_bytes(max_mem)
        # Nowhere real: nothing is written, and the layout does not depend on the place.
        dest = Destination(StoreLocation("<target>"), temp=_ANY_TEMP)
        jobs = plan_jobs(found, target_chunks, memory, dest, options)
        return self.render(f"{found.kind}, max_mem {format_bytes(memory)}", jobs)


describe_plan = PlanView(_as_text)
"""Return the plan ``rechunk`` would make, as text, without writing anything.

``describe_plan(source, target_chunks, max_mem, target_options=None)``: see
:class:`PlanView`.
"""

draw_plan = PlanView(_as_svg)
"""Return the plan ``rechunk`` would make as an SVG picture, without writing anything.

``draw_plan(source, target_chunks, max_mem, target_options=None)``: see
:class:`PlanView`.
"""
