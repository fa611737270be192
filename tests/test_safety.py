"""Data safety: a rechunk never touches the source or the user's files.

Each case of the data-safety issue is reproduced here; every test hashes the
user's whole directory tree before and after, and either sees the run refused
with a message naming the conflict, or (for legitimate input) the target equal
to the source.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import numpy.testing as npt
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from zarr.storage import LocalStore

from rechunker_core import rechunk
from rechunker_core.cli import main
from rechunker_core.executors.threads import ThreadsExecutor
from rechunker_core.locations import CLAIM_KEY, overlap, resolve_location
from tests.helpers import create_array, run_cli

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS = (40, 36), (40, 1), (1, 36)
#: Small enough that this rechunk needs an intermediate (two stages).
TWO_STAGES = 2000


def tree(path: Path) -> dict[str, str]:
    """Every file and symlink below ``path``, with a hash of its bytes or its link."""
    found = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = Path(root, name)
            key = str(full.relative_to(path))
            if full.is_symlink():
                found[key] = "-> " + os.readlink(full)
            elif full.is_file():
                found[key] = hashlib.sha256(full.read_bytes()).hexdigest()
            else:
                found[key] = "dir"
    return found


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A user's directory: a source array, notes, and a scratch folder with a thesis."""
    create_array(tmp_path / "src.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4")
    (tmp_path / "notes.txt").write_text("my notes")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "thesis.tex").write_text(r"\documentclass{article}")
    return tmp_path


def cli_here(*args: Any, cwd: Path) -> tuple[int, str]:
    """Run the command line in this process, in ``cwd``; return its status and stderr."""
    err, before = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = main([str(arg) for arg in args])
    finally:
        os.chdir(before)
    return status, err.getvalue()


@pytest.fixture
def unchanged(ws: Path) -> Iterator[None]:
    """Assert the user's tree is byte for byte the same after the test."""
    before = tree(ws)
    yield
    assert tree(ws) == before


def expected() -> np.ndarray:
    return np.arange(np.prod(SHAPE)).astype("i4").reshape(SHAPE)


# --------------------------------------------------------------------------
# 1. The source under another spelling, as the target
# --------------------------------------------------------------------------

SPELLINGS: list[tuple[str, Callable[[Path], Any], dict[str, Any]]] = [
    ("same", lambda ws: "src.zarr", {}),
    ("trailing-slash", lambda ws: "src.zarr/", {}),
    ("dot-dot", lambda ws: "./x/../src.zarr", {}),
    ("symlinked-parent", lambda ws: "link/src.zarr", {}),
    ("absolute", lambda ws: str(ws / "src.zarr"), {}),
    ("file-url", lambda ws: f"file://{ws}/src.zarr", {"storage_options": {"auto_mkdir": True}}),
    ("local-store", lambda ws: LocalStore("src.zarr"), {}),
]


@pytest.mark.parametrize("source_kind", ["relative-array", "path-string"])
@pytest.mark.parametrize(("name", "spell", "options"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_target_is_the_source_spelled_another_way(
    ws: Path,
    unchanged: None,
    monkeypatch: pytest.MonkeyPatch,
    source_kind: str,
    name: str,
    spell: Callable[[Path], Any],
    options: dict[str, Any],
) -> None:
    monkeypatch.chdir(ws)
    (ws / "link").symlink_to(ws)
    try:
        source = (
            zarr.open_array("src.zarr", mode="r") if source_kind == "relative-array" else "src.zarr"
        )
        with pytest.raises(ValueError, match="is the same place as the source"):
            rechunk(
                source,
                TARGET_CHUNKS,
                "1MB",
                spell(ws),
                target_options={"overwrite": True, **options},
            )
    finally:
        (ws / "link").unlink()


def test_cli_target_is_the_source(ws: Path, unchanged: None) -> None:
    done = run_cli("run", "src.zarr", "./src.zarr/", "--target-chunks", "1,36",
                   "--max-mem", "1MB", "--overwrite", cwd=ws)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "same place as the source" in done.stderr


# --------------------------------------------------------------------------
# 2, 3, 5, 10. Targets and temps that hold one another
# --------------------------------------------------------------------------


def test_target_holding_the_source_is_refused(ws: Path, unchanged: None) -> None:
    source = zarr.open_array(ws / "src.zarr", mode="r")
    with pytest.raises(ValueError, match=r"the target .* holds the source"):
        rechunk(source, TARGET_CHUNKS, "1MB", str(ws), target_options={"overwrite": True})


def test_group_target_naming_the_source_array_is_refused(tmp_path: Path) -> None:
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    create_array(group, SHAPE, SOURCE_CHUNKS, name="src", dtype="i4")
    (tmp_path / "g.zarr" / "mine.txt").write_text("keep")
    before = tree(tmp_path)
    for name in ("src", "/src", "src/"):
        with pytest.raises(ValueError, match="same place as the source"):
            rechunk(group["src"], TARGET_CHUNKS, "1MB", group, array_name=name,
                    target_options={"overwrite": True})  # fmt: skip
    for name in ("", "/", "a/../b"):
        with pytest.raises(ValueError, match="does not name an array"):
            rechunk(group["src"], TARGET_CHUNKS, "1MB", group, array_name=name,
                    target_options={"overwrite": True})  # fmt: skip
    assert tree(tmp_path) == before
    # Beside the source, in the same group: legitimate, and the source stays.
    out = rechunk(group["src"], TARGET_CHUNKS, "1MB", group, array_name="out").execute()
    npt.assert_array_equal(out[...], expected())
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before


def test_temp_holding_the_source_is_refused(ws: Path, unchanged: None) -> None:
    source = zarr.open_array(ws / "src.zarr", mode="r")
    with pytest.raises(ValueError, match=r"temp_store .* holds the source"):
        rechunk(source, TARGET_CHUNKS, TWO_STAGES, str(ws / "out" / "t.zarr"),
                target_options={"overwrite": True}, temp_store=str(ws))  # fmt: skip


def test_temp_holding_the_target_is_refused(ws: Path, unchanged: None) -> None:
    source = zarr.open_array(ws / "src.zarr", mode="r")
    with pytest.raises(ValueError, match=r"temp_store .* holds the target"):
        rechunk(source, TARGET_CHUNKS, TWO_STAGES, str(ws / "new" / "t.zarr"),
                temp_store=str(ws / "new"))  # fmt: skip
    assert not (ws / "new").exists()


def test_temp_group_inside_a_group_target_is_refused(tmp_path: Path, make_group: Any) -> None:
    source = make_group(tmp_path / "src.zarr")
    target = zarr.open_group(tmp_path / "out.zarr", mode="w")
    temp = target.create_group("tmp")
    before = tree(tmp_path)
    with pytest.raises(ValueError, match=r"temp_store .* inside the target"):
        rechunk(source, {"temp": (1, 45)}, 2500, target, temp_store=temp)
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------
# 4. A temp directory holding the user's files
# --------------------------------------------------------------------------


def test_temp_with_user_files_keeps_them(ws: Path) -> None:
    before = tree(ws)
    done = run_cli("run", "src.zarr", "t.zarr", "--target-chunks", "1,36", "--max-mem",
                   TWO_STAGES, "--temp", "scratch", "--overwrite", cwd=ws)  # fmt: skip
    assert done.returncode == 0, done.stderr
    npt.assert_array_equal(zarr.open_array(ws / "t.zarr", mode="r")[...], expected())
    after = tree(ws)
    assert {k: v for k, v in after.items() if not k.startswith("t.zarr")} == before
    assert not (ws / "t.zarr" / CLAIM_KEY).exists()


# --------------------------------------------------------------------------
# 6. Two runs at once into one target
# --------------------------------------------------------------------------


def _race_worker(jobs: Any, results: Any) -> None:
    """Run rechunks as the parent says: (source, target, temp, start time)."""
    while (job := jobs.get()) is not None:
        source, target, temp, start = job
        time.sleep(max(0.0, start - time.time()))
        try:
            rechunk(zarr.open_array(source, mode="r"), TARGET_CHUNKS, TWO_STAGES, target,
                    temp_store=temp, executor="threads").execute()  # fmt: skip
        except ValueError as error:
            results.put(("refused", str(error)))
        except Exception as error:  # anything else is a defect the test reports
            results.put(("crashed", f"{type(error).__name__}: {error}"))
        else:
            results.put(("ok", ""))


#: Pairs of runs started at once, each pair into a new target.
RACES = 16


def test_two_runs_into_one_target(ws: Path) -> None:
    context = multiprocessing.get_context("spawn")
    jobs, results = context.Queue(), context.Queue()
    workers = [context.Process(target=_race_worker, args=(jobs, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    rng = random.Random(7)
    outcomes = []
    try:
        for i in range(RACES):
            target, temp = str(ws / f"t{i}.zarr"), str(ws / "tmp.zarr")
            start = time.time() + 0.1
            for _ in workers:
                jobs.put((str(ws / "src.zarr"), target, temp, start + rng.uniform(0, 0.05)))
            pair = sorted(results.get(timeout=120) for _ in workers)
            outcomes.append(pair)
            assert "crashed" not in {kind for kind, _ in pair}, pair
            oks = [kind for kind, _ in pair].count("ok")
            assert oks <= 1, pair
            for kind, message in pair:
                if kind == "refused":
                    assert "being written by another run" in message or "already holds" in message
            if oks:
                npt.assert_array_equal(zarr.open_array(target, mode="r")[...], expected())
            else:
                assert not Path(target).exists()
    finally:
        for _ in workers:
            jobs.put(None)
        for worker in workers:
            worker.join(30)
    npt.assert_array_equal(zarr.open_array(ws / "src.zarr", mode="r")[...], expected())
    assert not (ws / "tmp.zarr").exists()  # the shared temp was removed by its last user
    # Most pairs really overlapped: one was refused while the other held the target.
    assert sum(pair[0][0] == "ok" and pair[1][0] == "refused" for pair in outcomes) >= RACES // 2


# --------------------------------------------------------------------------
# 7. Empty paths and the demo's directory
# --------------------------------------------------------------------------


def test_empty_target_is_refused(ws: Path, unchanged: None) -> None:
    status, err = cli_here("run", "src.zarr", "", "--target-chunks", "1,36", "--max-mem", "1MB",
                           "--overwrite", cwd=ws)  # fmt: skip
    assert status == 2
    assert err.count("\n") == 1 and "TARGET is an empty path" in err
    for place in (".", str(ws), "/"):
        status, err = cli_here("run", "src.zarr", place, "--target-chunks", "1,36",
                               "--max-mem", "1MB", "--overwrite", cwd=ws)  # fmt: skip
        assert status == 2, err
        assert err.count("\n") == 1


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    mydata = tmp_path / "mydata"
    (mydata / "source.zarr").mkdir(parents=True)
    (mydata / "source.zarr" / "results.csv").write_text("1,2,3")
    before = tree(tmp_path)
    done = run_cli("demo", "--dir", mydata, "--hours", 48, cwd=tmp_path)
    assert done.returncode == 2 and "did not write" in done.stderr
    assert tree(tmp_path) == before
    # A new directory works, and so does running the demo there again.
    for _ in range(2):
        done = run_cli("demo", "--dir", tmp_path / "fresh", "--hours", 48, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "check: target == source" in done.stdout


# --------------------------------------------------------------------------
# 8. The parts workflow
# --------------------------------------------------------------------------


def test_parts_run_in_order_and_in_full(ws: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """In this process, a command at a time (tests/executors/test_parts.py runs real processes)."""
    plan = ws / "plan.json"
    status, err = cli_here("plan", "src.zarr", "--target-chunks", "1,36", "--max-mem", TWO_STAGES,
                           "--target", "t.zarr", "--temp", "tmp.zarr", "--save", plan, "--parts", 2,
                           cwd=ws)  # fmt: skip
    assert status == 0, err
    # Run from elsewhere, next to another array called src.zarr full of 42s.
    other = tmp_path_factory.mktemp("elsewhere")
    create_array(other / "src.zarr", SHAPE, SOURCE_CHUNKS, dtype="i4", data=np.full(SHAPE, 42))
    for args, message in [
        (("run-part", plan, "--stage", 1, "--part", 0), "parts [0, 1] of stage 0 have not"),
        (("finish", plan), "have not finished"),
        (("run-part", plan, "--stage", 0, "--part", 0, "--of", 3), "saved for 2 parts"),
    ]:
        status, err = cli_here(*args, cwd=other)
        assert status == 2 and message in err, err
    assert cli_here("run-part", plan, "--stage", 0, "--part", 0, "--quiet", cwd=other)[0] == 0
    status, err = cli_here("run-part", plan, "--stage", 1, "--part", 0, cwd=other)
    assert status == 2 and "parts [1] of stage 0" in err, err
    for stage in (0, 1):
        for part in (0, 1) if stage else (1,):
            status, err = cli_here("run-part", plan, "--stage", stage, "--part", part, "--quiet",
                                   cwd=other)  # fmt: skip
            assert status == 0, err
    assert cli_here("finish", plan, cwd=other)[0] == 0
    npt.assert_array_equal(zarr.open_array(ws / "t.zarr", mode="r")[...], expected())
    assert not (ws / "tmp.zarr").exists() and not (ws / "t.zarr" / CLAIM_KEY).exists()


# --------------------------------------------------------------------------
# 9. -0.0 is not the fill value 0.0
# --------------------------------------------------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_negative_zero_survives(tmp_path: Path, zarr_format: int) -> None:
    data = np.zeros(SHAPE)
    data[:, :12] = -0.0  # whole chunks of -0.0, in both layouts
    data[5, 30] = 1.0
    source = create_array(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, fill_value=0.0,
                          zarr_format=zarr_format, data=data)  # fmt: skip
    target = rechunk(source, TARGET_CHUNKS, TWO_STAGES, str(tmp_path / "t.zarr"),
                     temp_store=str(tmp_path / "tmp.zarr")).execute()  # fmt: skip
    assert np.signbit(source[...]).sum() == 12 * 40
    npt.assert_array_equal(target[...].view("u8"), source[...].view("u8"))


# --------------------------------------------------------------------------
# 11. Errors raised after something was written
# --------------------------------------------------------------------------


def _bad_temps(ws: Path) -> list[tuple[Any, dict[str, Any], str]]:
    group = zarr.open_group(ws / "tg.zarr", mode="w")
    create_array(group, (2,), (1,), name="v.intermediate1", dtype="i4")
    return [
        (str(ws / "notes.txt"), {}, "is a file"),
        (str(ws / "notes.txt" / "tmp.zarr"), {}, "is a file"),
        (LocalStore(str(ws / "ro"), read_only=True), {}, "read-only"),
        (group, {"array_name": "v"}, "already holds .*intermediate"),
    ]


def test_bad_temp_is_refused_before_anything_is_written(ws: Path) -> None:
    source = zarr.open_array(ws / "src.zarr", mode="r")
    cases = _bad_temps(ws)
    before = tree(ws)
    for temp, extra, message in cases:
        target: Any = str(ws / "t.zarr")
        if extra:
            target = zarr.open_group(ws / "tgt.zarr", mode="a")
            before = tree(ws)
        with pytest.raises(ValueError, match=message):
            rechunk(source, TARGET_CHUNKS, TWO_STAGES, target, temp_store=temp, **extra)
        assert tree(ws) == before, temp
        assert not (ws / "t.zarr").exists()


def test_executor_class_is_refused(ws: Path, unchanged: None) -> None:
    with pytest.raises(ValueError, match=r"ThreadsExecutor is a class.*ThreadsExecutor\(\)"):
        rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, "1MB", str(ws / "t.zarr"),
                executor=ThreadsExecutor)  # type: ignore[arg-type]  # fmt: skip


class _FailingExecutor(ThreadsExecutor):
    def prepare_plan(self, specs: Any) -> Any:
        raise RuntimeError("the engine fell over")


def test_failure_after_creating_removes_what_was_created(ws: Path) -> None:
    before = tree(ws)
    with pytest.raises(RuntimeError, match="fell over"):
        rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"),
                temp_store=str(ws / "scratch"), executor=_FailingExecutor())  # fmt: skip
    assert tree(ws) == before
    # A rerun is not told the target "already holds data".
    target = rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"),
                     temp_store=str(ws / "scratch")).execute()  # fmt: skip
    npt.assert_array_equal(target[...], expected())


@pytest.mark.parametrize("temp", ["scratch", "given"])
def test_notebook_cell_run_twice(ws: Path, temp: str) -> None:
    """A second identical rechunk() before any execute takes over what the first made."""
    options = {"temp_store": str(ws / "tmp.zarr")} if temp == "given" else {}
    first = rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"), **options)
    again = rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"), **options)
    assert len(first.spec[0].stages) == len(again.spec[0].stages) == 2
    npt.assert_array_equal(again.execute(progress=False)[...], expected())
    assert sorted(p.name for p in ws.iterdir()) == ["notes.txt", "scratch", "src.zarr", "t.zarr"]


def test_notebook_cell_run_twice_with_a_group(tmp_path: Path, make_group: Any) -> None:
    source = make_group(tmp_path / "src.zarr")
    chunks = {"temp": (1, 45), "sub/mask": (9, 1, 1), "sub/deeper/counts": (33,)}
    for _ in range(2):
        result = rechunk(source, chunks, 2500, str(tmp_path / "out.zarr"))
    result.execute(progress=False)
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    for name in ("temp", "sub/mask", "sub/deeper/counts"):
        npt.assert_array_equal(out[name][...], source[name][...])


def test_rechunk_again_after_a_chunk_was_written_is_refused(ws: Path) -> None:
    first = rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"))
    zarr.open_array(ws / "t.zarr", mode="r+")[0] = expected()[0]  # as if a task had run
    before = tree(ws)
    with pytest.raises(ValueError, match=r"left incomplete .* pass resume=True"):
        rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"))
    assert tree(ws) == before
    npt.assert_array_equal(first.execute(progress=False)[...], expected())


def test_rechunk_again_with_another_plan_is_refused(ws: Path) -> None:
    rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"))
    before = tree(ws)
    with pytest.raises(ValueError, match="already holds data"):
        rechunk(str(ws / "src.zarr"), (2, 36), TWO_STAGES, str(ws / "t.zarr"))
    assert tree(ws) == before


def test_second_execute_is_refused(ws: Path) -> None:
    result = rechunk(str(ws / "src.zarr"), TARGET_CHUNKS, TWO_STAGES, str(ws / "t.zarr"),
                     temp_store=str(ws / "tmp.zarr"))  # fmt: skip
    result.execute()
    before = tree(ws)
    with pytest.raises(ValueError, match="already been executed"):
        result.execute()
    assert tree(ws) == before
    npt.assert_array_equal(zarr.open_array(ws / "t.zarr", mode="r")[...], expected())


def test_cli_speaks_cli(ws: Path) -> None:
    assert run_cli("run", "src.zarr", "t.zarr", "--target-chunks", "1,36", "--max-mem", "1MB",
                   cwd=ws).returncode == 0  # fmt: skip
    before = tree(ws)
    for extra, message in [(("--max-mem", "1MB"), "already holds data; pass --overwrite"),
                           (("--max-mem", TWO_STAGES, "--temp", "notes.txt", "--overwrite"),
                            "is a file")]:  # fmt: skip
        status, err = cli_here("run", "src.zarr", "t.zarr", "--target-chunks", "1,36", *extra,
                               cwd=ws)  # fmt: skip
        assert status == 2
        assert err.count("\n") == 1 and message in err, err
        assert "target_options" not in err
    assert tree(ws) == before


def test_ctrl_c_is_one_line_and_130(
    ws: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("rechunker_core.cli.rechunk", interrupted)
    status = main(["run", str(ws / "src.zarr"), str(ws / "t.zarr"), "--target-chunks", "1,36",
                   "--max-mem", "1MB"])  # fmt: skip
    assert status == 130
    assert capsys.readouterr().err == "rechunker-core: interrupted\n"


def test_numpy_integers_are_accepted(ws: Path) -> None:
    target = rechunk(str(ws / "src.zarr"), (np.int64(1), np.int32(36)), np.int64(TWO_STAGES),
                     str(ws / "t.zarr"), temp_store=str(ws / "tmp.zarr")).execute()  # fmt: skip
    npt.assert_array_equal(target[...], expected())


# --------------------------------------------------------------------------
# Overlap detection agrees with the file system, whatever the spelling
# --------------------------------------------------------------------------

#: Real directories of the tree the property test builds, relative to its root.
DIRS = ["", "a", "a/b", "a/b/x.zarr", "a/b/x.zarr/sub", "a/bb", "c", "c/d"]


def _spell(base: Path, rel: str, how: str) -> Any:
    path = base / rel if rel else base
    if how == "absolute":
        return str(path)
    if how == "relative":
        return os.path.relpath(path)
    if how == "slash":
        return str(path) + "/"
    if how == "dots":
        return str(base / "c" / ".." / rel) if rel else str(base / "c" / "..")
    if how == "symlink":
        return str(base / "link" / rel) if rel else str(base / "link")
    if how == "file-url":
        return f"file://{path}"
    if how == "local-store":
        return LocalStore(os.path.relpath(path))
    assert how == "group"
    return zarr.open_group(str(path), mode="a")


def _contains(outer: Path, inner: Path) -> bool:
    """The kernel's answer: is ``outer`` ``inner`` or one of its ancestors (by inode)?"""
    target = os.stat(outer)
    probe = str(inner)
    for _ in range(64):
        found = os.stat(probe)
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            return True
        if os.path.samefile(probe, "/"):
            return False
        probe = os.path.join(probe, "..")
    return False


@pytest.fixture(scope="module")
def spelled_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("spellings")
    for rel in DIRS:
        (base / rel).mkdir(parents=True, exist_ok=True)
    (base / "link").symlink_to(base / "a" / "..")  # the root again, through a symlink
    return base


HOWS = ["absolute", "relative", "slash", "dots", "symlink", "file-url", "local-store", "group"]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    a=st.sampled_from(DIRS), b=st.sampled_from(DIRS),
    how_a=st.sampled_from(HOWS), how_b=st.sampled_from(HOWS),
)  # fmt: skip
def test_overlap_agrees_with_the_file_system(
    spelled_tree: Path, a: str, b: str, how_a: str, how_b: str
) -> None:
    cwd = os.getcwd()
    os.chdir(spelled_tree / "a" / "bb")
    try:
        la = resolve_location(_spell(spelled_tree, a, how_a))
        lb = resolve_location(_spell(spelled_tree, b, how_b))
    finally:
        os.chdir(cwd)
    pa, pb = spelled_tree / a, spelled_tree / b
    assert overlap(la, lb) == (_contains(pa, pb) or _contains(pb, pa))
    assert (la.identity == lb.identity) == os.path.samefile(pa, pb)
