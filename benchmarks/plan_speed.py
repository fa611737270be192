"""How long rechunker_core's planner takes: milliseconds per ``plan_layout`` call.

Run from the repository root::

    .venv/bin/python benchmarks/plan_speed.py [--repeat N]

The planner does no I/O, so this measures pure planning cost. Each workload is
planned ``N`` times; the best and the median time per plan are printed, with
the chosen plan.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass

from rechunker_core.algorithm import Layout, plan_layout
from rechunker_core.api import parse_bytes


@dataclass(frozen=True)
class Workload:
    name: str
    shape: tuple[int, ...]
    itemsize: int
    source_chunks: tuple[int, ...]
    target_chunks: tuple[int, ...]
    max_mem: str

    @property
    def source_chunk_count(self) -> int:
        return math.prod(-(-n // c) for n, c in zip(self.shape, self.source_chunks))

    @property
    def target_chunk_count(self) -> int:
        return math.prod(-(-n // c) for n, c in zip(self.shape, self.target_chunks))


WORKLOADS = [
    Workload(
        "issue 3-D: hourly maps -> pixel time series",
        (8760, 180, 360),
        4,
        (24, 180, 360),
        (8760, 10, 10),
        "256MB",
    ),
    Workload(
        "4-D, 10^6 source chunks",
        (1000, 1000, 100, 100),
        4,
        (1, 100, 10, 10),
        (1000, 1, 100, 1),
        "256MB",
    ),
    Workload(
        "4-D, 10^6 source chunks, small max_mem",
        (1000, 1000, 100, 100),
        4,
        (1, 100, 10, 10),
        (1000, 1, 100, 1),
        "16MB",
    ),
]


def time_plan(workload: Workload, repeat: int) -> tuple[list[float], Layout]:
    """Seconds of each of ``repeat`` plans, and the plan."""
    max_mem = parse_bytes(workload.max_mem)
    times = []
    plan = None
    for _ in range(repeat):
        start = time.perf_counter()
        plan = plan_layout(
            workload.shape,
            workload.itemsize,
            workload.source_chunks,
            workload.target_chunks,
            max_mem,
        )
        times.append(time.perf_counter() - start)
    assert plan is not None
    return times, plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="plans per workload (best of N)")
    args = parser.parse_args(argv)
    rows = []
    for workload in WORKLOADS:
        times, plan = time_plan(workload, max(1, args.repeat))
        best, median = min(times) * 1e3, statistics.median(times) * 1e3
        nbytes = math.prod(workload.shape) * workload.itemsize
        print(
            f"{workload.name}: shape {workload.shape}, {nbytes / 1e9:.0f} GB, "
            f"chunks {workload.source_chunks} ({workload.source_chunk_count:,} chunks) -> "
            f"{workload.target_chunks} ({workload.target_chunk_count:,} chunks), "
            f"max_mem {workload.max_mem}"
        )
        print(f"  best {best:.2f} ms, median {median:.2f} ms per plan (N={len(times)})")
        print("  " + plan.summary().replace("\n", "\n  "))
        rows.append((workload.name, best, median, len(plan.stages), len(times)))
    print()
    print("| workload | best ms | median ms | stages | N |")
    print("|---|---|---|---|---|")
    for name, best, median, stages, n in rows:
        print(f"| {name} | {best:.2f} | {median:.2f} | {stages} | {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
