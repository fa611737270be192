"""xarray Datasets as sources: the target opens identical to the source.

Each test writes a small CF-encoded dataset to zarr, opens it lazily, rechunks
it and compares what ``xr.open_zarr`` sees in the target with the source:
values, coordinates, attributes and the encodings users rely on.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from rechunker_core import rechunk
from rechunker_core.api import describe_plan
from tests.helpers import MODES, Mode

pytestmark = [
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part"),
]

T = 30
#: The encodings users keep hitting problems with, each on one variable.
ENCODING: dict[str, dict[str, Any]] = {
    "air": {
        "dtype": "int16",
        "scale_factor": 0.01,
        "add_offset": 270.0,
        "_FillValue": -32767,
        "chunks": (5, 12, 16),
    },
    "precip": {"_FillValue": 1e20, "chunks": (5, 6, 16)},
    "time": {"units": "hours since 1990-01-01", "calendar": "noleap"},
    "valid_time": {
        "units": "days since 2000-01-01",
        "calendar": "proleptic_gregorian",
        "dtype": "float64",
    },
}
CF_KEYS = ("units", "calendar", "dtype", "scale_factor", "add_offset", "_FillValue", "fill_value")


def sample_dataset() -> xr.Dataset:
    """Data variables, a scalar, dimension, non-dimension and string coordinates."""
    rng = np.random.default_rng(0)
    air = (rng.random((T, 12, 16)) * 40 + 250).astype("f4")
    air[0, 0, :3] = np.nan
    return xr.Dataset(
        {
            "air": (("time", "lat", "lon"), air, {"long_name": "air temperature", "units": "K"}),
            "precip": (
                ("time", "lat", "lon"),
                rng.random((T, 12, 16)).astype("f4"),
                {"units": "mm"},
            ),
            "crs": ((), np.int32(0), {"grid_mapping_name": "latitude_longitude"}),
        },
        coords={
            "time": xr.date_range(
                "2000-01-01", periods=T, freq="D", calendar="noleap", use_cftime=True
            ),
            "lat": np.linspace(-55, 55, 12),
            "lon": np.arange(16) * 22.5,
            "station": ("lon", [f"s{i}" for i in range(16)]),
            "elevation": (("lat", "lon"), rng.random((12, 16)) * 1000, {"units": "m"}),
            "valid_time": ("time", pd.date_range("2001-01-01", periods=T, freq="6h")),
        },
        attrs={"title": "sample", "history": "made for tests"},
    )


def write_source(path: Path, zarr_format: int = 3) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample_dataset().to_zarr(
            path, mode="w", zarr_format=zarr_format, encoding=ENCODING, consolidated=True
        )
    return str(path)


def open_lazy(path: str, **kwargs: Any) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return xr.open_zarr(path, **kwargs)


def cf_encoding(dataset: xr.Dataset) -> dict[str, dict[str, str]]:
    return {
        name: {k: repr(v) for k, v in var.encoding.items() if k in CF_KEYS}
        for name, var in dataset.variables.items()
    }


def assert_round_trip(target_path: str, source: xr.Dataset) -> xr.Dataset:
    target = open_lazy(target_path)
    xr.testing.assert_identical(target, source)
    assert cf_encoding(target) == cf_encoding(source)
    return target


#: In-process, threads and other processes (the warm session cluster: a
#: process pool would start its workers anew); test_sources_dask.py runs dask
#: graphs (which is what a Dataset's variables become) on every mode.
EXECUTORS = [m for m in MODES if m.name in ("python", "threads", "dask-distributed")]


@pytest.mark.parametrize("mode", EXECUTORS, ids=lambda m: m.name)
def test_round_trip_on_every_executor(
    mode: Mode, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr"))
    rechunked = rechunk(
        source,
        {"time": -1, "lat": 3},
        "20KB",
        str(tmp_path / "target.zarr"),
        temp_store=str(tmp_path / "temp.zarr"),
        executor=mode.make(request),
    )
    assert max(len(spec.stages) for spec in rechunked.spec) == 2
    group = rechunked.execute()
    assert isinstance(group, zarr.Group)
    assert group["air"].chunks == (T, 3, 16)
    assert group["elevation"].chunks == (3, 16)
    assert group["station"].chunks == (16,)
    target = assert_round_trip(str(tmp_path / "target.zarr"), source)
    assert target["air"].encoding["chunks"] == (T, 3, 16)
    assert not (tmp_path / "temp.zarr").exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_each_encoding_survives_in_both_formats(tmp_path: Path, zarr_format: int) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr", zarr_format))
    rechunk(
        source,
        {"lat": 4, "lon": -1},
        "1MB",
        str(tmp_path / "target.zarr"),
        target_options={"zarr_format": zarr_format},
    ).execute()
    target = assert_round_trip(str(tmp_path / "target.zarr"), source)
    assert target["time"].encoding["units"] == "hours since 1990-01-01"
    assert target["time"].encoding["calendar"] == "noleap"
    assert target["valid_time"].encoding["calendar"] == "proleptic_gregorian"
    assert target["valid_time"].encoding["dtype"] == np.dtype("float64")
    air = target["air"].encoding
    assert (air["scale_factor"], air["add_offset"], air["_FillValue"]) == (0.01, 270.0, -32767)
    assert air["dtype"] == np.dtype("int16")
    assert target["precip"].encoding["_FillValue"] == np.float32(1e20)
    assert np.isnan(target["air"].values[0, 0, :3]).all()  # masked values stay masked
    stored = zarr.open_group(str(tmp_path / "target.zarr"), mode="r")
    assert stored.metadata.zarr_format == zarr_format
    assert stored["air"].dtype == np.dtype("int16")
    original = zarr.open_group(str(tmp_path / "source.zarr"), mode="r")
    for name in ("air", "precip", "time", "lat", "station"):
        np.testing.assert_array_equal(stored[name].fill_value, original[name].fill_value)
        np.testing.assert_array_equal(stored[name][...], original[name][...])


def test_consolidated_metadata_is_written(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr"))
    rechunk(source, {"time": 10}, "1MB", str(tmp_path / "target.zarr")).execute()
    group = zarr.open_group(str(tmp_path / "target.zarr"), mode="r")
    assert group.metadata.consolidated_metadata is not None
    assert set(group.metadata.consolidated_metadata.metadata) == set(source.variables)
    consolidated = open_lazy(str(tmp_path / "target.zarr"), consolidated=True)
    xr.testing.assert_identical(consolidated, source)


def test_stale_chunk_encoding_is_ignored(tmp_path: Path) -> None:
    """rechunker #97, #78, #84, #118: the source's encoding names chunks of (5, 12, 16)
    that neither the dask array nor the target has."""
    source = open_lazy(write_source(tmp_path / "source.zarr"), chunks={"time": 7, "lat": 4})
    assert source["air"].encoding["chunks"] == (5, 12, 16)
    rechunked = rechunk(source, {"lon": 8}, "1MB", str(tmp_path / "target.zarr"))
    group = rechunked.execute()
    assert group["air"].chunks == (7, 4, 8)  # time and lat keep the dask chunks
    assert group["precip"].chunks == (7, 4, 8)
    assert_round_trip(str(tmp_path / "target.zarr"), source)


def test_variables_not_named_keep_their_chunks(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr"))
    rechunked = rechunk(
        source, {"air": {"time": -1, "lat": 6}}, "1MB", str(tmp_path / "target.zarr")
    )
    assert len(rechunked.spec) == len(source.variables)  # coordinates are copied too
    group = rechunked.execute()
    assert group["air"].chunks == (T, 6, 16)
    assert group["precip"].chunks == (5, 6, 16)  # the source's dask chunks
    assert group["valid_time"].chunks == (T,)
    assert_round_trip(str(tmp_path / "target.zarr"), source)


def test_chunks_by_variable_as_tuples(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr"))
    group = rechunk(
        source,
        {"air": (T, 2, 2), "precip": None, "elevation": (12, 1)},
        "1MB",
        str(tmp_path / "target.zarr"),
    ).execute()
    assert group["air"].chunks == (T, 2, 2)
    assert group["elevation"].chunks == (12, 1)
    assert_round_trip(str(tmp_path / "target.zarr"), source)


def test_cf_encoding_options(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr"))
    air = {"dtype": "int32", "scale_factor": 0.001, "add_offset": 0.0, "_FillValue": -1}
    time = {"units": "days since 1980-01-01", "calendar": "noleap"}
    rechunked = rechunk(
        source,
        {"time": -1},
        "100KB",
        str(tmp_path / "target.zarr"),
        target_options={"air": air, "time": time},
        temp_store=str(tmp_path / "temp.zarr"),
        temp_options={"air": {"dtype": "int32"}},
    )
    group = rechunked.execute()
    assert group["air"].dtype == np.dtype("int32")
    assert group["air"].attrs["scale_factor"] == 0.001
    target = open_lazy(str(tmp_path / "target.zarr"))
    assert target["time"].encoding["units"] == "days since 1980-01-01"
    assert target["air"].encoding["_FillValue"] == -1
    xr.testing.assert_allclose(target["air"], source["air"], atol=0.006)
    xr.testing.assert_identical(target.drop_vars("air"), source.drop_vars("air"))


def test_cf_options_are_checked_before_writing(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr"))
    target = tmp_path / "target.zarr"
    with pytest.raises(ValueError, match="temp_options must match target_options"):
        rechunk(
            source,
            {"time": -1},
            "20KB",
            str(target),
            target_options={"air": {"dtype": "int32"}},
            temp_store=str(tmp_path / "temp.zarr"),
            temp_options={"air": {"dtype": "int16"}},
        )
    with pytest.raises(ValueError, match="unknown option 'packing'"):
        rechunk(source, {"time": -1}, "1MB", str(target), target_options={"packing": 1})
    assert not target.exists() and not (tmp_path / "temp.zarr").exists()


def test_zarr_options_apply_to_every_variable(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr", zarr_format=2))
    options = {"compressors": None, "zarr_format": 2, "overwrite": True}
    group = rechunk(
        source, {"time": 10}, "1MB", str(tmp_path / "target.zarr"), target_options=options
    ).execute()
    assert group.metadata.zarr_format == 2
    assert group["air"].compressors == ()
    assert_round_trip(str(tmp_path / "target.zarr"), source)


def test_in_memory_and_file_backed_datasets(tmp_path: Path) -> None:
    path = write_source(tmp_path / "source.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        file_backed = xr.open_dataset(path, engine="zarr")  # lazily indexed, no dask
    loaded = open_lazy(path).load()
    for i, source in enumerate((file_backed, loaded)):
        out = str(tmp_path / f"target{i}.zarr")
        rechunk(source, {"time": 4, "lat": 5}, "1MB", out).execute()
        assert_round_trip(out, loaded)
        assert zarr.open_group(out, mode="r")["air"].chunks == (4, 5, 16)


def test_describe_plan_of_a_dataset(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "source.zarr"))
    text = describe_plan(source, {"time": -1}, "1MB")
    assert text.startswith("xarray Dataset") and "air (30, 12, 16) int16" in text


def test_object_string_coordinate(tmp_path: Path) -> None:
    names = np.array(["a", "bb", "c", "dddd"], dtype=object)
    source = xr.Dataset(
        {"v": ("x", np.arange(4.0))}, coords={"name": ("x", names), "x": [1, 2, 3, 4]}
    )
    for zarr_format in (2, 3):
        out = str(tmp_path / f"target{zarr_format}.zarr")
        options = {"zarr_format": zarr_format}
        rechunk(source, {"x": 2}, "1MB", out, target_options=options).execute()
        xr.testing.assert_identical(open_lazy(out).load(), source)


def test_planning_computes_nothing(tmp_path: Path) -> None:
    """rechunk() plans and creates metadata; only execute() computes, region by region."""
    computed: list[Any] = []

    def log(block: np.ndarray, block_info: dict[Any, Any] | None = None) -> np.ndarray:
        assert block_info is not None
        computed.append(block_info[None]["chunk-location"])
        return block

    source = open_lazy(write_source(tmp_path / "source.zarr"))
    air = source["air"].data.map_blocks(log, dtype=source["air"].dtype, meta=np.array((), "f8"))
    source["air"] = source["air"].copy(data=air)
    rechunked = rechunk(source, {"time": -1}, "1MB", str(tmp_path / "target.zarr"))
    assert computed == []
    rechunked.execute()
    assert sorted(computed) == sorted(set(computed))  # each block once: one task per block
    assert len(computed) == air.npartitions


def test_a_data_array_is_a_one_variable_dataset(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "s.zarr"))["air"]
    target = tmp_path / "t.zarr"
    rechunk(source, {"time": -1, "lat": 6}, "1MB", str(target)).execute(progress=False)
    result = open_lazy(str(target))
    assert set(result.data_vars) == {"air"}
    xr.testing.assert_identical(result["air"], source)
    assert result["air"].encoding["chunks"] == (T, 6, 16)
    unnamed = source.rename(None)
    with pytest.raises(ValueError, match="has no name"):
        rechunk(unnamed, {"time": -1}, "1MB", str(tmp_path / "u.zarr"))
    assert not (tmp_path / "u.zarr").exists()


def test_dimension_chunks_keep_index_coordinates_whole(tmp_path: Path) -> None:
    source = open_lazy(write_source(tmp_path / "s.zarr"))
    target = tmp_path / "t.zarr"
    rechunk(source, {"lon": 4, "time": 10}, "1MB", str(target)).execute(progress=False)
    stored = zarr.open_group(str(target))
    assert stored["air"].chunks == (10, 12, 4)
    assert stored["lon"].chunks == (16,)  # xarray keeps an index whole
    assert stored["time"].chunks == (T,)
    assert stored["station"].chunks == (4,)  # a non-index coordinate follows its dimension
    xr.testing.assert_identical(open_lazy(str(target)), source)
