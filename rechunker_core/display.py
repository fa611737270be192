"""How a rechunk shows itself: text, HTML and SVG pictures of the plan, and stores.

- :func:`text_table` and :func:`html_table`: ``repr()`` and the notebook view
  of a :class:`~rechunker_core.Rechunked`.
- :func:`plan_svg`: the plan as a picture: every array of each chain (source,
  intermediates, target) as a grid of its chunks, like dask's array repr,
  with an arrow per stage giving its tasks, bytes read and written and peak
  task memory.
- :func:`describe_store`: what ``rechunker-core info`` prints.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import zarr

from rechunker_core.algorithm import StageLayout, format_bytes
from rechunker_core.jobs import ArrayJob

__all__ = [
    "describe_jobs",
    "describe_store",
    "html_table",
    "plan_svg",
    "result_line",
    "summary_line",
    "text_table",
]

Row = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class _Picture:
    """One array of a chain as the views show it."""

    name: str
    role: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    shards: tuple[int, ...] | None = None


def _chain(job: ArrayJob) -> list[_Picture]:
    """Source, intermediates and target of one job, from its layout."""
    name, ref = job.array.title, job.array.ref
    shape, dtype = tuple(ref.shape), str(ref.dtype)
    pictures = [_Picture(name, "source", shape, tuple(ref.chunks), dtype)]
    for i, chunks in enumerate(job.layout.intermediate_chunks, start=1):
        pictures.append(_Picture(name, f"intermediate {i}", shape, chunks, dtype))
    shards = job.options.shards
    pictures.append(_Picture(name, "target", shape, job.target_chunks, dtype, shards))
    return pictures


def _rows(jobs: Sequence[ArrayJob]) -> list[Row]:
    """One row per array of each chain: source, intermediates, target."""
    return [
        (p.name, p.role, str(p.shape), str(p.chunks), p.dtype) for job in jobs for p in _chain(job)
    ]


def _moved(jobs: Sequence[ArrayJob]) -> tuple[int, int]:
    """Bytes read and bytes written, over every stage of every job."""
    stages = [s for job in jobs for s in job.layout.stages]
    return sum(s.bytes_read for s in stages), sum(s.bytes_written for s in stages)


def summary_line(jobs: Sequence[ArrayJob], tasks: int) -> str:
    """Stages, tasks and bytes to move (read plus written), in one line."""
    stages = max(len(job.layout.stages) for job in jobs)
    read, written = _moved(jobs)
    return (
        f"{stages} stage(s), {tasks} tasks, {format_bytes(read + written)} to move "
        f"({format_bytes(read)} read + {format_bytes(written)} written)"
    )


def result_line(jobs: Sequence[ArrayJob], tasks: int, elapsed: float) -> str:
    """What a finished run did, in one line: time, speed, stages, tasks, bytes.

    >>> from types import SimpleNamespace as NS
    >>> stage = NS(bytes_read=4 * 10**6, bytes_written=2 * 10**6)
    >>> ref = NS(shape=(10**6,), dtype=NS(itemsize=2))
    >>> job = NS(layout=NS(stages=(stage, stage)), array=NS(ref=ref))
    >>> result_line([job], 30, 2.0)
    'done in 2.0 s: 1.0 MB/s of array data, 2 stage(s), 30 tasks, read 8.0 MB, wrote 4.0 MB'
    """
    read, written = _moved(jobs)
    size = sum(math.prod(job.array.ref.shape) * job.array.ref.dtype.itemsize for job in jobs)
    rate = format_bytes(size / elapsed) if elapsed > 0 else "-"
    stages = max(len(job.layout.stages) for job in jobs)
    return (
        f"done in {elapsed:.1f} s: {rate}/s of array data, {stages} stage(s), {tasks} tasks, "
        f"read {format_bytes(read)}, wrote {format_bytes(written)}"
    )


def text_table(header: str, jobs: Sequence[ArrayJob]) -> str:
    """``header`` then one line per array of each chain."""
    lines = [header]
    for name, role, shape, chunks, dtype in _rows(jobs):
        lines.append(f"  {name} {role}: shape {shape}, chunks {chunks}, dtype {dtype}")
    return "\n".join(lines)


def html_table(header: str, jobs: Sequence[ArrayJob]) -> str:
    """``header`` (plain text), the plan's picture, then a table of every array."""
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in _rows(jobs)
    )
    return (
        f"<p>{html.escape(header)}</p>{plan_svg(jobs)}"
        "<table><tr><th>array</th><th>role</th><th>shape</th><th>chunks</th>"
        f"<th>dtype</th></tr>{cells}</table>"
    )


def describe_jobs(jobs: Sequence[ArrayJob]) -> list[str]:
    """Each array's layout: stages, tasks, bytes and peak task memory."""
    return [f"{job.array.title}: {job.layout.summary()}" for job in jobs]


# --------------------------------------------------------------------------
# The plan as SVG
# --------------------------------------------------------------------------

#: The longest side of an array's picture, and the least any side gets.
_SIDE, _LEAST = 120.0, 12.0
#: Past this many chunks along a side, the grid is shaded instead of lined.
_MOST_LINES = 40
#: Depth is drawn at 45 degrees, shortened by this factor.
_DEPTH = 0.5
_ARROW = 170.0
_FONT = 'font-family="sans-serif" font-size="11"'


def _sides(shape: tuple[int, ...]) -> list[float]:
    """Pixel lengths of the last three dimensions: by the cube root of their ratio.

    Every side is at least :data:`_LEAST`, so a dimension of 10 next to one
    of 10**5 stays visible.

    >>> [round(s) for s in _sides((100, 100))], [round(s) for s in _sides((8, 1000))]
    ([120, 120], [24, 120])
    """
    dims = [max(n, 1) for n in shape[-3:]] or [1]
    longest = max(dims)
    return [max(_LEAST, _SIDE * (n / longest) ** (1 / 3)) for n in dims]


def _cuts(size: int, chunk: int, length: float) -> list[float]:
    """Offsets of the chunk boundaries inside a side of ``length`` pixels.

    >>> _cuts(10, 4, 100.0)
    [40.0, 80.0]
    """
    if size <= chunk or math.ceil(size / chunk) > _MOST_LINES:
        return []
    return [length * k / size for k in range(chunk, size, chunk)]


def _dense(size: int, chunk: int) -> bool:
    return math.ceil(size / max(chunk, 1)) > _MOST_LINES


def _lines(points: Iterator[tuple[float, float, float, float]]) -> str:
    return "".join(
        f'<line x1="{a:.1f}" y1="{b:.1f}" x2="{c:.1f}" y2="{d:.1f}" />' for a, b, c, d in points
    )


def _face(corners: Sequence[tuple[float, float]], shade: bool) -> str:
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in corners)
    fill = "#8fb3d9" if shade else "#ecb172"
    return f'<polygon points="{points}" fill="{fill}" fill-opacity="0.8" stroke="black" />'


def _grid_2d(shape: tuple[int, ...], chunks: tuple[int, ...], x: float, y: float) -> str:
    """A 1-D or 2-D array: a rectangle cut by its chunk boundaries."""
    rows, cols = ((1, *shape), (1, *chunks)) if len(shape) < 2 else (shape[-2:], chunks[-2:])
    height, width = _sides(rows)
    if len(shape) < 2:
        height = _LEAST
    shade = _dense(rows[0], cols[0]) or _dense(rows[1], cols[1])
    rect = [(x, y), (x + width, y), (x + width, y + height), (x, y + height)]
    verticals = ((x + c, y, x + c, y + height) for c in _cuts(rows[1], cols[1], width))
    horizontals = ((x, y + c, x + width, y + c) for c in _cuts(rows[0], cols[0], height))
    return _face(rect, shade) + _lines(verticals) + _lines(horizontals)


def _box(shape: tuple[int, ...], chunks: tuple[int, ...], x: float, y: float) -> str:
    """A 3-D (or more) array: a box of its last three dimensions, depth drawn at 45 degrees."""
    (n0, n1, n2), (c0, c1, c2) = shape[-3:], chunks[-3:]
    depth, height, width = _sides(shape)
    d = depth * _DEPTH
    fx, fy = x, y + d  # the front face's top-left corner
    front = [(fx, fy), (fx + width, fy), (fx + width, fy + height), (fx, fy + height)]
    top = [(fx, fy), (fx + d, fy - d), (fx + width + d, fy - d), (fx + width, fy)]
    side = [(fx + width, fy), (fx + width + d, fy - d)]
    side += [(fx + width + d, fy + height - d), (fx + width, fy + height)]
    across, down, back = _cuts(n2, c2, width), _cuts(n1, c1, height), _cuts(n0, c0, d)
    parts = [
        _face(front, _dense(n1, c1) or _dense(n2, c2)),
        _face(top, _dense(n0, c0) or _dense(n2, c2)),
        _face(side, _dense(n0, c0) or _dense(n1, c1)),
        _lines((fx + c, fy, fx + c, fy + height) for c in across),
        _lines((fx, fy + c, fx + width, fy + c) for c in down),
        _lines((fx + c, fy, fx + c + d, fy - d) for c in across),
        _lines((fx + b, fy - b, fx + width + b, fy - b) for b in back),
        _lines((fx + width, fy + c, fx + width + d, fy + c - d) for c in down),
        _lines((fx + width + b, fy - b, fx + width + b, fy + height - b) for b in back),
    ]
    return "".join(parts)


def _extent(shape: tuple[int, ...]) -> tuple[float, float]:
    """Width and height of an array's picture."""
    if len(shape) >= 3:
        depth, height, width = _sides(shape)
        return width + depth * _DEPTH, height + depth * _DEPTH
    if len(shape) == 2:
        height, width = _sides(shape)
        return width, height
    return _sides(shape)[0], _LEAST


def _text(x: float, y: float, lines: Sequence[str], anchor: str = "middle") -> str:
    spans = "".join(
        f'<tspan x="{x:.1f}" dy="{0 if i == 0 else 13}">{html.escape(line)}</tspan>'
        for i, line in enumerate(lines)
    )
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT}>{spans}</text>'


#: The least width of an array's column: its labels must fit.
_LABEL_WIDTH = 150.0


def _array(picture: _Picture, left: float, top: float, height: float) -> tuple[str, float]:
    """One array's group (grid and labels), its top at ``top``; and its column's width."""
    width, drawn = _extent(picture.shape)
    column = max(width, _LABEL_WIDTH)
    x, y = left + (column - width) / 2, top + (height - drawn) / 2
    shape, chunks = picture.shape or (1,), picture.chunks or (1,)
    grid = _box(shape, chunks, x, y) if len(shape) >= 3 else _grid_2d(shape, chunks, x, y)
    labels = [picture.role, f"shape {shape}", f"chunks {chunks}"]
    if picture.shards is not None:
        labels.append(f"shards {picture.shards}")
    label = _text(left + column / 2, top + height + 16, labels)
    element = (
        f'<g class="array" data-name="{html.escape(picture.name)}" '
        f'data-role="{html.escape(picture.role)}"><title>{html.escape(picture.name)} '
        f"{html.escape(picture.role)}</title>{grid}{label}</g>"
    )
    return element, column


def _arrow(number: int, stage: StageLayout, x: float, y: float) -> str:
    """The arrow of stage ``number``: from ``x`` to ``x + _ARROW`` at height ``y``."""
    start, end = x + 10, x + _ARROW - 10
    head = f"{end - 8:.1f},{y - 4:.1f} {end:.1f},{y:.1f} {end - 8:.1f},{y + 4:.1f}"
    above = [f"stage {number}: {stage.num_tasks} tasks"]
    below = [
        f"read {format_bytes(stage.bytes_read)}",
        f"write {format_bytes(stage.bytes_written)}",
        f"peak task {format_bytes(stage.peak_task_memory)}",
    ]
    return (
        f'<g class="stage" data-stage="{number}">'
        f'<line x1="{start:.1f}" y1="{y:.1f}" x2="{end:.1f}" y2="{y:.1f}" stroke="black" />'
        f'<polygon points="{head}" fill="black" />'
        f"{_text(x + _ARROW / 2, y - 8, above)}{_text(x + _ARROW / 2, y + 16, below)}</g>"
    )


def _job_row(job: ArrayJob, top: float) -> tuple[str, float, float]:
    """One job's chain, left to right; its SVG, width and height."""
    pictures = _chain(job)
    height = max(_extent(p.shape)[1] for p in pictures)
    parts, x = [_text(0, top - 6, [job.array.title], anchor="start")], 0.0
    for i, picture in enumerate(pictures):
        if i:
            parts.append(_arrow(i - 1, job.layout.stages[i - 1], x, top + height / 2))
            x += _ARROW
        element, width = _array(picture, x, top, height)
        parts.append(element)
        x += width
    return "".join(parts), x, height + 16 + 13 * 4


def plan_svg(jobs: Sequence[ArrayJob], title: str = "") -> str:
    """The plan as an SVG picture: one row per array, its chain from source to target."""
    rows, top, width = [], 42.0 if title else 18.0, 0.0
    for job in jobs:
        svg, row_width, row_height = _job_row(job, top)
        rows.append(svg)
        width, top = max(width, row_width), top + row_height + 24
    heading = _text(0, 14, [title], anchor="start") if title else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 20:.0f}" height="{top:.0f}" '
        f'viewBox="-10 0 {width + 20:.0f} {top:.0f}" style="stroke-width:1">'
        f'<g stroke="black" stroke-width="0.6">{heading}{"".join(rows)}</g></svg>'
    )


# --------------------------------------------------------------------------
# What a store holds
# --------------------------------------------------------------------------


def _codecs(array: zarr.Array[Any]) -> str:
    names = [
        type(codec).__name__
        for codec in (*array.filters, array.serializer, *array.compressors)
        if codec is not None
    ]
    return ", ".join(names) or "none"


def _array_line(name: str, array: zarr.Array[Any]) -> str:
    dims: Any = getattr(array.metadata, "dimension_names", None) or array.attrs.get(
        "_ARRAY_DIMENSIONS"
    )
    shards = array.shards if array.metadata.zarr_format == 3 else None
    return (
        f"{name}: shape {array.shape}, {array.dtype}, chunks {array.chunks}, "
        f"shards {shards or 'none'}, codecs {_codecs(array)}, "
        f"dims {tuple(dims) if dims else 'none'}, {format_bytes(array.nbytes)} "
        f"({format_bytes(array.nbytes_stored())} stored), zarr format {array.metadata.zarr_format}"
    )


def describe_store(node: zarr.Array[Any] | zarr.Group, where: str) -> str:
    """Every array of a store, one line each: shape, dtype, chunks, shards, codecs, size."""
    if isinstance(node, zarr.Array):
        return _array_line(where, node)
    arrays = sorted(
        (name, member)
        for name, member in node.members(max_depth=None)
        if isinstance(member, zarr.Array)
    )
    lines = [f"{where}: zarr group (format {node.metadata.zarr_format}), {len(arrays)} array(s)"]
    lines += [f"  {_array_line(name, array)}" for name, array in arrays]
    return "\n".join(lines)
