"""Code written for rechunker keeps working: the places where migrating code broke.

Each was found by running rechunker's own test suite, ported to zarr 3,
against this package (docs/migrating.md lists every difference).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import zarr

from rechunker_core import algorithm, rechunk
from tests.helpers import GroupFactory, snapshot


def test_max_stages_patched_on_algorithm_is_obeyed() -> None:
    # As rechunker's tests and users do it: patch the name in the algorithm module.
    with (
        patch("rechunker_core.algorithm.MAX_STAGES", 1),
        pytest.raises(AssertionError, match="Failed to find a feasible multi-staging"),
    ):
        algorithm.multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, 10, 100)
    with patch.object(algorithm, "MAX_STAGES", 1), pytest.raises(AssertionError):
        algorithm.rechunking_plan((8, 8), (1, 8), (8, 1), itemsize=4, max_mem=64)
    plan = algorithm.multistage_rechunking_plan((100, 100), (100, 1), (1, 100), 1, 10, 100)
    assert len(plan) == 2  # unpatched again


@pytest.mark.parametrize("caught", [ValueError, TypeError])
def test_an_unsupported_source_is_caught_as_either_error(
    tmp_path: Path, caught: type[Exception]
) -> None:
    try:
        rechunk([[1, 2], [3, 4]], (1, 1), 100, str(tmp_path / "t.zarr"))
    except caught as error:
        assert "unsupported source of type builtins.list" in str(error)
    else:
        pytest.fail("a list was accepted as a source")
    assert not (tmp_path / "t.zarr").exists()


def test_array_name_with_a_group_source_is_refused(
    tmp_path: Path, make_group: GroupFactory
) -> None:
    source = make_group(tmp_path / "g.zarr", 3)
    target = zarr.open_group(tmp_path / "out.zarr", mode="w")
    before = snapshot(tmp_path / "out.zarr")
    with pytest.raises(ValueError, match=r"array_name='foo' .* source is a group"):
        rechunk(source, None, "1MB", target, array_name="foo")
    assert snapshot(tmp_path / "out.zarr") == before


def test_zarr2_option_names_get_a_hint(tmp_path: Path) -> None:
    source = zarr.create_array(tmp_path / "s.zarr", shape=(4,), chunks=(2,), dtype="i4")
    with pytest.raises(
        ValueError, match=r"unknown option 'compressor' .* did you mean 'compressors'"
    ):
        rechunk(source, (4,), "1MB", str(tmp_path / "t.zarr"), target_options={"compressor": None})
    assert not (tmp_path / "t.zarr").exists()


def test_group_runs_do_not_warn_about_consolidated_metadata(
    tmp_path: Path, make_group: GroupFactory
) -> None:
    source = make_group(tmp_path / "g.zarr", 3)
    with warnings.catch_warnings(record=True) as heard:
        warnings.simplefilter("always")
        target = rechunk(source, None, "1MB", str(tmp_path / "t.zarr")).execute(progress=False)
    assert not [w for w in heard if "onsolidated" in str(w.message)]
    assert isinstance(target, zarr.Group)
    np.testing.assert_array_equal(target["temp"][...], source["temp"][...])
