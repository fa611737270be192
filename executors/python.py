"""The sequential reference executor: one task after another, in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rechunker_core.copy import Progress, Tracker, run_local
from rechunker_core.spec import StagedCopySpec

__all__ = ["PythonExecutor"]

Plan = Callable[..., None]


class PythonExecutor:
    """Runs every task in order in the calling thread.

    The plan is a callable taking no required arguments; ``progress=`` may be
    passed to it (or to :meth:`execute_plan`) to hear of each finished task:
    a callable receiving ``(tasks_done, tasks_total)``, or a
    :class:`~rechunker_core.copy.Tracker`.
    """

    #: Tasks run in the calling process, so in-memory stores work.
    shares_memory = True

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> Plan:
        """Return a callable that runs ``specs``."""
        specs = tuple(specs)

        def plan(progress: Tracker | Progress | None = None) -> None:
            run_local(specs, 1, progress)

        return plan

    def execute_plan(self, plan: Plan, progress: Tracker | Progress | None = None) -> None:
        """Run ``plan``, reporting to ``progress``."""
        plan(progress=progress)
