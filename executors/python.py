"""The sequential reference executor: one task after another, in this process."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rechunker_core.copy import copy_region, finish, stages_in_order
from rechunker_core.executors import Progress
from rechunker_core.spec import StagedCopySpec

__all__ = ["PythonExecutor"]

Plan = Callable[..., None]


class PythonExecutor:
    """Runs every task in order in the calling thread.

    The plan is a callable taking no required arguments; ``progress=`` may be
    passed to it (or to :meth:`execute_plan`) to hear of each finished task.
    """

    #: Tasks run in the calling process, so in-memory stores work.
    shares_memory = True

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> Plan:
        """Return a callable that runs ``specs``."""
        specs = tuple(specs)
        total = sum(spec.num_tasks for spec in specs)

        def plan(progress: Progress | None = None) -> None:
            done = 0
            for round_ in stages_in_order(specs):
                for stage in round_:
                    for region in stage.task_regions():
                        copy_region(stage, region)
                        done += 1
                        if progress:
                            progress(done, total)
            finish(specs)

        return plan

    def execute_plan(self, plan: Plan, **kwargs: Any) -> None:
        """Run ``plan``; accepts ``progress=``."""
        plan(**kwargs)
