"""What execute() shows while it runs: bars, callbacks, silence, and logging."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import zarr

from rechunker_core import rechunk
from rechunker_core.copy import RoundTotals, Tracker
from rechunker_core.progress import StageBars, choose_progress
from tests.helpers import ArrayFactory, assert_same_array

SHAPE, SOURCE_CHUNKS, TARGET_CHUNKS, TWO_STAGES = (41, 37), (41, 1), (1, 37), 2500


@pytest.fixture
def two_stages(tmp_path: Path, make_array: ArrayFactory) -> tuple[zarr.Array, dict[str, str]]:
    source = make_array(tmp_path / "s.zarr", SHAPE, SOURCE_CHUNKS, dtype="f4")
    places = {"target_store": str(tmp_path / "t.zarr"), "temp_store": str(tmp_path / "tmp.zarr")}
    return source, places


def test_bars_show_each_stage(two_stages: tuple[zarr.Array, dict[str, str]]) -> None:
    source, places = two_stages
    result = rechunk(source, TARGET_CHUNKS, TWO_STAGES, **places)
    assert len(result.spec[0].stages) == 2
    screen = io.StringIO()
    target = result.execute(progress=StageBars(file=screen))
    assert isinstance(target, zarr.Array)
    assert_same_array(target, source)
    shown = screen.getvalue()
    for k, stage in enumerate(result.spec[0].stages):
        line = f"stage {k}: 100%"
        assert line in shown
        assert f"{stage.num_tasks}/{stage.num_tasks} tasks" in shown
    assert "kB/s" in shown or "MB/s" in shown
    assert "6.1 kB/6.1 kB" in shown  # 41 * 37 float32: what each stage writes


def test_progress_true_draws_on_stderr(
    two_stages: tuple[zarr.Array, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    source, places = two_stages
    result = rechunk(source, TARGET_CHUNKS, TWO_STAGES, **places)
    target = result.execute(progress=True)
    assert isinstance(target, zarr.Array)
    assert_same_array(target, source)
    shown = capsys.readouterr().err
    assert all(f"stage {k}: 100%" in shown for k in range(len(result.spec[0].stages)))


def test_progress_false_and_default_are_silent_without_a_terminal(
    two_stages: tuple[zarr.Array, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    source, places = two_stages
    rechunk(source, TARGET_CHUNKS, TWO_STAGES, **places).execute(progress=False)
    places = {k: v + "2" for k, v in places.items()}
    target = rechunk(source, TARGET_CHUNKS, TWO_STAGES, **places).execute()  # stderr: no tty
    assert isinstance(target, zarr.Array)
    assert_same_array(target, source)
    assert capsys.readouterr().err == ""


def test_bad_progress_is_refused_before_any_copy(
    two_stages: tuple[zarr.Array, dict[str, str]],
) -> None:
    source, places = two_stages
    result = rechunk(source, TARGET_CHUNKS, TWO_STAGES, **places)
    with pytest.raises(TypeError, match=r"progress='yes' is not accepted"):
        result.execute(progress="yes")
    assert not zarr.open_array(places["target_store"]).nchunks_initialized
    assert_same_array(result.execute(progress=False), source)


def test_threads_take_max_workers_per_run(
    two_stages: tuple[zarr.Array, dict[str, str]],
) -> None:
    source, places = two_stages
    result = rechunk(source, TARGET_CHUNKS, TWO_STAGES, **places)
    with pytest.raises(ValueError, match="max_workers=0 must be a positive integer"):
        result.execute(max_workers=0)
    assert_same_array(result.execute(max_workers=1, progress=False), source)


def test_stages_are_logged(
    two_stages: tuple[zarr.Array, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    source, places = two_stages
    result = rechunk(source, TARGET_CHUNKS, TWO_STAGES, **places)
    with caplog.at_level(logging.INFO, logger="rechunker_core"):
        result.execute(progress=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "rechunker_core"]
    for k in range(len(result.spec[0].stages)):
        assert any(m.startswith(f"stage {k} done") for m in messages)


def test_choose_progress() -> None:
    def callback(done: int, total: int) -> None: ...

    assert choose_progress(callback) is callback
    assert choose_progress(False) is None
    assert isinstance(choose_progress(True), StageBars)


def test_a_stage_clock_starts_when_the_previous_stage_ends() -> None:
    screen = io.StringIO()
    bars = StageBars(file=screen)
    tracker = Tracker.of_rounds([RoundTotals(0, 2, 2000), RoundTotals(1, 1, 2000)], bars)
    tracker.finished(2, 0)
    tracker.finished(1, 1)
    tracker.close()
    assert "stage 0: 100%" in screen.getvalue() and "stage 1: 100%" in screen.getvalue()
    assert "2.0 kB/2.0 kB" in screen.getvalue()
