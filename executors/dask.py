"""Dask: the plan is a ``dask.delayed.Delayed`` that runs every stage as dask tasks.

The graph is built with the public task spec (:mod:`dask.task_spec`) and wrapped
in a ``Delayed``; no HighLevelGraph layers are built by hand. For a spec with
two stages of three tasks each (one batch per task)::

    copy(0,0,0) copy(0,0,1) copy(0,0,2)      stage 0 of spec 0
          \\          |          /
              barrier(0,0)                   a tree of 64-way nodes for many copies
          /          |          \\
    copy(0,1,0) copy(0,1,1) copy(0,1,2)      stage 1: each depends on the barrier only
          \\          |          /
              barrier(0,1)
                     |
                  finish                     deletes the intermediates (copy.finish)

Each copy node runs a range of copy tasks of one stage; the stage itself is a
data node of the graph, so it travels to each worker once rather than with
every node.

Several specs (a group) each get such a chain; ``finish`` waits for every
chain's last barrier. The chains do not wait for each other: stage 1 of one
array reads only what stage 0 of that same array wrote.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

from rechunker_core.copy import (
    Batch,
    Round,
    Tracker,
    finish,
    least_batch_size,
    run_batch,
    running_here,
)
from rechunker_core.executors import import_engine
from rechunker_core.spec import CopySpec, StagedCopySpec

__all__ = ["MAX_GRAPH_NODES", "DaskExecutor"]

#: With ``batch_size=None``, copy tasks are batched so that a plan has at most
#: this many nodes (copies, stages, barriers and the finish): a scheduler
#: spends about a millisecond per node, and a client holds every node in memory.
MAX_GRAPH_NODES = 100_000


class DaskExecutor:
    """Builds a ``dask.delayed.Delayed`` with one dask task per copy task.

    The plan can be computed on any dask scheduler and embedded in larger
    graphs (``dask.compute(rechunked.plan, other_collection)``).

    Parameters
    ----------
    batch_size : int, optional
        Copy tasks per dask task. By default tiny copy tasks are batched
        (see :meth:`rechunker_core.copy.Round.batches`), and a plan has at most
        about :data:`MAX_GRAPH_NODES` nodes.
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

    #: What dask holds per worker while a plan runs, besides the tasks: the
    #: scheduler's state and each task's results and callbacks (threaded
    #: scheduler), a worker's comms and task records (distributed). Measured
    #: 0.8-1.4 MB per worker above the same plan on threads on average, and up
    #: to 3 MB in single runs (benchmarks/memory_model.py at 64 MB).
    engine_memory = 2 * 2**20

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
        at_least = 1 if self.batch_size else least_batch_size(specs, _copy_budget(specs))
        token = uuid.uuid4().hex
        graph: dict[Any, Any] = {}
        last_barriers: list[Any] = []
        for s, spec in enumerate(specs):
            after: tuple[Any, ...] = ()
            for k, stage in enumerate(spec.stages):
                # The stage is data in the graph, sent to each worker once; a copy
                # task names only its range of tasks.
                stage_key = (f"rechunk-stage-{token}", s, k)
                graph[stage_key] = task_spec.DataNode(stage_key, stage)
                copies = []
                # Each array's stages chain on their own: a round of one stage.
                batches = Round(k, (stage,)).batches(self.batch_size, at_least=at_least)
                for b, batch in enumerate(batches):
                    key = (f"rechunk-copy-{token}", s, k, b)
                    start, stop = batch.tasks.start, batch.tasks.stop
                    graph[key] = Task(key, _copy_range, TaskRef(stage_key), start, stop, *after)
                    copies.append(TaskRef(key))
                after = (_barrier_tree(graph, f"rechunk-barrier-{token}-{s}-{k}", copies),)
            last_barriers.extend(after)
        final = f"rechunk-finish-{token}"
        graph[final] = Task(final, _finish, specs, *last_barriers)
        return delayed.Delayed(final, graph)

    def execute_plan(self, plan: Any, progress: Tracker | None = None, **kwargs: Any) -> None:
        """Run ``plan`` with ``dask.compute(plan, **kwargs)``, reporting to ``progress``.

        Keyword arguments (``scheduler=``, ...) override those given to the
        executor. Progress comes from dask's callbacks on local schedulers,
        and from the futures of the copy tasks on a ``distributed.Client``.
        """
        dask = import_engine("dask", "dask")
        kwargs = {**self.compute_kwargs, **kwargs}
        if progress is not None and (client := _client(kwargs.get("scheduler"))) is not None:
            _follow_futures(client, plan, progress)
            return
        here = 0 if _uses_other_processes(kwargs.get("scheduler")) else _threads_here(kwargs)
        with running_here(here) if here else contextlib.nullcontext():
            if progress is None:
                dask.compute(plan, **kwargs)
                return
            callbacks = import_engine("dask.callbacks", "dask")

            def posttask(key: Any, result: Any, *state: Any) -> None:
                if (round_number := _copy_round(key)) is not None:
                    progress.finished(result, round_number)

            with callbacks.Callback(posttask=posttask):
                dask.compute(plan, **kwargs)


def _copy_round(key: Any) -> int | None:
    """The round a key of :meth:`DaskExecutor.prepare_plan`'s graph copies, if it copies.

    >>> _copy_round(("rechunk-copy-0f3a", 0, 2, 7)), _copy_round("rechunk-finish-0f3a")
    (2, None)
    """
    if isinstance(key, tuple) and str(key[0]).startswith("rechunk-copy-"):
        return int(key[2])
    return None


def _client(scheduler: Any) -> Any | None:
    """The ``distributed.Client`` that ``dask.compute(scheduler=scheduler)`` would use, if any."""
    base = import_engine("dask.base", "dask")
    owner = getattr(base.get_scheduler(scheduler=scheduler), "__self__", None)
    return owner if type(owner).__name__ == "Client" else None


def _follow_futures(client: Any, plan: Any, progress: Tracker) -> None:
    """Run ``plan`` on ``client``, reporting each copy task as its future finishes."""
    distributed = import_engine("distributed", "dask")
    graph = dict(plan.__dask_graph__())
    rounds_of = {key: r for key in graph if (r := _copy_round(key)) is not None}
    *futures, final = client.get(graph, [*rounds_of, plan.key], sync=False)
    try:
        for future in distributed.as_completed(futures, loop=client.loop):
            progress.finished(future.result(), rounds_of[future.key])
            future.release()  # nothing keeps the finished task's result alive
        final.result()
    except BaseException:
        client.cancel([*futures, final])
        raise


def _uses_other_processes(scheduler: Any) -> bool:
    """Whether ``dask.compute(..., scheduler=scheduler)`` runs tasks in other processes.

    Any ``distributed.Client`` counts, even one of an in-process cluster.
    """
    if isinstance(scheduler, ProcessPoolExecutor):
        return True
    if scheduler is None and "distributed" not in sys.modules:
        # No Client can exist, and asking dask would import distributed (seconds).
        config = import_engine("dask", "dask").config.get("scheduler", None)
        return config in ("processes", "multiprocessing")
    base = import_engine("dask.base", "dask")
    multiprocessing = import_engine("dask.multiprocessing", "dask")
    get = base.get_scheduler(scheduler=scheduler)
    owner = getattr(get, "__self__", None)
    return get is multiprocessing.get or type(owner).__name__ == "Client"


def _threads_here(kwargs: dict[str, Any]) -> int:
    """How many threads dask's local scheduler runs tasks on with ``kwargs``
    (``dask.compute``'s): one for the synchronous scheduler, else as
    ``dask.threaded.get`` counts them."""
    dask = import_engine("dask", "dask")
    scheduler = kwargs.get("scheduler", dask.config.get("scheduler", None))
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return 1
    pool = scheduler if isinstance(scheduler, Executor) else kwargs.get("pool")
    pool = pool or dask.config.get("pool", None)
    if pool is not None:
        return int(getattr(pool, "_max_workers", 1))
    workers = kwargs.get("num_workers") or dask.config.get("num_workers", None)
    return int(workers or import_engine("dask.system", "dask").CPU_COUNT)


# The functions dask runs. Extra positional arguments are the keys a task waits
# for; their values are ignored.


def _copy_range(stage: CopySpec, start: int, stop: int, *after: Any) -> int:
    # Run again after a worker died: skip what the journal shows another worker did.
    return run_batch(Batch(stage, range(start, stop)), recheck=True)


def _barrier(*copied: int) -> int:
    return sum(copied)


#: Most dependencies of one barrier node: a barrier over 10**5 copy tasks is a
#: tree, so no node waits on (and no worker gathers) more results than this.
BARRIER_FAN_IN = 64


def _copy_budget(specs: Sequence[StagedCopySpec]) -> int:
    """Copy nodes that leave room, within :data:`MAX_GRAPH_NODES`, for the rest.

    Each stage adds its data node, the root of its barrier tree and a batch
    rounded up; the trees add at most one node per ``BARRIER_FAN_IN - 1`` copies.

    >>> from types import SimpleNamespace as NS
    >>> _copy_budget([NS(stages=(1, 2))] * 100)
    97821
    """
    stages = sum(len(spec.stages) for spec in specs)
    room = MAX_GRAPH_NODES - 3 * stages - 1
    return max(stages, room * (BARRIER_FAN_IN - 2) // (BARRIER_FAN_IN - 1))


def _barrier_tree(graph: dict[Any, Any], name: str, refs: list[Any]) -> Any:
    """Add barrier nodes over ``refs`` to ``graph``, a tree of :data:`BARRIER_FAN_IN`;
    return a reference to its root."""
    task_spec = import_engine("dask.task_spec", "dask")
    level = 0
    while True:
        groups = [refs[i : i + BARRIER_FAN_IN] for i in range(0, max(len(refs), 1), BARRIER_FAN_IN)]
        keys = [(name, level, i) for i in range(len(groups))]
        for key, group in zip(keys, groups):
            graph[key] = task_spec.Task(key, _barrier, *group)
        refs = [task_spec.TaskRef(key) for key in keys]
        if len(refs) == 1:
            return refs[0]
        level += 1


def _finish(specs: tuple[StagedCopySpec, ...], *after: Any) -> None:
    finish(specs)
