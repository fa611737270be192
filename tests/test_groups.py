"""zarr groups as sources: hierarchy, attributes, and which arrays are copied."""

from __future__ import annotations

from pathlib import Path

import pytest
import zarr

from rechunker_core import rechunk
from tests.helpers import GroupFactory, assert_same_array, assert_same_group

pytestmark = pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_chunks_by_dimension_copy_every_array(
    tmp_path: Path, make_group: GroupFactory, zarr_format: int
) -> None:
    source = make_group(tmp_path / "source.zarr", zarr_format)
    rechunked = rechunk(
        source,
        {"y": 6, "x": -1},
        "100KB",
        str(tmp_path / "target.zarr"),
        temp_store=str(tmp_path / "temp.zarr"),
    )
    assert len(rechunked.spec) == 3
    target = rechunked.execute()
    assert isinstance(target, zarr.Group)
    assert_same_group(target, source)  # hierarchy, attributes, values, fill values
    assert target["temp"].chunks == (6, 45)
    assert target["sub/deeper/counts"].chunks == (7,)  # no y or x: unchanged
    assert target["sub/mask"].chunks == (2, 4, 5)  # no dimension names: unchanged
    assert target.metadata.zarr_format == zarr_format
    assert dict(target["sub/deeper"].attrs) == {"level": 2}
    if zarr_format == 2:
        assert target["temp"].attrs["_ARRAY_DIMENSIONS"] == ["y", "x"]
    else:
        assert target["temp"].metadata.dimension_names == ("y", "x")
    assert not (tmp_path / "temp.zarr").exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_groups_get_consolidated_metadata(
    tmp_path: Path, make_group: GroupFactory, zarr_format: int
) -> None:
    source = make_group(tmp_path / "source.zarr", zarr_format)
    rechunk(source, {"x": 9}, "1MB", str(tmp_path / "target.zarr")).execute()
    consolidated = zarr.open_consolidated(str(tmp_path / "target.zarr"), zarr_format=zarr_format)
    assert consolidated.metadata.consolidated_metadata is not None
    names = set(consolidated.metadata.consolidated_metadata.flattened_metadata)
    assert names == {"temp", "sub", "sub/deeper", "sub/deeper/counts", "sub/mask"}


def test_chunks_by_array_name_skip_the_others(tmp_path: Path, make_group: GroupFactory) -> None:
    """As in rechunker: naming arrays selects them."""
    source = make_group(tmp_path / "source.zarr")
    target = rechunk(
        source,
        {"temp": (20, 45), "sub/deeper/counts": {"x2": -1}},
        "1MB",
        str(tmp_path / "target.zarr"),
    ).execute()
    assert isinstance(target, zarr.Group)
    arrays = sorted(name for name, _ in target.arrays()) + sorted(
        name for name, _ in target["sub/deeper"].arrays()
    )
    assert arrays == ["temp", "counts"]
    assert "mask" not in target["sub"]
    assert dict(target["sub"].attrs) == {"level": 1}  # the hierarchy is kept
    assert_same_array(target["temp"], source["temp"])
    assert_same_array(target["sub/deeper/counts"], source["sub/deeper/counts"])
    assert target["temp"].chunks == (20, 45)
    assert target["sub/deeper/counts"].chunks == (33,)


def test_per_array_options(tmp_path: Path, make_group: GroupFactory) -> None:
    source = make_group(tmp_path / "source.zarr")
    target = rechunk(
        source,
        {"y": 60, "x": 5},
        "1MB",
        str(tmp_path / "target.zarr"),
        target_options={"temp": {"compressors": None}, "sub/mask": {"fill_value": 7}},
    ).execute()
    assert isinstance(target, zarr.Group)
    assert target["temp"].compressors == ()
    assert target["sub/deeper/counts"].compressors != ()
    assert target["sub/mask"].fill_value == 7
    assert_same_array(target["temp"], source["temp"])


def test_nested_source_and_group_target(tmp_path: Path, make_group: GroupFactory) -> None:
    """A subgroup as source, a group inside another store as target."""
    source = make_group(tmp_path / "source.zarr")["sub"]
    outer = zarr.open_group(str(tmp_path / "outer.zarr"), mode="w", attributes={"keep": True})
    inner = outer.create_group("inner")
    target = rechunk(source, {"x2": 11}, "1MB", inner).execute()
    assert isinstance(target, zarr.Group)
    assert_same_group(target, source)
    assert target["deeper/counts"].chunks == (11,)
    assert dict(zarr.open_group(str(tmp_path / "outer.zarr"), mode="r").attrs) == {"keep": True}
    with pytest.raises(ValueError, match="neither arrays"):
        rechunk(source, {"nope": 3}, "1MB", str(tmp_path / "t2.zarr"))
