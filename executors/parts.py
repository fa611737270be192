"""Independent processes (HPC array jobs): a plan saved as JSON, run in parts.

The workflow::

    rechunker-core plan SRC --target T --temp TMP --save plan.json --parts N
    rechunker-core run-part plan.json --stage 0 --part I      # I = 0 .. N-1, any order
    rechunker-core run-part plan.json --stage 1 --part I      # after every part of stage 0
    rechunker-core finish plan.json                           # after every stage

Each part copies a contiguous share of its stage's tasks
(:meth:`rechunker_core.copy.Round.part`).
When a part finishes it leaves a marker in ``plan.json.done/``, N small files
per stage; a part of stage ``k`` refuses to start until every part of stage
``k - 1`` left its marker, and ``finish`` refuses until every stage is done.
So a part started too early, a wrong ``--of``, or a missing part stops with a
clear error instead of leaving fill values in the target.

:class:`PartsExecutor` runs the same workflow from Python, one subprocess per
part, as a batch system would.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from rechunker_core.copy import (
    Batch,
    Feed,
    Progress,
    ProgressListener,
    Round,
    RoundTotals,
    Tracker,
    check_driver,
    finish,
    rounds,
    run_batch,
)
from rechunker_core.spec import StagedCopySpec, dump_specs, load_specs

__all__ = [
    "PLAN_FORMAT",
    "PROGRESS_ENV",
    "PartsExecutor",
    "SavedPlan",
    "finish_plan",
    "load_plan",
    "run_part",
    "save_plan",
]

#: Names the JSON format of saved plans, so other JSON is recognised as not a plan.
PLAN_FORMAT = "rechunker-core plan, version 1"

#: Environment variable naming the run a part reports its progress to (the
#: token of a :class:`rechunker_core.copy.Feed`); :class:`PartsExecutor` sets it.
PROGRESS_ENV = "RECHUNKER_CORE_PROGRESS"


class SavedPlan:
    """A plan file and what it holds.

    Attributes
    ----------
    path : Path
    specs : tuple of StagedCopySpec
    parts : int
        How many parts each stage is split into.
    """

    def __init__(self, path: Path, specs: tuple[StagedCopySpec, ...], parts: int) -> None:
        self.path = path
        self.specs = specs
        self.parts = parts

    @property
    def rounds(self) -> list[Round]:
        """The stages of the plan, each a round over every array."""
        return rounds(self.specs)

    def marker(self, stage: int, part: int) -> Path:
        """The file that says part ``part`` of stage ``stage`` finished."""
        return self.path.with_name(self.path.name + ".done") / f"stage-{stage}-part-{part}"

    def missing_parts(self, stage: int) -> list[int]:
        """The parts of ``stage`` that have not finished."""
        return [i for i in range(self.parts) if not self.marker(stage, i).exists()]


def save_plan(specs: Sequence[StagedCopySpec], path: str | Path, parts: int) -> SavedPlan:
    """Write ``specs`` to ``path`` as JSON, split into ``parts`` parts per stage.

    Raises
    ------
    ValueError
        If ``parts`` is not positive, the file cannot be written, or an array
        lives in a store JSON cannot name (a Python object).
    """
    if parts < 1:
        raise ValueError(f"parts={parts} must be a positive integer")
    specs = tuple(specs)
    data = {"format": PLAN_FORMAT, "parts": parts, "specs": dump_specs(specs)}
    path = Path(path).absolute()
    try:
        path.write_text(json.dumps(data))
    except OSError as error:
        raise ValueError(f"cannot write the plan file {path}: {error.strerror}") from error
    return SavedPlan(path, specs, parts)


def load_plan(path: str | Path) -> SavedPlan:
    """Read a plan :func:`save_plan` wrote.

    Raises
    ------
    ValueError
        If the file is missing or is not a saved plan.
    """
    path = Path(path).absolute()
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"cannot read the plan file {path}: {error.strerror}") from error
    except ValueError as error:
        raise ValueError(f"{path} is not a plan saved by 'rechunker-core plan --save'") from error
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise ValueError(f"{path} is not a plan saved by 'rechunker-core plan --save'")
    try:
        specs = load_specs(data["specs"])
        parts = int(data["parts"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a plan saved by 'rechunker-core plan --save'") from error
    if not specs:
        raise ValueError(f"{path} holds no plan")
    return SavedPlan(path, specs, parts)


def run_part(
    plan: SavedPlan,
    stage: int,
    part: int,
    parts: int | None = None,
    progress: Progress | ProgressListener | None = None,
) -> int:
    """Run part ``part`` of stage ``stage``; return how many tasks it copied.

    ``progress`` hears of this part's own share of the stage. When the
    environment names a run in :data:`PROGRESS_ENV` (as :class:`PartsExecutor`
    does for its subprocesses), each batch is also reported to it.

    Raises
    ------
    ValueError
        For a stage or part the plan does not have, a ``parts`` other than the
        plan's, or a stage whose previous stage has not finished.
    """
    batches = _part_batches(plan, stage, part, parts)
    for spec in plan.specs:
        for claim in spec.claims:
            claim.renew()
    share = [RoundTotals(stage, sum(b.num_tasks for b in batches), _nbytes(batches))]
    tracker = Tracker.of_rounds(share, progress)
    feed = Feed(os.environ.get(PROGRESS_ENV))
    copied = 0
    try:
        for batch in batches:
            tasks = run_batch(batch)
            copied += tasks
            tracker.finished(tasks, 0)
            feed.report(stage, tasks)
    finally:
        tracker.close()
    marker = plan.marker(stage, part)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(f"{copied} tasks\n")
    return copied


def _nbytes(batches: Sequence[Batch]) -> int:
    """About what ``batches`` write: their share of each stage's bytes."""
    return sum(
        math.prod(b.stage.shape) * b.stage.source.dtype.itemsize * b.num_tasks // b.stage.num_tasks
        for b in batches
    )


def _part_batches(plan: SavedPlan, stage: int, part: int, parts: int | None) -> list[Batch]:
    """The batches of one part, once the request is checked against the plan."""
    rounds = plan.rounds
    if not 0 <= stage < len(rounds):
        raise ValueError(f"--stage {stage}: {plan.path} has stages 0 to {len(rounds) - 1}")
    if parts is not None and parts != plan.parts:
        raise ValueError(
            f"--of {parts}: {plan.path} was saved for {plan.parts} parts per stage "
            f"(plan --save --parts {plan.parts}); run parts 0 to {plan.parts - 1}"
        )
    if not 0 <= part < plan.parts:
        raise ValueError(f"--part {part}: {plan.path} has parts 0 to {plan.parts - 1}")
    if stage > 0 and (missing := plan.missing_parts(stage - 1)):
        raise ValueError(
            f"stage {stage} reads what stage {stage - 1} writes, and parts {missing} of "
            f"stage {stage - 1} have not finished; run them first"
        )
    return rounds[stage].part(part, plan.parts)


def finish_plan(plan: SavedPlan) -> None:
    """Delete the intermediates and release the target, once every stage is done.

    Raises
    ------
    ValueError
        If a part of some stage has not finished, or the plan writes into an
        Icechunk session that only the process that made it can commit.
    """
    check_driver(plan.specs, str(plan.path))
    for stage in range(len(plan.rounds)):
        if missing := plan.missing_parts(stage):
            raise ValueError(
                f"parts {missing} of stage {stage} have not finished; run them before finish"
            )
    finish(plan.specs)
    done = plan.marker(0, 0).parent
    for stage in range(len(plan.rounds)):
        for part in range(plan.parts):
            plan.marker(stage, part).unlink()
    done.rmdir()


class PartsExecutor:
    """Saves the plan as JSON and runs each part of each stage in a subprocess.

    This is what a batch system does with ``run-part`` (docs/executors.md);
    the plan (:attr:`SavedPlan.path`) may as well be run by hand or by an
    array job instead of :meth:`execute_plan`.

    Parameters
    ----------
    path : str or Path
        Where the plan file goes.
    parts : int
        Parts (processes) per stage.
    """

    #: Every part runs in a process of its own.
    shares_memory = False
    #: The plan outlives the process that made it: claims are held by lease.
    runs_after_exit = True

    def __init__(self, path: str | Path, parts: int = 1) -> None:
        if parts < 1:
            raise ValueError(f"parts={parts} must be a positive integer")
        self.path = Path(path).absolute()
        if not self.path.parent.is_dir():
            raise ValueError(f"cannot save the plan as {path}: no such directory")
        self.parts = parts

    def prepare_plan(self, specs: Sequence[StagedCopySpec]) -> SavedPlan:
        """Save ``specs`` to :attr:`path`; return the saved plan."""
        return save_plan(specs, self.path, self.parts)

    def execute_plan(self, plan: SavedPlan, progress: Tracker | None = None) -> None:
        """Run every part of every stage, one subprocess per part, then finish.

        The parts report each batch to ``progress`` as they copy it.
        """
        command = [sys.executable, "-m", "rechunker_core.cli", "run-part", str(plan.path)]
        feed = Feed() if progress is not None else Feed(None)
        env = {**os.environ, PROGRESS_ENV: feed.token} if feed.token else None
        with feed.listening(progress):
            for stage in range(len(plan.rounds)):
                processes = [
                    subprocess.Popen(
                        [*command, "--stage", str(stage), "--part", str(i), "--quiet"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=env,
                    )
                    for i in range(plan.parts)
                ]
                errors = [p.communicate()[1] for p in processes]
                for process, error in zip(processes, errors):
                    if process.returncode:
                        raise RuntimeError(f"stage {stage}: a part failed: {error.strip()}")
        finish_plan(plan)
