"""Prefect 3: the plan is a flow that runs the stages in order when called.

Within a stage (a round: stage ``k`` of every array, see
:func:`rechunker_core.copy.rounds`) the copy tasks are cut into contiguous
batches (:meth:`rechunker_core.copy.Round.batches`), and each batch is one
Prefect task run submitted to the flow's task runner; the flow waits for
every batch of a stage before it submits the next stage. A last task run deletes the intermediates.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

from rechunker_core.copy import Batch, Feed, Tracker, finish, rounds, run_batch, running_here
from rechunker_core.executors import import_engine
from rechunker_core.spec import StagedCopySpec

__all__ = ["QUIET_SETTINGS", "PrefectExecutor"]

#: Environment settings for quiet, reliable local runs (tests, benchmarks):
#: no analytics, no logs sent to the API, no server services we do not use.
#: Set them in ``os.environ`` before prefect is first imported; importing this
#: module does not import prefect.
QUIET_SETTINGS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
}

#: With ``batch_size=None`` a stage becomes at most this many task runs: Prefect
#: spends milliseconds on each run (more with a server), so a plan of 10**5
#: copy tasks must not become 10**5 runs.
MAX_RUNS_PER_STAGE = 500


class PrefectExecutor:
    """Builds a Prefect 3 flow that runs the copy tasks in batches.

    Parameters
    ----------
    task_runner : prefect.task_runners.TaskRunner, optional
        Where task runs execute. Defaults to a ``ThreadPoolTaskRunner`` with
        one thread per CPU (Prefect's own default has no bound, and every
        thread may hold ``max_mem`` of data). A ``DaskTaskRunner`` from
        ``prefect-dask`` runs them on a dask cluster.
    batch_size : int, optional
        Copy tasks per task run. By default tiny copy tasks are batched (see
        :meth:`rechunker_core.copy.Round.batches`), and a stage becomes at
        most :data:`MAX_RUNS_PER_STAGE` runs.
    retries : int
        Prefect retries of a failed batch (a batch may safely run again: every
        copy task rewrites whole chunks).
    retry_delay_seconds : float
        Wait before each retry.
    flow_name : str
        The flow's name in the Prefect UI.

    Notes
    -----
    A task runner other than ``ThreadPoolTaskRunner`` may run tasks in other
    processes, which cannot see in-memory stores: :func:`rechunker_core.rechunk`
    refuses them for such a runner, and a task that reaches one from another
    process raises ``ValueError``.
    """

    #: What Prefect holds per worker while a flow runs, besides the tasks: each
    #: task run's state, events and validated models (pydantic-core allocates
    #: outside Python's heap). Measured 0.5-2.3 MB per worker above what the same
    #: plan holds on threads (benchmarks/memory_model.py).
    engine_memory = 4 * 2**20

    def __init__(
        self,
        task_runner: Any | None = None,
        batch_size: int | None = None,
        retries: int = 0,
        retry_delay_seconds: float = 1.0,
        flow_name: str = "rechunk",
    ) -> None:
        import_engine("prefect", "prefect")  # fail here, before rechunk() writes anything
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be a positive integer")
        self.task_runner = task_runner
        self.batch_size = batch_size
        self.retries = retries
        self.retry_delay_seconds = retry_delay_seconds
        self.flow_name = flow_name

    @property
    def shares_memory(self) -> bool:
        """Whether the task runner runs tasks in this process (a thread pool)."""
        return self.task_runner is None or _threads_here(self.task_runner) > 0

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> Any:
        """Return a Prefect flow that runs ``specs`` when called with no arguments."""
        prefect = import_engine("prefect", "prefect")
        from prefect.cache_policies import NO_CACHE
        from prefect.futures import as_completed
        from prefect.task_runners import ThreadPoolTaskRunner
        from prefect.utilities.annotations import quote

        specs = tuple(specs)
        options: dict[str, Any] = {
            "cache_policy": NO_CACHE,
            "persist_result": False,
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
        }
        copy = prefect.task(
            _copy_batch,
            name="copy",
            task_run_name="stage {stage_number}: tasks {first}-{last}",
            **options,
        )
        cleanup = prefect.task(_finish, name="finish", **options)
        batch_size = self.batch_size
        feed = Feed()

        def rechunk() -> None:
            for round_ in rounds(specs):
                futures = [
                    copy.submit(quote(batch), round_.number, batch.tasks[0], batch.tasks[-1])
                    for batch in round_.batches(batch_size, most=MAX_RUNS_PER_STAGE)
                ]
                # The flow runs where it was called: results come back here, whatever
                # the task runner, and a listening Tracker hears of each.
                for future in as_completed(futures):
                    feed.report(round_.number, future.result())
            cleanup.submit(quote(specs)).result()

        rechunk.feed = feed  # type: ignore[attr-defined]
        runner = self.task_runner or ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1)
        return prefect.flow(
            rechunk, name=self.flow_name, task_runner=runner, validate_parameters=False
        )

    def execute_plan(self, plan: Any, progress: Tracker | None = None, **kwargs: Any) -> None:
        """Run the flow, reporting to ``progress``.

        ``kwargs`` go to ``plan.with_options`` (``task_runner=``, ...). On a
        thread pool every task run, the last one too, runs in this process, as
        in :func:`rechunker_core.copy.run_local`: freed memory is then reused and
        freed chunks are deleted off the task threads
        (:func:`rechunker_core.copy.running_here`).
        """
        feed: Feed = getattr(plan.fn, "feed", Feed(None))
        flow = plan.with_options(**kwargs) if kwargs else plan
        here = _threads_here(flow.task_runner)
        with feed.listening(progress), running_here(here) if here else contextlib.nullcontext():
            flow()


def _threads_here(task_runner: Any) -> int:
    """How many threads of this process ``task_runner`` runs task runs on: those
    of a ``ThreadPoolTaskRunner``, else 0."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if not isinstance(task_runner, ThreadPoolTaskRunner):
        return 0
    return int(getattr(task_runner, "_max_workers", 1))  # Prefect's own count, not public


# The functions Prefect runs.


def _copy_batch(batch: Batch, stage_number: int, first: int, last: int) -> int:
    # ``stage_number``, ``first`` and ``last`` only name the task run in the UI; a
    # retry skips what the failed attempt finished.
    return run_batch(batch, recheck=True)


def _finish(specs: tuple[StagedCopySpec, ...]) -> None:
    finish(specs)
