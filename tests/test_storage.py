"""Tests for ``rechunker_core.storage``: locations, references, the LRU of open arrays."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from rechunker_core import storage
from rechunker_core.locations import (
    StoreLocation,
    location_from_dict,
    location_to_dict,
    resolve_location,
)
from rechunker_core.storage import ZarrRef, open_array
from tests.helpers import ArrayFactory, snapshot

# --------------------------------------------------------------------------
# resolve_location
# --------------------------------------------------------------------------


def test_resolve_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    location = resolve_location("data/t.zarr")
    assert location == StoreLocation(str(tmp_path / "data" / "t.zarr"), "", {})
    assert not location.in_memory


def test_resolve_pathlib_path(tmp_path: Path) -> None:
    assert resolve_location(tmp_path / "t.zarr") == resolve_location(str(tmp_path / "t.zarr"))
    assert resolve_location(tmp_path / "t.zarr").store == str(tmp_path / "t.zarr")


def test_resolve_file_url(tmp_path: Path) -> None:
    # Without storage options a file:// URL is a local path (LocalStore).
    assert resolve_location(f"file://{tmp_path}/t.zarr").store == f"{tmp_path}/t.zarr"
    # With options it stays a URL, so fsspec gets them.
    location = resolve_location(f"file://{tmp_path}/t.zarr", {"auto_mkdir": True})
    assert location.store == f"file://{tmp_path}/t.zarr"
    assert location.storage_options == {"auto_mkdir": True}
    assert isinstance(location.open_store(), FsspecStore)


@pytest.mark.parametrize("url", ["memory://rc-test/t.zarr", "s3://bucket/t.zarr"])
def test_resolve_fsspec_url(url: str) -> None:
    location = resolve_location(url, {"anon": True})
    assert location == StoreLocation(url, "", {"anon": True})
    assert location.in_memory == url.startswith("memory://")


def test_resolve_local_store(tmp_path: Path) -> None:
    location = resolve_location(LocalStore(str(tmp_path / "t.zarr")))
    # Local stores become their path, so they pickle and save to JSON as text.
    assert location == StoreLocation(str(tmp_path / "t.zarr"), "", {})


def test_resolve_memory_store() -> None:
    store = MemoryStore()
    location = resolve_location(store)
    assert location.store is store
    assert location.in_memory
    assert location.key == resolve_location(store).key
    assert location.key != resolve_location(MemoryStore()).key


def test_resolve_group(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    sub = root.create_group("a").create_group("b")
    assert resolve_location(sub) == StoreLocation(str(tmp_path / "g.zarr"), "a/b", {})
    in_memory = zarr.open_group(MemoryStore(), mode="w").create_group("x")
    location = resolve_location(in_memory)
    assert location.store is in_memory.store
    assert location.path == "x"


def test_resolve_rejects_other_types() -> None:
    with pytest.raises(TypeError, match="unsupported store"):
        resolve_location(42)


def test_location_child_and_describe() -> None:
    location = StoreLocation("/data/t.zarr").child("g").child("/a/")
    assert location.path == "g/a"
    assert location.describe() == "/data/t.zarr/g/a"


def test_location_with_store_object_pickles_without_losing_the_path() -> None:
    location = resolve_location(zarr.open_group(MemoryStore(), mode="w").create_group("x"))
    again = pickle.loads(pickle.dumps(location))
    assert again.path == "x"
    assert again.in_memory


def test_in_memory_location_unpickled_here_is_the_same_store() -> None:
    store = MemoryStore()
    location = resolve_location(store).child("a")
    again = pickle.loads(pickle.dumps(location))
    assert again.open_store() is store  # not a copy: writes through it are kept
    assert again == location and again.owner == location.owner


_OPEN_ELSEWHERE = """
import pickle, sys
location = pickle.loads(sys.stdin.buffer.read())
try:
    location.open_store()
except ValueError as error:
    print(error)
else:
    print("opened")
"""


@pytest.mark.parametrize("kind", ["object", "url"])
def test_in_memory_location_refuses_to_open_in_another_process(kind: str) -> None:
    store: Any = MemoryStore() if kind == "object" else "memory://guarded/x.zarr"
    location = resolve_location(store)
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_ELSEWHERE],
        input=pickle.dumps(location),
        capture_output=True,
        check=True,
    )
    message = done.stdout.decode()
    assert "in-memory store" in message and f"process {os.getpid()}" in message, message


def test_in_memory_url_keeps_its_owner_through_json() -> None:
    location = resolve_location("memory://guarded/y.zarr").child("a")
    again = location_from_dict(json.loads(json.dumps(location_to_dict(location))))
    assert again.owner == location.owner == (socket.gethostname(), os.getpid())
    assert again.open_store() is not None  # this process holds the data: it opens
    elsewhere = location_from_dict({**location_to_dict(location), "owner": ["other-host", 1]})
    with pytest.raises(ValueError, match=r"in-memory store .* process 1 on other-host"):
        elsewhere.open_store()


# --------------------------------------------------------------------------
# exists / delete
# --------------------------------------------------------------------------


def test_exists_and_delete_local(tmp_path: Path, make_array: ArrayFactory) -> None:
    root = tmp_path / "t.zarr"
    location = resolve_location(root)
    assert not location.exists()
    root.mkdir()
    assert not location.exists()  # an empty directory holds nothing
    group = zarr.open_group(str(root), mode="w")
    make_array(group, (4,), (2,), name="a/x")
    make_array(group, (4,), (2,), name="b")
    assert location.exists()
    assert location.child("a").exists()
    location.child("a").delete()
    assert not location.child("a").exists()
    assert not (root / "a").exists()  # no empty directories left behind
    npt.assert_array_equal(zarr.open_array(str(root), path="b")[...], np.arange(4))
    location.delete()
    assert not location.exists()
    assert not root.exists()
    assert tmp_path.exists()


def test_exists_and_delete_memory_store(make_array: ArrayFactory) -> None:
    store = MemoryStore()
    location = resolve_location(store)
    assert not location.exists()
    make_array(store, (4,), (2,), name="a")
    make_array(store, (4,), (2,), name="b")
    assert location.child("a").exists()
    location.child("a").delete()
    assert not location.child("a").exists()
    assert location.child("b").exists()
    location.delete()
    assert snapshot(store) == {}


def test_exists_and_delete_fsspec_url(tmp_path: Path, make_array: ArrayFactory) -> None:
    url = f"memory://rechunker-core-tests/{os.getpid()}/{tmp_path.name}"
    location = resolve_location(url)
    assert not location.exists()
    make_array(location.open_store(), (6,), (4,), name="a")
    assert location.exists()
    location.delete()
    assert not location.exists()


def test_file_url_with_options_creates_arrays(tmp_path: Path, make_array: ArrayFactory) -> None:
    location = resolve_location(f"file://{tmp_path}/t.zarr", {"auto_mkdir": True})
    array = make_array(location.open_store(), (6,), (4,))
    ref = ZarrRef.from_array(array, location)
    npt.assert_array_equal(ref.read((slice(0, 6),)), np.arange(6))
    assert location.exists()
    location.delete()
    assert not location.exists()


def test_delete_forgets_open_arrays(tmp_path: Path, make_array: ArrayFactory) -> None:
    location = resolve_location(tmp_path / "t.zarr")
    make_array(str(tmp_path / "t.zarr"), (4,), (2,))
    open_array(location)
    assert any(key[:3] == location.key[:3] for key in storage._cache)
    storage.remove(location)
    assert not any(key[:3] == location.key[:3] for key in storage._cache)
    assert not (tmp_path / "t.zarr").exists()


# --------------------------------------------------------------------------
# The LRU of open arrays
# --------------------------------------------------------------------------


def test_open_array_reuses_and_is_bounded(
    make_array: ArrayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "CACHE_SIZE", 3)
    storage.clear_cache()
    store = MemoryStore()
    locations = [StoreLocation(store, name) for name in "abcde"]
    for location in locations:
        make_array(store, (4,), (2,), name=location.path)

    first = open_array(locations[0])
    assert open_array(locations[0]) is first
    assert open_array(locations[0], "r+") is not first  # one entry per mode
    open_array(locations[1])
    open_array(locations[0])  # a hit makes "a" the most recently used
    for location in locations[2:]:
        open_array(location)
        assert len(storage._cache) <= 3
    cached = {key[2] for key in storage._cache}
    assert cached == {"c", "d", "e"}
    assert open_array(locations[0]) is not first  # evicted, so opened afresh
    storage.clear_cache()
    assert not storage._cache


def test_reference_reopens_a_replaced_array(tmp_path: Path, make_array: ArrayFactory) -> None:
    """A cached array replaced on disk (a target overwritten with new chunks) is stale."""
    path = str(tmp_path / "t.zarr")
    location = resolve_location(path)
    old = ZarrRef.from_array(make_array(path, (6, 4), (6, 1)), location)
    old.open("r+")
    new = ZarrRef.from_array(
        zarr.create_array(path, shape=(6, 4), chunks=(2, 4), dtype="f8", overwrite=True), location
    )
    new.write((slice(0, 2), slice(0, 4)), np.ones((2, 4)))
    npt.assert_array_equal(zarr.open_array(path)[0:2], np.ones((2, 4)))
    assert new.open("r+").chunks == (2, 4)


def test_zarr_ref_json_round_trip(tmp_path: Path, make_array: ArrayFactory) -> None:
    path = str(tmp_path / "t.zarr")
    array = make_array(path, (6, 4), (3, 4), shards=(6, 4), dtype="i2")
    found = ZarrRef.from_array(array, resolve_location(path))
    assert (found.chunks, found.read_chunks) == ((6, 4), (3, 4))
    assert ZarrRef.from_dict(found.to_dict()) == found
    with pytest.raises(ValueError, match="JSON"):
        ZarrRef.from_array(array, resolve_location(MemoryStore())).to_dict()


@pytest.mark.parametrize("fill_value", [0.0, np.nan])
def test_write_skips_only_chunks_of_fill_value(fill_value: float) -> None:
    """Chunks holding only the fill value are not stored, as zarr would; a chunk that
    merely starts with it is."""
    store = MemoryStore()
    array = zarr.create_array(store, shape=(3, 4), chunks=(1, 4), dtype="f8", fill_value=fill_value)
    ref = ZarrRef.from_array(array, StoreLocation(store))
    data = np.full((3, 4), fill_value)
    data[1, 3] = 7.0  # row 1 starts with the fill value but is not empty
    data[2] = np.arange(4.0)
    ref.write((slice(0, 3), slice(0, 4)), data)
    stored = sorted(k for k in snapshot(store) if k.startswith("c/"))
    assert stored == ["c/1/0", "c/2/0"]
    npt.assert_array_equal(array[...], data)
