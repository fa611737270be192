"""What the benchmark can run: the cases, the codec variants, and one job's description.

This module imports only the standard library: the driver (``run.py``) reads
it without importing zarr, numpy or any engine, so the parent process stays
small and idle while the workers measure.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: Mebibytes: every RSS figure is reported in MiB.
MIB = 2**20

#: The issue's W1 workload.
W1_SHAPE = (8760, 180, 360)
W1_SOURCE_CHUNKS = (24, -1, -1)
W1_TARGET_CHUNKS = (-1, 10, 10)

#: The latency case: 240 hours of W1's grid, 62 MB, 648 target chunks of (240, 10, 10).
LATENCY_SHAPE = (240, 180, 360)
#: The S3 case: small, because moto keeps every object in its own memory.
S3_SHAPE = (720, 90, 180)
#: The scale case: one ERA5-sized variable, hourly for 40 years on a 0.25 degree grid.
SCALE_SHAPE = (350640, 721, 1440)


@dataclass(frozen=True)
class CaseInfo:
    """One named case.

    Attributes
    ----------
    name, label
        What ``--only`` takes, and what ``--list`` says of it.
    kind
        ``"w1"`` (the main workload, a ratio to ``copy``), ``"latency"``, ``"s3"``
        or ``"scale"``: which module runs it and which table reports it.
    process_based
        Whether the engine keeps other processes (a cluster, a server): its
        memory bound applies to the increase of the tree's RSS over the idle
        engine, not to the peak.
    variants
        Jobs per repetition: the latency case runs each executor with and
        without the added latency.
    codec
        The one codec variant it runs with, if not each of the workload's.
    """

    name: str
    label: str
    kind: str = "w1"
    process_based: bool = False
    variants: tuple[str, ...] = ("",)
    codec: str = ""


CASES: tuple[CaseInfo, ...] = (
    CaseInfo("copy", "plain same-chunk copy: dask.array.from_zarr(src).to_zarr(dst), 2 threads"),
    CaseInfo("threads", "ours, threads executor"),
    CaseInfo("python", "ours, python executor (one thread)"),
    CaseInfo("dask-threads", "ours, dask executor, threaded scheduler"),
    CaseInfo(
        "dask-distributed",
        "ours, dask executor on a LocalCluster of processes (workers x 1 thread)",
        process_based=True,
    ),
    CaseInfo("beam", "ours, beam executor, DirectRunner multi_threading"),
    CaseInfo(
        "prefect",
        "ours, prefect executor, temporary local server started untimed",
        process_based=True,
    ),
    CaseInfo("xarray", "ours on an xarray Dataset over the source, threads executor"),
    CaseInfo("dask-rechunk", "dask's own from_zarr(src).rechunk(chunks).to_zarr(dst)"),
    CaseInfo("tensorstore", "tensorstore: one write of the source in a Transaction"),
    CaseInfo(
        "latency-threads",
        "ours, threads executor, every get/set 20 ms late (and on the plain store)",
        kind="latency",
        variants=("delayed", "plain"),
    ),
    CaseInfo(
        "latency-dask-threads",
        "ours, dask threaded scheduler, every get/set 20 ms late (and on the plain store)",
        kind="latency",
        variants=("delayed", "plain"),
    ),
    CaseInfo("s3", "ours, threads executor, source/temp/target on moto S3", kind="s3"),
    CaseInfo(
        "scale",
        "rechunk() of a metadata-only group for the dask executor; run on a LocalCluster",
        kind="scale",
        codec="zstd",  # the group has zarr's defaults; it holds no chunk to compress
    ),
)

CASES_BY_NAME = {case.name: case for case in CASES}


@dataclass(frozen=True)
class CodecVariant:
    """Source and target format and codec of a workload variant."""

    name: str
    zarr_format: Literal[2, 3]
    description: str


CODECS: dict[str, CodecVariant] = {
    "blosc": CodecVariant("blosc", 2, "Zarr format 2, numcodecs.Blosc lz4 clevel 5 byte-shuffle"),
    "zstd": CodecVariant("zstd", 3, "Zarr format 3, zarr's default codec (zstd level 0)"),
}

#: ``--workload`` -> codec variants. ``W1`` is both.
WORKLOADS = {"W1": ("blosc", "zstd"), "W1-blosc": ("blosc",), "W1-zstd": ("zstd",)}


@dataclass
class Job:
    """Everything a worker process needs to run one case once (JSON on its command line)."""

    case: str
    codec: str
    data_dir: str
    shape: tuple[int, ...]
    source_chunks: tuple[int, ...]
    target_chunks: tuple[int, ...]
    max_mem: int
    workers: int
    rep: int = 0
    variant: str = ""
    scale_arrays: int = 10
    scale_run_arrays: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        values = json.loads(text)
        for key in ("shape", "source_chunks", "target_chunks"):
            values[key] = tuple(values[key])
        return cls(**values)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10}
_UNITS |= {"mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """Bytes in ``"256MB"``, ``"64MiB"`` or ``"1000"`` (MB = 10**6, as rechunk counts).

    >>> parse_size("256MB"), parse_size("1GiB")
    (256000000, 1073741824)
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size: give e.g. 256MB, 1.5GB or 64MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def resolve_chunks(chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk sizes with ``-1`` as the whole dimension and sizes clipped to it.

    >>> resolve_chunks((24, -1, -1), (8760, 180, 360))
    (24, 180, 360)
    """
    return tuple(n if c == -1 else min(c, n) for c, n in zip(chunks, shape))


def rss_bound(max_mem: int, workers: int) -> float:
    """The issue's memory goal in bytes: 1.2 x max_mem x workers + 200 MiB."""
    return 1.2 * max_mem * workers + 200 * MIB
