"""Shared test data: zarr arrays and groups with known contents, and store helpers.

Every array made here holds ``sample_data(shape, dtype)``: distinct values in C
order, so a misplaced element shows up in an element-by-element comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

ArrayFactory = Callable[..., zarr.Array]
GroupFactory = Callable[..., zarr.Group]


def sample_data(shape: tuple[int, ...], dtype: Any = "f8") -> np.ndarray:
    """Return 0, 1, 2, ... in C order (distinct as far as the dtype's range allows)."""
    return np.arange(math.prod(shape)).astype(dtype).reshape(shape)


def _dims_kwargs(dims: tuple[str, ...] | None, zarr_format: int) -> dict[str, Any]:
    """Dimension names the way each format stores them."""
    if dims is None:
        return {}
    if zarr_format == 3:
        return {"dimension_names": dims}
    return {"attributes": {"_ARRAY_DIMENSIONS": list(dims)}}


def create_array(
    store: Any,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    *,
    name: str | None = None,
    dtype: Any = "f8",
    zarr_format: int = 3,
    shards: tuple[int, ...] | None = None,
    fill_value: Any = None,
    attributes: dict[str, Any] | None = None,
    dimension_names: tuple[str, ...] | None = None,
    data: np.ndarray | None = None,
) -> zarr.Array:
    """Create an array in ``store`` (a path, a Store or a Group) and fill it."""
    extra = _dims_kwargs(dimension_names, zarr_format)
    attrs = {**extra.pop("attributes", {}), **(attributes or {})}
    if fill_value is not None:
        extra["fill_value"] = fill_value
    if shards is not None:
        extra["shards"] = shards
    if isinstance(store, zarr.Group):
        array = store.create_array(
            name or "", shape=shape, chunks=chunks, dtype=dtype, attributes=attrs, **extra
        )
    else:
        array = zarr.create_array(
            store=str(store) if isinstance(store, Path) else store,
            name=name,
            shape=shape,
            chunks=chunks,
            dtype=dtype,
            zarr_format=zarr_format,
            attributes=attrs,
            **extra,
        )
    array[...] = sample_data(shape, dtype) if data is None else data
    return array


@pytest.fixture(scope="session")
def make_array() -> ArrayFactory:
    """Factory: ``make_array(store, shape, chunks, **options)`` -> a filled zarr.Array.

    Session-scoped and stateless, so Hypothesis tests may use it too.
    """
    return create_array


def create_group(store: Any, zarr_format: int = 3) -> zarr.Group:
    """A nested group with attributes and three arrays of different shapes and dtypes.

    - ``/`` attrs ``{"title": "sample"}``; ``/sub`` and ``/sub/deeper`` have attrs too
    - ``/temp``: (60, 45) float64, chunks (60, 1), dims (y, x), fill 1.5, attrs
    - ``/sub/deeper/counts``: (33,) int16, chunks (7,), dims (x2,), fill 3
    - ``/sub/mask``: (9, 4, 5) uint8, chunks (2, 4, 5), no dimension names
    """
    root = zarr.open_group(
        str(store) if isinstance(store, Path) else store,
        mode="w",
        zarr_format=zarr_format,
        attributes={"title": "sample"},
    )
    sub = root.create_group("sub", attributes={"level": 1})
    deeper = sub.create_group("deeper", attributes={"level": 2})
    create_array(
        root,
        (60, 45),
        (60, 1),
        name="temp",
        zarr_format=zarr_format,
        fill_value=1.5,
        attributes={"units": "K"},
        dimension_names=("y", "x"),
    )
    create_array(
        deeper,
        (33,),
        (7,),
        name="counts",
        dtype="i2",
        zarr_format=zarr_format,
        fill_value=3,
        dimension_names=("x2",),
    )
    create_array(sub, (9, 4, 5), (2, 4, 5), name="mask", dtype="u1", zarr_format=zarr_format)
    return root


@pytest.fixture(scope="session")
def make_group() -> GroupFactory:
    """Factory: ``make_group(store, zarr_format)`` -> the nested group of :func:`create_group`."""
    return create_group


def snapshot(store_like: Any) -> dict[str, bytes]:
    """Every key and value in a store (a Store, a local path or a Group's store).

    A local path that does not exist is empty.
    """
    if isinstance(store_like, zarr.Group):
        store_like = store_like.store
    if isinstance(store_like, str | Path):
        if not Path(store_like).exists():
            return {}
        store_like = LocalStore(str(store_like), read_only=True)
    assert isinstance(store_like, Store)
    store: Store = store_like

    async def read_all() -> dict[str, bytes]:
        found = {}
        async for key in store.list():
            value = await store.get(key, prototype=default_buffer_prototype())
            assert value is not None
            found[key] = value.to_bytes()
        return found

    return sync(read_all())


def assert_same_array(target: zarr.Array, source: zarr.Array) -> None:
    """Target equals source element by element, and carries its metadata over."""
    assert target.shape == source.shape
    assert target.dtype == source.dtype
    npt.assert_array_equal(target[...], source[...])
    npt.assert_array_equal(target.fill_value, source.fill_value)
    assert dict(target.attrs) == dict(source.attrs)
    if target.metadata.zarr_format == 3 and source.metadata.zarr_format == 3:
        assert target.metadata.dimension_names == source.metadata.dimension_names


def assert_same_group(target: zarr.Group, source: zarr.Group) -> None:
    """Same hierarchy, group attributes and arrays (see :func:`assert_same_array`)."""
    source_members = dict(source.members(max_depth=None))
    target_members = dict(target.members(max_depth=None))
    assert sorted(target_members) == sorted(source_members)
    assert dict(target.attrs) == dict(source.attrs)
    for name, member in source_members.items():
        other = target_members[name]
        if isinstance(member, zarr.Group):
            assert isinstance(other, zarr.Group)
            assert dict(other.attrs) == dict(member.attrs)
        else:
            assert isinstance(other, zarr.Array)
            assert_same_array(other, member)
