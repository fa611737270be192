"""Command-line text -> API values: each spelling, and the errors for bad ones."""

from __future__ import annotations

import math

import numcodecs
import pytest
import zarr.codecs

from rechunker_core.option_values import (
    array_options,
    compressors,
    parse_pairs,
    storage_options,
    target_chunks_of,
)


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("zstd", 3, zarr.codecs.ZstdCodec(level=3)),
        ("zstd:7", 2, numcodecs.Zstd(level=7)),
        ("gzip", 3, zarr.codecs.GzipCodec(level=5)),
        ("blosc-lz4", 3, zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")),
        ("Blosc-ZSTD:3", 2, numcodecs.Blosc(cname="zstd", clevel=3)),
        ("none", 2, None),
    ],
)
def test_compressor_names(name: str, fmt: int, expected: object) -> None:
    assert compressors(name, fmt) == expected


@pytest.mark.parametrize(("name", "message"), [("lzma", "known compressor"), ("zstd:x", "level")])
def test_bad_compressor_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compressors(name, 3)


def test_array_options_follow_the_format_they_set() -> None:
    options = array_options(
        parse_pairs(
            ["zarr_format=2", "compressors=blosc-lz4", "fill_value=nan", "overwrite=true"], "-x"
        ),
        3,
    )
    assert options["zarr_format"] == 2
    assert options["compressors"] == numcodecs.Blosc(cname="lz4", clevel=5)
    assert math.isnan(options["fill_value"]) and options["overwrite"] is True
    sharded = array_options({"shards": "10,4", "dimension_names": "t, x"}, 3)
    assert sharded == {"shards": (10, 4), "dimension_names": ("t", "x")}


@pytest.mark.parametrize(
    ("pairs", "message"),
    [({"shards": "4,x"}, "shard shape"), ({"fill_value": "hot"}, "not a number")],
)
def test_bad_array_options(pairs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        array_options(pairs, 3)


def test_pairs_and_storage_options() -> None:
    with pytest.raises(ValueError, match=r"--storage-option 'anon' is not KEY=VALUE"):
        parse_pairs(["anon"], "--storage-option")
    given = parse_pairs(["anon=false", "secret=0042", "default_block_size=1024"], "-s")
    assert storage_options(given) == {
        "anon": False,
        "secret": "0042",  # credentials stay text
        "default_block_size": 1024,
    }


def test_target_chunks_per_array() -> None:
    assert target_chunks_of(["-1,25,1"]) == (-1, 25, 1)
    assert target_chunks_of(["a:x=2", "g/b:3,-1"]) == {"a": {"x": 2}, "g/b": (3, -1)}
    with pytest.raises(ValueError, match="name the array in each"):
        target_chunks_of(["x=2", "y=3"])
