"""Dask: the plan is a ``dask.delayed.Delayed`` that runs every stage as dask tasks.

The graph is built with the public task spec (:mod:`dask.task_spec`) and wrapped
in a ``Delayed``; no HighLevelGraph layers are built by hand. For a spec with
two stages of three tasks each (one batch per task)::

    copy(0,0,0) copy(0,0,1) copy(0,0,2)      stage 0 of spec 0
          \\          |          /
              barrier(0,0)
          /          |          \\
    copy(0,1,0) copy(0,1,1) copy(0,1,2)      stage 1: each depends on the barrier only
          \\          |          /
              barrier(0,1)
                     |
                  finish                     deletes the intermediates (copy.finish)

Several specs (a group) each get such a chain; ``finish`` waits for every
chain's last barrier. The chains do not wait for each other: stage 1 of one
array reads only what stage 0 of that same array wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from rechunker_core.copy import Batch, Round, finish, run_batch
from rechunker_core.executors import import_engine
from rechunker_core.spec import StagedCopySpec

__all__ = ["DaskExecutor"]


class DaskExecutor:
    """Builds a ``dask.delayed.Delayed`` with one dask task per copy task.

    The plan can be computed on any dask scheduler and embedded in larger
    graphs (``dask.compute(rechunked.plan, other_collection)``).

    Parameters
    ----------
    batch_size : int, optional
        Copy tasks per dask task. By default tiny copy tasks are batched
        (see :meth:`rechunker_core.copy.Round.batches`) and others are not.
    **compute_kwargs
        Defaults for :func:`dask.compute` in :meth:`execute_plan`, such as
        ``scheduler="processes"`` or ``scheduler=client``.

    Notes
    -----
    Schedulers that run tasks in other processes (``"processes"``, a
    ``distributed.Client``) cannot see an in-memory store: :func:`rechunker_core.rechunk`
    refuses it up front for the scheduler given here, and a task that runs in
    another process anyway (another scheduler passed to ``execute_plan``, a
    plan embedded in a user's graph) raises ``ValueError`` when it opens the
    store, instead of writing to a copy of it.
    """

    def __init__(self, batch_size: int | None = None, **compute_kwargs: Any) -> None:
        import_engine("dask", "dask")  # fail here, before rechunk() writes anything
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer")
        self.batch_size = batch_size
        self.compute_kwargs = compute_kwargs

    @property
    def shares_memory(self) -> bool:
        """Whether the scheduler given to the executor runs tasks in this process."""
        return not _uses_other_processes(self.compute_kwargs.get("scheduler"))

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> Any:
        """Return a ``dask.delayed.Delayed`` that runs ``specs`` and then cleans up."""
        import_engine("dask", "dask")  # first: the package itself may be missing
        delayed = import_engine("dask.delayed", "dask")
        task_spec = import_engine("dask.task_spec", "dask")
        Task, TaskRef = task_spec.Task, task_spec.TaskRef

        specs = tuple(specs)
        token = uuid.uuid4().hex
        copy_name, barrier_name = f"rechunk-copy-{token}", f"rechunk-barrier-{token}"
        graph: dict[Any, Any] = {}
        last_barriers: list[Any] = []
        for s, spec in enumerate(specs):
            after: tuple[Any, ...] = ()
            for k, stage in enumerate(spec.stages):
                copies = []
                # Each array's stages chain on their own: a round of one stage.
                for b, batch in enumerate(Round(k, (stage,)).batches(self.batch_size)):
                    key = (copy_name, s, k, b)
                    graph[key] = Task(key, _copy_batch, batch, *after)
                    copies.append(TaskRef(key))
                barrier = (barrier_name, s, k)
                graph[barrier] = Task(barrier, _barrier, *copies)
                after = (TaskRef(barrier),)
            last_barriers.extend(after)
        final = f"rechunk-finish-{token}"
        graph[final] = Task(final, _finish, specs, *last_barriers)
        return delayed.Delayed(final, graph)

    def execute_plan(self, plan: Any, **kwargs: Any) -> None:
        """Run ``plan`` with ``dask.compute(plan, **kwargs)``.

        Keyword arguments (``scheduler=``, ...) override those given to the
        executor.
        """
        dask = import_engine("dask", "dask")
        dask.compute(plan, **{**self.compute_kwargs, **kwargs})


def _uses_other_processes(scheduler: Any) -> bool:
    """Whether ``dask.compute(..., scheduler=scheduler)`` runs tasks in other processes.

    Any ``distributed.Client`` counts, even one of an in-process cluster.
    """
    if isinstance(scheduler, ProcessPoolExecutor):
        return True
    base = import_engine("dask.base", "dask")
    multiprocessing = import_engine("dask.multiprocessing", "dask")
    get = base.get_scheduler(scheduler=scheduler)
    owner = getattr(get, "__self__", None)
    return get is multiprocessing.get or type(owner).__name__ == "Client"


# The functions dask runs. Extra positional arguments are the keys a task waits
# for; their values are ignored.


def _copy_batch(batch: Batch, *after: Any) -> int:
    # Run again after a worker died: skip what the journal shows another worker did.
    return run_batch(batch, recheck=True)


def _barrier(*copied: int) -> int:
    return sum(copied)


def _finish(specs: tuple[StagedCopySpec, ...], *after: Any) -> None:
    finish(specs)
