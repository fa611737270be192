"""Where source, intermediates and target live: paths, fsspec URLs with
storage_options, zarr Stores, zarr Groups, and S3 (a local moto server)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy.testing as npt
import pytest
import zarr
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from rechunker_core import StagedCopySpec, rechunk
from tests.helpers import ArrayFactory, assert_same_array, sample_data

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (48, 30, 20), (1, 30, 20), (48, 5, 5)
#: Small enough that the plan needs an intermediate array.
MAX_MEM = "200KB"


def _check(rechunked: Any, source: zarr.Array) -> None:
    assert len(rechunked.spec[0].stages) == 2
    target = rechunked.execute()
    assert target.chunks == TARGET_CHUNKS
    assert_same_array(target, source)


# Each returns (store to pass, options for it) for a fresh place under tmp_path.
PLACES: dict[str, Callable[[Path, str], tuple[Any, dict[str, Any]]]] = {
    "path": lambda tmp, name: (str(tmp / name), {}),
    "pathlib": lambda tmp, name: (tmp / name, {}),
    "file-url": lambda tmp, name: (
        f"file://{tmp / name}",
        {"storage_options": {"auto_mkdir": True}},
    ),
    "memory-url": lambda tmp, name: (f"memory://{uuid.uuid4().hex}/{name}", {}),
    "local-store": lambda tmp, name: (LocalStore(str(tmp / name)), {}),
    "memory-store": lambda tmp, name: (MemoryStore(), {}),
    "group": lambda tmp, name: (zarr.open_group(str(tmp / name), mode="w"), {}),
}


@pytest.mark.parametrize("kind", PLACES)
def test_target_and_temp_kinds(tmp_path: Path, make_array: ArrayFactory, kind: str) -> None:
    source = make_array(tmp_path / "source.zarr", SHAPE, SOURCE_CHUNKS, dtype="f4")
    target, target_options = PLACES[kind](tmp_path, "target.zarr")
    temp, temp_options = PLACES[kind](tmp_path, "temp.zarr")
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        MAX_MEM,
        target,
        target_options=target_options,
        temp_store=temp,
        temp_options=temp_options,
        array_name="data" if kind == "group" else None,
    )
    _check(rechunked, source)
    if kind == "group":
        assert_same_array(zarr.open_group(str(tmp_path / "target.zarr"))["data"], source)
        assert "data.intermediate1" not in zarr.open_group(str(tmp_path / "temp.zarr"))


@pytest.mark.parametrize("kind", ["path", "pathlib", "local-store", "file-store"])
def test_source_given_as_a_store(tmp_path: Path, make_array: ArrayFactory, kind: str) -> None:
    source = make_array(tmp_path / "source.zarr", SHAPE, SOURCE_CHUNKS, dtype="f4")
    path = tmp_path / "source.zarr"
    given = {
        "path": str(path),
        "pathlib": path,
        "local-store": LocalStore(str(path), read_only=True),
        "file-store": FsspecStore.from_url(f"file://{path}", read_only=True),
    }[kind]
    rechunked = rechunk(
        given, TARGET_CHUNKS, MAX_MEM, str(tmp_path / "t.zarr"), temp_store=str(tmp_path / "x")
    )
    _check(rechunked, source)
    # Local sources are referenced by path, so the plan saves as JSON.
    assert StagedCopySpec.from_json(rechunked.spec[0].to_json()) == rechunked.spec[0]


def test_a_path_without_zarr_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no zarr array or group"):
        rechunk(str(tmp_path / "missing.zarr"), (1,), "1MB", str(tmp_path / "t.zarr"))


# --------------------------------------------------------------------------
# S3: a moto server on 127.0.0.1 (the ``s3`` fixture, tests/conftest.py).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["threads", "dask"])
def test_s3_to_s3_with_temp_on_s3(s3: dict[str, Any], executor: str) -> None:
    run = f"s3://rechunk/{executor}-{uuid.uuid4().hex[:8]}"
    data = sample_data(SHAPE, "f4")
    zarr.create_array(
        f"{run}/source.zarr", shape=SHAPE, chunks=SOURCE_CHUNKS, dtype="f4", storage_options=s3
    )[...] = data
    source = zarr.open_array(f"{run}/source.zarr", mode="r", storage_options=s3)
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        MAX_MEM,
        f"{run}/target.zarr",
        target_options={"storage_options": s3},
        temp_store=f"{run}/temp.zarr",
        temp_options={"storage_options": s3},
        executor=executor,
    )
    spec = rechunked.spec[0]
    assert len(spec.stages) == 2
    # Every reference is a URL, so the plan saves as JSON for other machines.
    assert spec.source.location.store == f"{run}/source.zarr"
    assert StagedCopySpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="the same place as the source"):
        options = {"storage_options": s3, "overwrite": True}
        rechunk(source, TARGET_CHUNKS, MAX_MEM, f"{run}/source.zarr", target_options=options,
                temp_store=f"{run}/temp2.zarr", temp_options={"storage_options": s3})  # fmt: skip
    rechunked.execute()
    target = zarr.open_array(f"{run}/target.zarr", mode="r", storage_options=s3)
    assert target.chunks == TARGET_CHUNKS
    npt.assert_array_equal(target[...], data)
    with pytest.raises(FileNotFoundError):
        zarr.open_array(f"{run}/temp.zarr", mode="r", storage_options=s3)


def test_s3_temp_inherits_target_storage_options(s3: dict[str, Any], tmp_path: Path) -> None:
    """temp_options default to target_options, credentials and endpoint included."""
    data = sample_data(SHAPE, "f4")
    source = zarr.create_array(
        str(tmp_path / "s.zarr"), shape=SHAPE, chunks=SOURCE_CHUNKS, dtype="f4"
    )
    source[...] = data
    run = f"s3://rechunk/inherit-{uuid.uuid4().hex[:8]}"
    rechunked = rechunk(
        source,
        TARGET_CHUNKS,
        MAX_MEM,
        f"{run}/target.zarr",
        target_options={"storage_options": s3},
        temp_store=f"{run}/temp.zarr",
    )
    assert rechunked.spec[0].intermediates[0].location.storage_options == s3
    rechunked.execute()
    target = zarr.open_array(f"{run}/target.zarr", mode="r", storage_options=s3)
    npt.assert_array_equal(target[...], data)


def test_s3_target_exists_check_and_overwrite(s3: dict[str, Any], tmp_path: Path) -> None:
    source = zarr.create_array(str(tmp_path / "s.zarr"), shape=(10,), chunks=(2,), dtype="i4")
    source[...] = range(10)
    url = f"s3://rechunk/exists-{uuid.uuid4().hex[:8]}.zarr"
    options = {"storage_options": s3}
    rechunk(source, (5,), "1MB", url, target_options=options).execute()
    with pytest.raises(ValueError, match="already holds data"):
        rechunk(source, (10,), "1MB", url, target_options=options)
    again = rechunk(source, (10,), "1MB", url, target_options={**options, "overwrite": True})
    assert again.execute().chunks == (10,)
