"""The command line as a shell runs it: a new process, each option, the target compared.

Each test runs ``rechunker-core`` (or ``python -m rechunker_core``) in a
subprocess and compares the target with its source element by element.
"""

from __future__ import annotations

import logging
import os
import pty
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import numpy.testing as npt
import pytest
import zarr

from rechunker_core.cli import _parser
from tests.helpers import ArrayFactory, GroupFactory, assert_same_array, run_cli, run_cli_ok

SHAPE, CHUNKS = (40, 36), (40, 1)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1 with a bucket ``rechunk``; nothing leaves the machine."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **credentials)
        client.create_bucket(Bucket="rechunk")
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def source(tmp_path: Path, make_array: ArrayFactory) -> Path:
    path = tmp_path / "source.zarr"
    make_array(path, SHAPE, CHUNKS, dtype="f4", dimension_names=("time", "x"), fill_value=-1)
    return path


def test_module_version_and_plain_help() -> None:
    as_module = subprocess.run(
        [sys.executable, "-m", "rechunker_core", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert as_module.stdout.strip() == "rechunker-core 0.1.0"
    # Help text is built in this process: the same parser the command uses.
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for shown in (parser.format_help(), *(c.format_help() for c in commands.values())):
        assert "``" not in shown and ":func:" not in shown and ":class:" not in shown


def test_target_and_temp_options(tmp_path: Path, source: Path) -> None:
    target, temp = tmp_path / "t.zarr", tmp_path / "tmp.zarr"
    done = run_cli_ok(
        "run", source, target, "--target-chunks", "1,-1", "--max-mem", "2500", "--temp", temp,
        "--target-option", "zarr_format=2", "--target-option", "compressors=blosc-lz4",
        "--target-option", "fill_value=nan", "--temp-option", "compressors=zstd:1",
        "--keep-temp", "--workers", "2",
    )  # fmt: skip
    assert "done in" in done.stdout and "read" in done.stdout and "wrote" in done.stdout
    result = zarr.open_array(str(target))
    assert result.metadata.zarr_format == 2 and result.chunks == (1, 36)
    assert result.compressors == (numcodecs.Blosc(cname="lz4", clevel=5),)
    assert np.isnan(result.fill_value)  # as asked, not the source's -1
    npt.assert_array_equal(result[...], zarr.open_array(str(source))[...])
    kept = zarr.open_array(str(temp / "intermediate1"))  # --keep-temp
    assert kept.metadata.zarr_format == 2 and kept.compressors == (numcodecs.Zstd(level=1),)
    npt.assert_array_equal(kept[...], result[...])


def test_sharded_target_with_the_default_max_mem(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "t.zarr"
    done = run_cli_ok(
        "run", source, target, "--target-chunks", "time=2,x=-1",
        "--target-option", "shards=10,36", "--temp", tmp_path / "tmp.zarr",
    )  # fmt: skip
    assert "max_mem: default: 50% of the memory available over" in done.stdout
    result = zarr.open_array(str(target))
    assert (result.chunks, result.shards) == ((2, 36), (10, 36))
    assert_same_array(result, zarr.open_array(str(source)))


def test_group_with_chunks_per_array_on_dask_threads(
    tmp_path: Path, make_group: GroupFactory
) -> None:
    source = make_group(tmp_path / "g.zarr", 3)
    target = tmp_path / "t.zarr"
    run_cli_ok(
        "run", tmp_path / "g.zarr", target, "--max-mem", "2500",
        "--target-chunks", "temp:1,45", "--target-chunks", "sub/deeper/counts:10",
        "--temp", tmp_path / "tmp.zarr", "--executor", "dask", "--workers", "2",
    )  # fmt: skip
    result = zarr.open_group(str(target))
    assert set(result.array_keys()) == {"temp"}
    assert result["temp"].chunks == (1, 45)
    assert result["sub/deeper/counts"].chunks == (10,)
    for name in ("temp", "sub/deeper/counts"):
        assert_same_array(result[name], source[name])


def test_a_running_dask_scheduler(tmp_path: Path, source: Path, dask_client: Any) -> None:
    target = tmp_path / "t.zarr"
    address = dask_client.scheduler.address
    run_cli_ok(
        "run", source, target, "--target-chunks", "1,-1", "--max-mem", "2500",
        "--temp", tmp_path / "tmp.zarr", "--executor", "dask", "--scheduler", address,
    )  # fmt: skip
    assert_same_array(zarr.open_array(str(target)), zarr.open_array(str(source)))


def test_an_xarray_dataset_stored_as_zarr(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset(
        {"air": (("time", "lat", "lon"), np.random.default_rng(1).random((24, 6, 8)))},
        coords={"time": np.arange(24), "lat": np.linspace(0, 50, 6), "lon": np.arange(8.0)},
        attrs={"title": "cli"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.chunk({"time": 1}).to_zarr(tmp_path / "ds.zarr", mode="w", consolidated=True)
    target = tmp_path / "t.zarr"
    done = run_cli_ok(
        "run", tmp_path / "ds.zarr", target, "--target-chunks", "time=-1,lat=3", "--max-mem", "1MB"
    )
    assert "onsolidated" not in done.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = xr.open_zarr(target)
    xr.testing.assert_identical(result, ds)
    assert result["air"].encoding["chunks"] == (24, 3, 8)
    assert result["lat"].encoding["chunks"] == (6,)


def test_s3_with_storage_options(tmp_path: Path, source: Path, s3_endpoint: str) -> None:
    target = "s3://rechunk/cli/t.zarr"
    options = ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    options += ["--storage-option", f"endpoint_url={s3_endpoint}"]
    run_cli_ok("run", source, target, "--target-chunks", "4,-1", "--max-mem", "1MB", *options)
    info = run_cli_ok("info", target, *options).stdout
    assert info.startswith(f"{target}: shape (40, 36), float32, chunks (4, 36)")
    stored = zarr.open_array(
        target,
        mode="r",
        storage_options={"key": "testing", "secret": "testing", "endpoint_url": s3_endpoint},
    )
    assert_same_array(stored, zarr.open_array(str(source)))


def test_plan_svg_and_info(tmp_path: Path, make_group: GroupFactory) -> None:
    make_group(tmp_path / "g.zarr", 3)
    svg = tmp_path / "plan.svg"
    done = run_cli_ok(
        "plan", tmp_path / "g.zarr" / "temp", "--target-chunks", "1,-1", "--max-mem", "2500",
        "--svg", svg,
    )  # fmt: skip
    assert done.stdout.startswith("zarr array, max_mem 2.5 kB\ntemp (")
    root = ET.parse(svg).getroot()
    roles = [g.get("data-role") for g in root.iter() if g.get("class") == "array"]
    assert roles[0] == "source" and roles[-1] == "target" and "intermediate 1" in roles
    info = run_cli_ok("info", tmp_path / "g.zarr").stdout
    assert "temp: shape" in info and "sub/deeper/counts: shape" in info


def test_bad_input_is_one_line_and_status_2(tmp_path: Path, source: Path) -> None:
    target = tmp_path / "t.zarr"
    bad = run_cli(
        "run", source, target, "--target-chunks", "1,-1", "--target-option", "compressor=zstd"
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert "did you mean 'compressors'" in bad.stderr and "--target-option" in bad.stderr
    assert not target.exists()


def test_run_in_a_terminal_shows_bars(tmp_path: Path, source: Path) -> None:
    """stderr a terminal (a pty): the bars appear by default, one per stage."""
    controller, terminal = pty.openpty()
    command = [sys.executable, "-m", "rechunker_core", "run", str(source), str(tmp_path / "t")]
    command += ["--target-chunks", "1,-1", "--max-mem", "2500", "--temp", str(tmp_path / "tmp")]
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal
    ) as run:
        os.close(terminal)
        shown = b""
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # the process closed the terminal
                break
            if not data:
                break
            shown += data
        out = run.communicate(timeout=120)[0].decode()
    os.close(controller)
    assert run.returncode == 0
    text = shown.decode(errors="replace")
    assert "stage 0: 100%" in text and "stage 1: 100%" in text
    assert "done in" in out
    assert_same_array(zarr.open_array(str(tmp_path / "t")), zarr.open_array(str(source)))
