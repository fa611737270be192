"""Tests for ``rechunker_core.rechunk`` and ``Rechunked``: the public API on zarr sources."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.storage import LocalStore, MemoryStore

from rechunker_core import Rechunked, executors, options, rechunk
from rechunker_core.algorithm import ExcessiveIOWarning, plan_layout
from rechunker_core.chunkio import writing_memory
from rechunker_core.executors import BUILTIN_EXECUTORS, registered_executors
from rechunker_core.executors.python import PythonExecutor
from tests.helpers import (
    ArrayFactory,
    EngineExecutor,
    GroupFactory,
    assert_same_array,
    assert_same_group,
    snapshot,
)

FORMATS = [2, 3]
SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (40, 36), (40, 1), (1, 36)


def least_max_mem(source: Any, target_chunks: Any) -> int:
    """The minimum max_mem, as rechunk's error message states it."""
    with pytest.raises(ValueError, match="too small") as info:
        rechunk(source, target_chunks, 1, MemoryStore(), temp_store=MemoryStore())
    found = re.search(r"max_mem >= (\d+) bytes", str(info.value))
    assert found, str(info.value)
    return int(found.group(1))


def single_stage_least_max_mem(shape: tuple[int, ...], source: Any, target: Any) -> int:
    memory = writing_memory(local=False, sharded=False)  # memory stores, as the tests use
    with pytest.raises(ValueError) as info:
        plan_layout(shape, 4, source, target, 1, max_stages=1, memory=memory)
    found = re.search(r"max_mem >= (\d+) bytes", str(info.value))
    assert found
    return int(found.group(1))


# --------------------------------------------------------------------------
# Arrays and groups of both formats
# --------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", FORMATS)
@pytest.mark.parametrize("max_mem", ["64MB", 2000], ids=["one-stage", "multi-stage"])
def test_rechunk_array(make_array: ArrayFactory, zarr_format: int, max_mem: str | int) -> None:
    source = make_array(
        MemoryStore(),
        SHAPE,
        SOURCE_CHUNKS,
        dtype="i4",
        zarr_format=zarr_format,
        fill_value=-7,
        attributes={"units": "m", "nested": {"a": [1, 2]}},
        dimension_names=("y", "x"),
    )
    temp = MemoryStore() if max_mem == 2000 else None
    result = rechunk(source, TARGET_CHUNKS, max_mem, MemoryStore(), temp_store=temp)
    assert isinstance(result, Rechunked)
    assert len(result.spec) == 1
    assert (len(result.spec[0].stages) > 1) == (max_mem == 2000)
    target = result.execute()
    assert isinstance(target, zarr.Array)
    assert target.chunks == TARGET_CHUNKS
    assert target.metadata.zarr_format == zarr_format
    assert_same_array(target, source)


@pytest.mark.parametrize("zarr_format", FORMATS)
def test_rechunk_group(tmp_path: Path, make_group: GroupFactory, zarr_format: int) -> None:
    source = make_group(tmp_path / "source.zarr", zarr_format)
    result = rechunk(
        source,
        {"temp": (1, 45), "sub/deeper/counts": (10,), "sub/mask": (9, 1, 5)},
        3000,
        str(tmp_path / "target.zarr"),
        temp_store=str(tmp_path / "temp.zarr"),
    )
    assert len(result.spec) == 3
    target = result.execute()
    assert isinstance(target, zarr.Group)
    assert_same_group(target, source)
    assert target["temp"].chunks == (1, 45)
    assert target["sub/deeper/counts"].chunks == (10,)
    assert target["sub/mask"].chunks == (9, 1, 5)
    assert zarr.open_consolidated(str(tmp_path / "target.zarr"), zarr_format=zarr_format)
    assert not (tmp_path / "temp.zarr").exists()


def test_rechunk_group_by_dimension_name(tmp_path: Path, make_group: GroupFactory) -> None:
    source = make_group(MemoryStore(), 3)
    target = rechunk(source, {"x": 5}, "1MB", MemoryStore(), temp_store=MemoryStore()).execute()
    assert isinstance(target, zarr.Group)
    assert_same_group(target, source)
    assert target["temp"].chunks == (60, 5)  # y keeps its source chunks
    assert target["sub/deeper/counts"].chunks == (7,)  # dimension x2 is not named
    assert target["sub/mask"].chunks == (2, 4, 5)  # no dimension names: copied as is


@pytest.mark.parametrize(("source_format", "target_format"), [(2, 3), (3, 2)])
def test_target_format_from_options(
    make_array: ArrayFactory, source_format: int, target_format: int
) -> None:
    source = make_array(
        MemoryStore(),
        SHAPE,
        SOURCE_CHUNKS,
        zarr_format=source_format,
        dimension_names=("y", "x"),
        attributes={"units": "m"},
        fill_value=2.5,
    )
    target = rechunk(
        source,
        TARGET_CHUNKS,
        "1MB",
        MemoryStore(),
        target_options={"zarr_format": target_format},
        temp_store=MemoryStore(),
    ).execute()
    assert isinstance(target, zarr.Array)
    assert target.metadata.zarr_format == target_format
    npt.assert_array_equal(target[...], source[...])
    assert target.fill_value == 2.5
    if target_format == 3:
        assert target.metadata.dimension_names == ("y", "x")
        assert dict(target.attrs) == {"units": "m"}
    else:
        assert dict(target.attrs) == {"units": "m", "_ARRAY_DIMENSIONS": ["y", "x"]}


def test_chunk_values_follow_xarray_semantics(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), (20, 30, 7), (20, 1, 7), dimension_names=("t", "y", "x"))
    for request, expected in [
        ((-1, 4, 100), (20, 4, 7)),  # -1 is the whole dimension; too large is clipped
        ({"y": 6}, (20, 6, 7)),  # dimensions left out keep their source chunks
        (None, (20, 1, 7)),  # a copy
    ]:
        target = rechunk(source, request, "1MB", MemoryStore(), temp_store=MemoryStore()).execute()
        assert isinstance(target, zarr.Array)
        assert target.chunks == expected
        npt.assert_array_equal(target[...], source[...])


@pytest.mark.parametrize("max_mem", [2_000_000, "2MB", "2 MB", "1.5MiB", "0.002GB"])
def test_max_mem_forms(make_array: ArrayFactory, max_mem: int | str) -> None:
    source = make_array(MemoryStore(), (50, 40), (50, 1))
    target = rechunk(source, (1, 40), max_mem, MemoryStore()).execute()
    npt.assert_array_equal(target[...], source[...])


def test_no_temp_store_needed_when_one_stage_fits(make_array: ArrayFactory) -> None:
    """As in rechunker, temp_store is optional whenever a single stage fits max_mem."""
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    max_mem = single_stage_least_max_mem(SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS)
    result = rechunk(source, TARGET_CHUNKS, max_mem, MemoryStore())
    assert len(result.spec[0].stages) == 1
    npt.assert_array_equal(result.execute()[...], source[...])


def test_missing_temp_store_warns_when_one_stage_costs_much_more(
    make_array: ArrayFactory,
) -> None:
    """Leaving out temp_store still works, but a costly single stage is announced."""
    shape, chunks, target_chunks = (120, 30, 60), (4, 30, 60), (120, 3, 3)
    source = make_array(MemoryStore(), shape, chunks, dtype="f4")
    with pytest.warns(ExcessiveIOWarning, match=r"decodes each source chunk 5\.0 times"):
        result = rechunk(source, target_chunks, 2_000_000, MemoryStore())
    assert len(result.spec[0].stages) == 1
    npt.assert_array_equal(result.execute()[...], source[...])

    with warnings.catch_warnings():
        warnings.simplefilter("error", ExcessiveIOWarning)
        staged = rechunk(source, target_chunks, 2_000_000, MemoryStore(), temp_store=MemoryStore())
    assert len(staged.spec[0].stages) == 2
    npt.assert_array_equal(staged.execute()[...], source[...])


def test_least_max_mem_is_feasible(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    least = least_max_mem(source, TARGET_CHUNKS)
    result = rechunk(source, TARGET_CHUNKS, least, MemoryStore(), temp_store=MemoryStore())
    npt.assert_array_equal(result.execute()[...], source[...])


def test_overwrite_replaces_target_again_and_again(
    tmp_path: Path, make_array: ArrayFactory
) -> None:
    """Rechunking into the same place with new chunks must not reuse the old array."""
    source = make_array(tmp_path / "s.zarr", (20, 20), (20, 1), dtype="i4")
    for chunks in [(1, 20), (5, 5), (3, 7)]:
        result = rechunk(
            source,
            chunks,
            "1MB",
            str(tmp_path / "t.zarr"),
            target_options={"overwrite": True},
            executor="python",
        )
        target = result.execute()
        assert isinstance(target, zarr.Array)
        assert target.chunks == chunks
        npt.assert_array_equal(zarr.open_array(str(tmp_path / "t.zarr"))[...], source[...])


def test_target_and_temp_as_groups(tmp_path: Path, make_array: ArrayFactory) -> None:
    source = make_array(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    target_group = zarr.open_group(str(tmp_path / "t.zarr"), mode="w", attributes={"keep": 1})
    temp_group = zarr.open_group(str(tmp_path / "tmp.zarr"), mode="w")
    with pytest.raises(ValueError, match="array_name"):
        rechunk(source, TARGET_CHUNKS, 2000, target_group, temp_store=temp_group)
    result = rechunk(
        source, TARGET_CHUNKS, 2000, target_group, temp_store=temp_group, array_name="v"
    )
    assert len(result.spec[0].stages) > 1
    result.execute()
    npt.assert_array_equal(target_group["v"][...], source[...])
    assert dict(target_group.attrs) == {"keep": 1}
    # The intermediates are gone, leaving no empty group; the user's temp group stays.
    assert list(zarr.open_group(str(tmp_path / "tmp.zarr")).members(max_depth=None)) == []


def test_plan_is_the_executors_callable(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), (10, 10), (10, 1))
    target_store = MemoryStore()
    result = rechunk(source, (1, 10), "1MB", target_store, executor=PythonExecutor())
    assert callable(result.plan)
    result.plan()
    npt.assert_array_equal(zarr.open_array(target_store)[...], source[...])


# --------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------


def test_temp_compressors_default_and_override(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    target_codec = ZstdCodec(level=5)
    default = rechunk(
        source,
        TARGET_CHUNKS,
        2000,
        MemoryStore(),
        target_options={"compressors": target_codec},
        temp_store=MemoryStore(),
    )
    (intermediate, *_) = default.spec[0].intermediates
    # Whatever the documented default is, the intermediate has what zarr makes of it.
    reference = zarr.create_array(
        MemoryStore(), shape=(1,), dtype="i4", compressors=options.TEMP_COMPRESSORS
    )
    assert intermediate.open().compressors == reference.compressors
    assert tuple(default.spec[0].target.open().compressors) == (target_codec,)

    temp_codec = ZstdCodec(level=1)
    override = rechunk(
        source,
        TARGET_CHUNKS,
        2000,
        MemoryStore(),
        temp_store=MemoryStore(),
        temp_options={"compressors": temp_codec},
    )
    for ref in override.spec[0].intermediates:
        assert tuple(ref.open().compressors) == (temp_codec,)
    npt.assert_array_equal(override.execute()[...], source[...])
    npt.assert_array_equal(default.execute()[...], source[...])


def test_sharded_target(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    result = rechunk(
        source,
        (2, 18),
        6000,
        MemoryStore(),
        target_options={"shards": (10, 36)},
        temp_store=MemoryStore(),
    )
    last = result.spec[0].stages[-1]
    assert last.num_tasks > 1  # several tasks, each writing whole shards
    assert last.target.chunks == (10, 36)
    assert all(t % s == 0 or t == n for t, s, n in zip(last.task_chunks, (10, 36), SHAPE))
    target = result.execute()
    assert isinstance(target, zarr.Array)
    assert (target.chunks, target.shards) == ((2, 18), (10, 36))
    npt.assert_array_equal(target[...], source[...])


# --------------------------------------------------------------------------
# repr
# --------------------------------------------------------------------------


def test_repr_and_html(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    staged = rechunk(source, TARGET_CHUNKS, 2000, MemoryStore(), temp_store=MemoryStore())
    direct = rechunk(source, TARGET_CHUNKS, "64MB", MemoryStore())
    for result, stages in ((staged, len(staged.spec[0].stages)), (direct, 1)):
        text = repr(result)
        assert text.startswith("<Rechunked")
        assert f"{stages} stage(s)" in text
        assert f"{result.spec[0].num_tasks} tasks" in text
        assert str(SOURCE_CHUNKS) in text and str(TARGET_CHUNKS) in text
        assert "int32" in text and str(SHAPE) in text
    assert stages > 0
    assert "intermediate" in repr(staged) and "intermediate" in staged._repr_html_()
    assert "intermediate" not in repr(direct) and "intermediate" not in direct._repr_html_()
    html = staged._repr_html_()
    assert "<table>" in html and str(TARGET_CHUNKS) in html and "to move" in html


# --------------------------------------------------------------------------
# No engine imported
# --------------------------------------------------------------------------


def test_imports_no_engine(tmp_path: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import zarr
        import rechunker_core
        from rechunker_core import rechunk
        source = zarr.create_array({str(tmp_path / "s.zarr")!r}, shape=(20, 20), chunks=(20, 1),
                                   dtype="i4")
        source[...] = np.arange(400).reshape(20, 20)
        for executor in ("python", "threads"):
            target = rechunk(source, (1, 20), "1MB", {str(tmp_path)!r} + "/" + executor,
                             executor=executor).execute()
            assert (target[...] == source[...]).all()
        loaded = [m for m in ("dask", "prefect", "apache_beam", "xarray") if m in sys.modules]
        print("loaded:", loaded)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "loaded: []"


# --------------------------------------------------------------------------
# Bad input: a clear error, and nothing written
# --------------------------------------------------------------------------


@pytest.fixture
def disk_source(tmp_path: Path, make_array: ArrayFactory) -> zarr.Array:
    return make_array(
        tmp_path / "source.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4", dimension_names=("y", "x")
    )


def call(source: zarr.Array, tmp_path: Path, **changes: Any) -> Rechunked:
    args: dict[str, Any] = {
        "target_chunks": TARGET_CHUNKS,
        "max_mem": "1MB",
        "target_store": str(tmp_path / "target.zarr"),
        "temp_store": str(tmp_path / "temp.zarr"),
    }
    args.update(changes)
    return rechunk(source, **args)


BAD_INPUT = [
    ({"target_chunks": (1,)}, "has 1 entries but the source array has 2 dimensions"),
    ({"target_chunks": (1, 2, 3)}, "has 3 entries"),
    ({"target_chunks": (0, 36)}, "chunk size 0 .* must be a positive integer"),
    ({"target_chunks": (-3, 36)}, "chunk size -3 .* must be a positive integer"),
    ({"target_chunks": {"x": 0}}, "chunk size 0"),
    ({"target_chunks": {"z": 3}}, r"unknown dimension\(s\) \['z'\].*\['y', 'x'\]"),
    ({"target_chunks": (1.5, 36)}, "not an integer"),
    ({"max_mem": "lots"}, "max_mem='lots' is not a size"),
    ({"max_mem": "12XB"}, "is not a size"),
    ({"max_mem": -5}, "must be positive"),
    ({"max_mem": 100}, r"too small .* needs max_mem >= \d+ bytes"),
    ({"target_options": {"foo": 1}}, "unknown option 'foo' in target_options; accepted: .*"),
    ({"temp_options": {"foo": 1}}, "unknown option 'foo' in temp_options"),
    ({"target_options": {"chunks": (2, 2)}}, "may not set 'chunks'"),
    ({"executor": "nope"}, "unknown executor 'nope'"),
    ({"executor": object()}, "neither a registered name nor an Executor"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_INPUT)
def test_bad_input_writes_nothing(
    tmp_path: Path, disk_source: zarr.Array, changes: dict[str, Any], message: str
) -> None:
    before = snapshot(tmp_path / "source.zarr")
    with pytest.raises(ValueError, match=message):
        call(disk_source, tmp_path, **changes)
    assert snapshot(tmp_path / "target.zarr") == {}
    assert snapshot(tmp_path / "temp.zarr") == {}
    assert snapshot(tmp_path / "source.zarr") == before


ZARR_REJECTS = [
    ({"target_options": {"zarr_format": 2, "shards": (1, 36)}}, ValueError, "shard"),
    ({"target_options": {"fill_value": "abc"}}, ValueError, "abc"),
    (
        {"temp_options": {"compressors": "not-a-codec"}, "max_mem": 2000},
        ValueError,
        r"intermediate array .* with temp_options=\{'compressors': 'not-a-codec'\}: .*Codec",
    ),
    (
        # A numcodecs codec on a Zarr format 3 array: zarr says "'Blosc' object is not iterable"
        {"target_options": {"zarr_format": 3, "compressors": numcodecs.Blosc()}},
        ValueError,
        r"cannot create the target array \(Zarr format 3, .*target_options=.*Blosc",
    ),
]


@pytest.mark.parametrize(("changes", "error", "message"), ZARR_REJECTS)
def test_options_zarr_rejects_write_nothing(
    tmp_path: Path,
    disk_source: zarr.Array,
    changes: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """zarr's own checks run on scratch stores first, so they fail before any real write."""
    before = snapshot(tmp_path / "source.zarr")
    with pytest.raises(error, match=message):
        call(disk_source, tmp_path, **changes)
    assert snapshot(tmp_path / "target.zarr") == {}
    assert snapshot(tmp_path / "temp.zarr") == {}
    assert snapshot(tmp_path / "source.zarr") == before


def test_group_with_options_zarr_rejects_writes_nothing(
    tmp_path: Path, make_group: GroupFactory
) -> None:
    """A group's target groups would be written before its arrays: zarr must say no first."""
    source = make_group(tmp_path / "g.zarr", 3)
    with pytest.raises((TypeError, ValueError), match="abc"):
        rechunk(source, None, "1MB", str(tmp_path / "target.zarr"), {"fill_value": "abc"})
    assert snapshot(tmp_path / "target.zarr") == {}


def test_too_small_max_mem_gives_the_minimum(tmp_path: Path, disk_source: zarr.Array) -> None:
    with pytest.raises(ValueError, match=r"needs max_mem >= (\d+) bytes") as info:
        call(disk_source, tmp_path, max_mem=100)
    least = int(re.findall(r"max_mem >= (\d+) bytes", str(info.value))[0])
    with pytest.raises(ValueError, match="too small"):
        call(disk_source, tmp_path, max_mem=least - 1)
    assert snapshot(tmp_path / "target.zarr") == {}
    target = call(disk_source, tmp_path, max_mem=least).execute()
    npt.assert_array_equal(target[...], disk_source[...])


def test_existing_target_is_left_alone(
    tmp_path: Path, disk_source: zarr.Array, make_array: ArrayFactory
) -> None:
    existing = make_array(tmp_path / "target.zarr", (3,), (3,), attributes={"mine": True})
    before = snapshot(tmp_path / "target.zarr")
    with pytest.raises(ValueError, match=r"already holds data.*overwrite"):
        call(disk_source, tmp_path)
    assert snapshot(tmp_path / "target.zarr") == before
    assert snapshot(tmp_path / "temp.zarr") == {}
    npt.assert_array_equal(existing[...], np.arange(3))
    # A directory with a stray file counts as data too.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="already holds data"):
        call(disk_source, tmp_path, target_store=str(tmp_path / "other"))
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_missing_temp_store(tmp_path: Path, disk_source: zarr.Array) -> None:
    """A target given as a store object gets no scratch place: the error says what to pass."""
    least = least_max_mem(disk_source, TARGET_CHUNKS)
    assert least < single_stage_least_max_mem(SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS)
    store = LocalStore(str(tmp_path / "target.zarr"))
    with pytest.raises(
        ValueError, match=r"needs an intermediate array.*pass temp_store=.*target.zarr.rechunk-temp"
    ):
        call(disk_source, tmp_path, max_mem=least, temp_store=None, target_store=store)
    assert snapshot(tmp_path / "target.zarr") == {}


@pytest.mark.parametrize("keep_temp", [False, True])
def test_scratch_temp_beside_a_local_target(
    tmp_path: Path, disk_source: zarr.Array, keep_temp: bool
) -> None:
    least = least_max_mem(disk_source, TARGET_CHUNKS)
    scratch = tmp_path / "target.zarr.rechunk-temp"
    result = rechunk(
        disk_source, TARGET_CHUNKS, least, str(tmp_path / "target.zarr"), keep_temp=keep_temp
    )
    assert len(result.spec[0].stages) > 1  # planned as if temp_store were given
    assert f"intermediates: in {scratch}, a scratch directory beside the target" in (
        result.summary()
    )
    assert scratch.is_dir()
    target = result.execute(progress=False)
    assert isinstance(target, zarr.Array)
    npt.assert_array_equal(target[...], disk_source[...])
    assert scratch.exists() == keep_temp
    if keep_temp:
        kept = zarr.open_array(str(scratch / "intermediate1"))
        npt.assert_array_equal(kept[...], disk_source[...])


def test_no_scratch_when_one_stage_does(tmp_path: Path, disk_source: zarr.Array) -> None:
    result = rechunk(disk_source, None, "10MB", str(tmp_path / "target.zarr"))  # a copy
    assert len(result.spec[0].stages) == 1
    assert "a scratch directory" not in result.summary()
    result.execute(progress=False)
    assert not (tmp_path / "target.zarr.rechunk-temp").exists()


@pytest.mark.parametrize(
    "spelling",
    [
        lambda p: str(p),
        lambda p: Path(p),
        lambda p: LocalStore(str(p)),
        lambda p: f"file://{p}",
        lambda p: str(p) + "/",
    ],
    ids=["str", "Path", "LocalStore", "file-url", "trailing-slash"],
)
@pytest.mark.parametrize("same_as", ["source", "target"])
def test_temp_store_equal_to_source_or_target(
    tmp_path: Path, disk_source: zarr.Array, spelling: Any, same_as: str
) -> None:
    before = snapshot(tmp_path / "source.zarr")
    temp = spelling(tmp_path / f"{same_as}.zarr")
    with pytest.raises(ValueError, match=f"temp_store .* same place as the {same_as}"):
        call(disk_source, tmp_path, max_mem=2000, temp_store=temp)
    assert snapshot(tmp_path / "target.zarr") == {}
    assert snapshot(tmp_path / "source.zarr") == before


def test_temp_store_equal_to_source_in_memory(make_array: ArrayFactory) -> None:
    store = MemoryStore()
    source = make_array(store, SHAPE, SOURCE_CHUNKS, dtype="i4")
    target = MemoryStore()
    before = snapshot(store)
    for temp, what in ((store, "source"), (target, "target")):
        with pytest.raises(ValueError, match=f"same place as the {what}"):
            rechunk(source, TARGET_CHUNKS, 2000, target, temp_store=temp)
    assert snapshot(store) == before
    assert snapshot(target) == {}


def test_unsupported_source(tmp_path: Path) -> None:
    for source in (np.zeros((4, 4)), 42, [1, 2, 3]):
        with pytest.raises(TypeError, match=r"unsupported source.*zarr.Array"):
            rechunk(source, (2, 2), "1MB", str(tmp_path / "t.zarr"))
    assert snapshot(tmp_path / "t.zarr") == {}


def test_unknown_executor_lists_every_registered_name(
    tmp_path: Path, disk_source: zarr.Array, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = executors.entry_points
    extra = EntryPoint(
        name="plugin-python",
        value="rechunker_core.executors.python:PythonExecutor",
        group=executors.ENTRY_POINT_GROUP,
    )

    def with_plugin(**kwargs: Any) -> Any:
        found = list(real(**kwargs))
        return [*found, extra] if kwargs.get("group") == executors.ENTRY_POINT_GROUP else found

    monkeypatch.setattr(executors, "entry_points", with_plugin)
    names = registered_executors()
    assert set(BUILTIN_EXECUTORS) == {"python", "threads", "dask", "prefect", "beam"}
    assert set(BUILTIN_EXECUTORS) | {"plugin-python"} <= set(names)
    with pytest.raises(ValueError, match="unknown executor 'nope'") as info:
        call(disk_source, tmp_path, executor="nope")
    for name in names:
        assert name in str(info.value)
    assert snapshot(tmp_path / "target.zarr") == {}
    # The registered plugin name works like a built-in one.
    target = call(disk_source, tmp_path, executor="plugin-python").execute()
    npt.assert_array_equal(target[...], disk_source[...])


# --------------------------------------------------------------------------
# The engine's own memory
# --------------------------------------------------------------------------


def stage_tasks(rechunked: Rechunked) -> list[tuple[int, ...]]:
    return [tuple(stage.task_chunks) for stage in rechunked.spec[0].stages]


def test_an_engines_own_memory_counts_in_every_task_peak(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    plain = rechunk(source, TARGET_CHUNKS, 100_000, MemoryStore(), temp_store=MemoryStore())
    target = MemoryStore()
    engine = rechunk(
        source,
        TARGET_CHUNKS,
        100_000,
        target,
        executor=EngineExecutor(1000),
        temp_store=MemoryStore(),
    )
    # Far from max_mem, the tasks are the same; each peak holds the engine's memory too.
    assert stage_tasks(engine) == stage_tasks(plain)
    assert engine.peak_task_memory == plain.peak_task_memory + 1000
    engine.execute()
    assert_same_array(zarr.open_array(target), source)


def test_tasks_shrink_to_leave_room_for_the_engine(make_array: ArrayFactory) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    max_mem = rechunk(
        source, TARGET_CHUNKS, 100_000, MemoryStore(), temp_store=MemoryStore()
    ).peak_task_memory
    plain = rechunk(source, TARGET_CHUNKS, max_mem, MemoryStore(), temp_store=MemoryStore())
    assert plain.peak_task_memory == max_mem  # the tightest budget of that plan
    target = MemoryStore()
    engine_memory = max_mem // 8
    engine = rechunk(
        source,
        TARGET_CHUNKS,
        max_mem,
        target,
        executor=EngineExecutor(engine_memory),
        temp_store=MemoryStore(),
    )
    assert stage_tasks(engine) != stage_tasks(plain)
    assert engine.peak_task_memory <= max_mem
    engine.execute()
    assert_same_array(zarr.open_array(target), source)


def test_an_engine_larger_than_an_eighth_of_max_mem_is_not_counted(
    make_array: ArrayFactory,
) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    plain = rechunk(source, TARGET_CHUNKS, 100_000, MemoryStore(), temp_store=MemoryStore())
    engine = rechunk(
        source,
        TARGET_CHUNKS,
        100_000,
        MemoryStore(),
        executor=EngineExecutor(12_501),
        temp_store=MemoryStore(),
    )
    assert engine.peak_task_memory == plain.peak_task_memory


def test_a_budget_the_engine_leaves_too_small_is_refused_naming_both(
    make_array: ArrayFactory,
) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    least = least_max_mem(source, TARGET_CHUNKS)
    target = MemoryStore()
    with pytest.raises(ValueError, match=rf"max_mem={least} leaves {least - least // 8} bytes"):
        rechunk(
            source,
            TARGET_CHUNKS,
            least,
            target,
            temp_store=MemoryStore(),
            executor=EngineExecutor(least // 8),
        )
    assert not list(snapshot(target))


@pytest.mark.parametrize("value", [-1, 2.5, "4MB", True])
def test_a_bad_engine_memory_is_refused_by_name(make_array: ArrayFactory, value: Any) -> None:
    source = make_array(MemoryStore(), SHAPE, SOURCE_CHUNKS, dtype="i4")
    target = MemoryStore()
    with pytest.raises(ValueError, match=re.escape(f"EngineExecutor.engine_memory={value!r}")):
        rechunk(source, TARGET_CHUNKS, 100_000, target, executor=EngineExecutor(value))
    assert not list(snapshot(target))
