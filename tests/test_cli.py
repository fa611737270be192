"""Tests for the ``rechunker-core`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy.testing as npt
import pytest
import zarr

from rechunker_core.cli import _parser, main, parse_target_chunks
from tests.helpers import ArrayFactory, GroupFactory, assert_same_array, snapshot

SHAPE, SOURCE_CHUNKS = (40, 36), (40, 1)


@pytest.fixture
def source_path(tmp_path: Path, make_array: ArrayFactory) -> Path:
    path = tmp_path / "source.zarr"
    make_array(path, SHAPE, SOURCE_CHUNKS, dtype="i4", dimension_names=("time", "x"))
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("time=8760,lat=10,lon=-1", {"time": 8760, "lat": 10, "lon": -1}),
        (" time = 5 , x=2 ", {"time": 5, "x": 2}),
        ("8760,10,10", (8760, 10, 10)),
        ("7", (7,)),
        ("-1,3,", (-1, 3)),
    ],
)
def test_parse_target_chunks(text: str, expected: object) -> None:
    assert parse_target_chunks(text) == expected


@pytest.mark.parametrize("text", ["", " , ", "a=1,2", "x=y", "1,two", "1.5,2"])
def test_parse_target_chunks_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="--target-chunks"):
        parse_target_chunks(text)


def test_plan_prints_a_summary(source_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(source_path)
    status = main(["plan", str(source_path), "--target-chunks", "time=1", "--max-mem", "4kB"])
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.startswith("zarr array, max_mem 4.0 kB")
    assert "(40, 36) int32" in out.out
    assert "stage 0: (40, 1) -> " in out.out
    assert "peak task memory" in out.out
    assert snapshot(source_path) == before


@pytest.mark.parametrize("executor", ["python", "threads"])
def test_run_rechunks(
    tmp_path: Path, source_path: Path, executor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "target.zarr"
    argv = ["run", str(source_path), str(target), "--target-chunks", "1,-1"]
    argv += ["--max-mem", "3kB", "--temp", str(tmp_path / "temp.zarr"), "--executor", executor]
    status = main(argv)
    out = capsys.readouterr()
    assert status == 0, out.err
    assert out.out.startswith("<Rechunked zarr array")
    assert "done in" in out.out
    result = zarr.open_array(str(target))
    assert result.chunks == (1, 36)
    assert_same_array(result, zarr.open_array(str(source_path)))
    assert not (tmp_path / "temp.zarr").exists()


def test_run_group_and_overwrite(
    tmp_path: Path, make_group: GroupFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    source = make_group(tmp_path / "g.zarr", 3)
    target = tmp_path / "t.zarr"
    argv = ["run", str(tmp_path / "g.zarr"), str(target), "--target-chunks", "x=5,y=60"]
    argv += ["--max-mem", "1MB"]
    assert main(argv) == 0
    assert main(argv) == 2  # the target now holds data
    assert "already holds data" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    result = zarr.open_group(str(target))
    assert result["temp"].chunks == (60, 5)
    npt.assert_array_equal(result["temp"][...], source["temp"][...])
    npt.assert_array_equal(result["sub/deeper/counts"][...], source["sub/deeper/counts"][...])


def test_demo_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["demo", "--dir", str(tmp_path), "--hours", "72", "--max-mem", "5MB"])
    out = capsys.readouterr().out
    assert status == 0
    assert "check: target == source, element by element" in out
    npt.assert_array_equal(
        zarr.open_array(str(tmp_path / "target.zarr"))[...],
        zarr.open_array(str(tmp_path / "source.zarr"))[...],
    )


BAD_ARGS = [
    (["--target-chunks", "1,2,3", "--max-mem", "1MB"], "has 3 entries"),
    (["--target-chunks", "0,36", "--max-mem", "1MB"], "chunk size 0"),
    (["--target-chunks", "nope=3", "--max-mem", "1MB"], "unknown dimension"),
    (["--target-chunks", "1,x", "--max-mem", "1MB"], "--target-chunks"),
    (["--target-chunks", "1,36", "--max-mem", "lots"], "max_mem='lots' is not a size"),
    (["--target-chunks", "1,36", "--max-mem", "100"], "too small"),
    (["--target-chunks", "1,36", "--max-mem", "1MB", "--executor", "nope"], "unknown executor"),
    (["--max-mem", "1MB"], "required: --target-chunks"),
    (["--target-chunks", "1,36", "--target-option", "compressor=zstd"], "did you mean"),
    (["--target-chunks", "1,36", "--target-option", "compressors=brotli"], "known compressor"),
    (["--target-chunks", "1,36", "--target-option", "zarr_format"], "is not KEY=VALUE"),
    (["--target-chunks", "1,36", "--workers", "0"], "not a positive integer"),
    (["--target-chunks", "1,36", "--executor", "python", "--workers", "2"], "--workers"),
    (["--target-chunks", "1,36", "--scheduler", "tcp://127.0.0.1:1"], "--scheduler is for"),
    (["--target-chunks", "a:1,36", "--target-chunks", "1,36"], "name the array in each"),
]


@pytest.mark.parametrize(("args", "message"), BAD_ARGS)
def test_run_bad_input(
    tmp_path: Path,
    source_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    target = tmp_path / "target.zarr"
    try:
        status = main(["run", str(source_path), str(target), *args])
    except SystemExit as exit_:  # argparse's own errors exit
        status = exit_.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("rechunker-core"), err
    assert message in err
    assert snapshot(target) == {}


def test_plan_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["plan", str(tmp_path / "nothing"), "--target-chunks", "1", "--max-mem", "1MB"])
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"rechunker-core: error: no zarr array or group at {tmp_path / 'nothing'}\n"
    assert not (tmp_path / "nothing").exists()


def test_subprocess_run_and_bad_input(tmp_path: Path, source_path: Path) -> None:
    """The module runs as a program: exit statuses and streams as a shell sees them."""
    command = [sys.executable, "-m", "rechunker_core.cli", "run", str(source_path)]
    target = tmp_path / "target.zarr"
    bad = subprocess.run(
        [*command, str(target), "--target-chunks", "1,36", "--max-mem", "1XB"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1, bad.stderr
    assert "is not a size" in bad.stderr
    assert not target.exists()

    good = subprocess.run(
        [*command, str(target), "--target-chunks", "time=1", "--max-mem", "1MB"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert good.returncode == 0, good.stderr
    assert "done in" in good.stdout
    npt.assert_array_equal(
        zarr.open_array(str(target))[...], zarr.open_array(str(source_path))[...]
    )


def test_run_without_temp_uses_a_scratch_directory(
    tmp_path: Path, source_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "target.zarr"
    argv = ["run", str(source_path), str(target), "--target-chunks", "1,36", "--max-mem", "500"]
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"intermediates: in {target}.rechunk-temp, a scratch directory" in out
    assert_same_array(zarr.open_array(str(target)), zarr.open_array(str(source_path)))
    assert not Path(f"{target}.rechunk-temp").exists()


def test_every_option_is_in_the_cli_reference() -> None:
    """docs/cli.md names every command and option the parser has."""
    reference = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    parser = _parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, command in commands.items():
        assert f"`{name}" in reference, name
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in reference, f"{name} {option}"
