"""How a prepared rechunk shows itself: as text and as HTML (notebooks)."""

from __future__ import annotations

import html
from collections.abc import Sequence

from rechunker_core.algorithm import format_bytes
from rechunker_core.jobs import ArrayJob
from rechunker_core.spec import StagedCopySpec

__all__ = ["describe_jobs", "html_table", "summary_line", "text_table"]

Row = tuple[str, str, str, str, str]


def _rows(jobs: Sequence[ArrayJob], specs: Sequence[StagedCopySpec]) -> list[Row]:
    """One row per array of each chain: source, intermediates, target."""
    rows = []
    for job, spec in zip(jobs, specs, strict=True):
        name = job.name or "array"
        arrays = (
            [("source", spec.source)]
            + [(f"intermediate {i + 1}", ref) for i, ref in enumerate(spec.intermediates)]
            + [("target", spec.target)]
        )
        for role, ref in arrays:
            rows.append((name, role, str(ref.shape), str(ref.chunks), str(ref.dtype)))
    return rows


def summary_line(jobs: Sequence[ArrayJob], specs: Sequence[StagedCopySpec]) -> str:
    """Stages, tasks and bytes to move, in one line."""
    stages = max(len(job.layout.stages) for job in jobs)
    tasks = sum(spec.num_tasks for spec in specs)
    moved = sum(s.bytes_read + s.bytes_written for job in jobs for s in job.layout.stages)
    return f"{stages} stage(s), {tasks} tasks, {format_bytes(moved)} to move"


def text_table(header: str, jobs: Sequence[ArrayJob], specs: Sequence[StagedCopySpec]) -> str:
    """``header`` then one line per array of each chain."""
    lines = [header]
    for name, role, shape, chunks, dtype in _rows(jobs, specs):
        lines.append(f"  {name} {role}: shape {shape}, chunks {chunks}, dtype {dtype}")
    return "\n".join(lines)


def html_table(header: str, jobs: Sequence[ArrayJob], specs: Sequence[StagedCopySpec]) -> str:
    """``header`` (plain text) then a table of every array of each chain."""
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in _rows(jobs, specs)
    )
    return (
        f"<p>{html.escape(header)}</p>"
        "<table><tr><th>array</th><th>role</th><th>shape</th><th>chunks</th>"
        f"<th>dtype</th></tr>{cells}</table>"
    )


def describe_jobs(jobs: Sequence[ArrayJob]) -> list[str]:
    """Each array's layout: stages, tasks, bytes and peak task memory."""
    return [f"{job.name or 'array'}: {job.layout.summary()}" for job in jobs]
