"""Run one benchmark job in this fresh process and write its outcome as JSON.

``run.py`` starts one worker per case, codec and repetition::

    python benchmarks/worker.py --job '{"case": "threads", ...}' --result out.json

(run.py prints the exact command of each job, to rerun one by hand). The
worker does the untimed setup (page cache, codec warm-up, clusters, servers),
measures the timed part with :mod:`measure`, checks the target against the
source, and deletes what it wrote under ``<data_dir>/work/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from catalog import CASES_BY_NAME, Job, resolve_chunks
from latency import run_latency
from measure import Outcome, measured, warm_page_cache
from moto_s3 import run_s3
from scale import run_scale
from w1 import W1_CASES, Context, Skip
from workloads import ensure_sources, open_source, source_path, warm_up_codec


def run_w1(job: Job, work_dir: Path) -> Outcome:
    """A W1 case: setup, the timed rechunk, the check, teardown."""
    data_dir = Path(job.data_dir)
    chunks = resolve_chunks(job.source_chunks, job.shape)
    source = open_source(data_dir, job.shape, chunks, job.codec)
    if source is None:
        raise RuntimeError("the source is missing: run.py generates it before the cases")
    path = source_path(data_dir, job.shape, chunks, job.codec)
    start = time.perf_counter()
    warm_page_cache(path)
    warm_up_codec(source, work_dir / "warm-up.zarr")
    ctx = Context(job, source, path, work_dir)
    outcome = Outcome()
    with W1_CASES[job.case](ctx) as run:
        outcome.setup_s = time.perf_counter() - start
        with measured(outcome.usage):
            target = run()
        outcome.checked(source, target)
    outcome.notes += ctx.notes
    stage_cpu(outcome, ctx.clock.windows())
    return outcome


def stage_cpu(outcome: Outcome, windows: list[tuple[float, float]]) -> None:
    """Add the CPU utilisation during the stages, whole and per stage (ours only),
    and how busy the whole machine was then, and the hypervisor's steal."""
    if not windows:
        return
    usage = outcome.usage

    def util(start: float, end: float) -> float | None:
        value = usage.cpu_util_between(start, end)
        return None if math.isnan(value) else value

    start, end = windows[0][0], windows[-1][1]
    outcome.extra["stages_s"] = end - start
    outcome.extra["stages_cpu_util"] = util(start, end)
    outcome.extra["stage_cpu_utils"] = [util(*w) for w in windows]
    busy, steal = usage.machine_between(start, end)
    if not math.isnan(busy):
        outcome.extra["stages_machine_busy"] = busy
        outcome.extra["stages_steal"] = steal


def prepare(job: Job, work_dir: Path) -> Outcome:
    """Generate the sources listed in ``job.extra["sources"]`` that are missing."""
    for shape, chunks, codecs in job.extra["sources"]:
        ensure_sources(Path(job.data_dir), tuple(shape), tuple(chunks), codecs)
    return Outcome(status="OK")


RUNNERS: dict[str, Callable[[Job, Path], Outcome]] = {
    "w1": run_w1,
    "latency": run_latency,
    "s3": run_s3,
    "scale": run_scale,
    "prepare": prepare,
}


def run_job(job: Job) -> Outcome:
    """Run ``job`` in a fresh work directory; errors and skips become the outcome."""
    kind = "prepare" if job.case == "prepare" else CASES_BY_NAME[job.case].kind
    if kind == "w1" and job.case not in W1_CASES:
        raise SystemExit(f"case {job.case!r} is in catalog.CASES but not in w1.W1_CASES")
    work_dir = Path(job.data_dir) / "work" / f"{job.case}-{os.getpid()}"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        return RUNNERS[kind](job, work_dir)
    except Skip as skip:
        return Outcome(status="SKIP", notes=[str(skip)])
    except Exception as error:
        traceback.print_exc()
        return Outcome(status="ERROR", notes=[f"{type(error).__name__}: {error}"[:300]])
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def main() -> int:
    # rechunker_core consolidates the metadata of groups, and zarr warns on format 3.
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", required=True, help="the job as JSON (catalog.Job)")
    parser.add_argument("--result", required=True, type=Path, help="where to write the outcome")
    args = parser.parse_args()
    outcome = run_job(Job.from_json(args.job))
    args.result.write_text(json.dumps(outcome.to_dict()))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
