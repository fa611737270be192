"""The source arrays: their codecs, where they live, and the synthetic data in them.

A source is generated once per shape, chunking and codec variant into the
data directory (``benchmarks/data/``, gitignored) and reused while its
``complete`` attribute is set.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr

from catalog import CODECS

DIMS = ("time", "lat", "lon")


def compressors(codec: str) -> Any:
    """The ``compressors`` of a codec variant, for ``zarr.create_array``."""
    if codec == "blosc":
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    if codec == "zstd":
        return "auto"  # zarr's default for format 3: zstd level 0
    raise ValueError(f"unknown codec variant {codec!r}; known: {', '.join(CODECS)}")


def source_path(
    data_dir: Path, shape: tuple[int, ...], chunks: tuple[int, ...], codec: str
) -> Path:
    """Where the source of this shape, chunking and codec variant lives."""
    fmt = CODECS[codec].zarr_format
    dims = "x".join(map(str, shape))
    return data_dir / f"source_{dims}_c{'x'.join(map(str, chunks))}_{codec}-v{fmt}.zarr"


def create_like(
    store: Any,
    source: zarr.Array[Any],
    chunks: tuple[int, ...],
    **options: Any,
) -> zarr.Array[Any]:
    """An empty array like ``source`` (dtype, format, codec, fill value, dimension
    names) with ``chunks``, replacing what is at ``store``."""
    fmt = source.metadata.zarr_format
    dims = dimension_names(source)
    names: dict[str, Any] = {"dimension_names": dims}
    if fmt == 2:
        names = {"attributes": {"_ARRAY_DIMENSIONS": dims}}
    return zarr.create_array(
        store=store,
        shape=source.shape,
        dtype=source.dtype,
        chunks=chunks,
        zarr_format=fmt,
        compressors=list(source.compressors) or None,
        fill_value=source.fill_value,
        overwrite=True,
        **names,
        **options,
    )


def dimension_names(array: zarr.Array[Any]) -> tuple[str, ...]:
    """The dimension names of a format 3 array, or the xarray attribute of a format 2 one."""
    names: Any
    if array.metadata.zarr_format == 3:
        names = array.metadata.dimension_names  # type: ignore[union-attr]
    else:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names) if names else DIMS


def same_encoding(source: zarr.Array[Any]) -> dict[str, Any]:
    """``target_options`` that give a target the source's zarr format and codec."""
    return {
        "zarr_format": source.metadata.zarr_format,
        "compressors": list(source.compressors) or None,
    }


def open_source(
    data_dir: Path, shape: tuple[int, ...], chunks: tuple[int, ...], codec: str
) -> zarr.Array[Any] | None:
    """The complete source, or None when it is missing or incomplete."""
    with contextlib.suppress(Exception):
        array = zarr.open_array(str(source_path(data_dir, shape, chunks, codec)), mode="r")
        if array.attrs.get("complete") and array.shape == shape and array.chunks == chunks:
            return array
    return None


def ensure_sources(
    data_dir: Path, shape: tuple[int, int, int], chunks: tuple[int, ...], codecs: list[str]
) -> None:
    """Write the missing sources of ``codecs`` (the same values into each, in one pass)."""
    missing = [c for c in codecs if open_source(data_dir, shape, chunks, c) is None]
    if not missing:
        return
    arrays = []
    for codec in missing:
        fmt = CODECS[codec].zarr_format
        names: dict[str, Any] = {"dimension_names": DIMS} if fmt == 3 else {}
        arrays.append(
            zarr.create_array(
                store=str(source_path(data_dir, shape, chunks, codec)),
                shape=shape,
                dtype="float32",
                chunks=chunks,
                zarr_format=fmt,
                compressors=compressors(codec),
                attributes={"units": "K", **({"_ARRAY_DIMENSIONS": DIMS} if fmt == 2 else {})},
                overwrite=True,
                **names,
            )
        )
    start = time.perf_counter()
    print(f"generating {shape} sources ({', '.join(missing)}) in {data_dir} ...", file=sys.stderr)
    write_field(arrays, shape, chunks[0])
    for array in arrays:
        array.attrs["complete"] = True
    print(f"generated in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def write_field(arrays: list[zarr.Array[Any]], shape: tuple[int, int, int], step: int) -> None:
    """Write the same smooth random float32 field to every array, ``step`` hours at a time.

    A latitude-dependent climate and seasonal cycle, a daily cycle that follows
    the sun around the globe, weather as a slowly varying random field, and a
    little measurement noise: compression behaves roughly as on real data.
    """
    hours, ny, nx = shape
    rng = np.random.default_rng(20261121)
    lat = np.linspace(-np.pi / 2, np.pi / 2, ny)[:, None]
    lon = np.linspace(0, 2 * np.pi, nx, endpoint=False)[None, :]
    climate = 300 - 45 * np.sin(lat) ** 2 + 3 * np.cos(3 * lon) * np.cos(lat)
    season_amplitude = 15 * np.sin(lat)
    weather = np.zeros((ny, nx))

    def smooth_noise() -> np.ndarray[Any, Any]:
        walk = rng.standard_normal((ny, nx)).cumsum(axis=0).cumsum(axis=1)
        walk -= walk.mean()
        scaled: np.ndarray[Any, Any] = walk / (walk.std() + 1e-12)
        return scaled

    for start in range(0, hours, step):
        t = np.arange(start, min(start + step, hours), dtype=np.float64)[:, None, None]
        weather = 0.9 * weather + 0.5 * smooth_noise()
        field = (
            climate
            + season_amplitude * np.sin(2 * np.pi * (t / 8760 - 0.25))
            + 5 * np.cos(lat) * np.cos(lon + 2 * np.pi * t / 24)
            + weather
            + 0.02 * rng.standard_normal((len(t), ny, nx))
        ).astype(np.float32)
        for array in arrays:
            array[start : start + len(t)] = field


def warm_up_codec(source: zarr.Array[Any], scratch: Path) -> None:
    """Decode one source chunk and encode it once, untimed: starts zarr's event loop
    and thread pool and loads the codec before the timed part."""
    data = np.asarray(source[tuple(slice(0, c) for c in source.chunks)])
    array = create_like(str(scratch), source, source.chunks)
    array[tuple(slice(0, n) for n in data.shape)] = data
    shutil.rmtree(scratch, ignore_errors=True)
