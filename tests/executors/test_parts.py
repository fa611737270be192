"""Plans run by independent processes: ``plan --save``, ``run-part``, ``finish``.

:class:`PartsExecutor` runs a plan the way an HPC array job does, one
``rechunker-core run-part`` process per part of each stage, so the shared
suite covers this path too (mode ``parts``).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import numpy.testing as npt
import pytest
import zarr

from rechunker_core.cli import main
from rechunker_core.executors.parts import PLAN_FORMAT, load_plan
from tests.helpers import (
    ArrayFactory,
    GroupFactory,
    assert_same_array,
    assert_same_group,
    run_cli_ok,
    run_stages,
)


def test_array_job(tmp_path: Path, make_array: ArrayFactory) -> None:
    """The documented workflow: plan --save, N processes per stage, finish."""
    source = make_array(tmp_path / "source.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    plan = tmp_path / "plan.json"
    done = run_cli_ok(
        "plan", tmp_path / "source.zarr",
        "--target-chunks", "1,37", "--max-mem", "2500",
        "--target", tmp_path / "target.zarr", "--temp", tmp_path / "temp.zarr",
        "--save", plan, "--parts", 2,
    )  # fmt: skip
    (spec,) = load_plan(plan).specs
    stages = len(spec.stages)
    assert stages >= 2
    assert f"stages: {stages}" in done.stdout.splitlines()
    target = zarr.open_array(tmp_path / "target.zarr", mode="r")
    assert target.chunks == (1, 37)
    assert not np.any(target[...] == source[...])  # created, not yet written

    run_stages(plan, stages, parts=2)
    run_cli_ok("finish", plan)
    assert_same_array(zarr.open_array(tmp_path / "target.zarr", mode="r"), source)
    assert not (tmp_path / "temp.zarr").exists()


def test_group_plan_lists_every_array(tmp_path: Path, make_group: GroupFactory) -> None:
    source = make_group(tmp_path / "source.zarr")
    plan = tmp_path / "plan.json"
    done = run_cli_ok(
        "plan", tmp_path / "source.zarr",
        "--target-chunks", "y=1,x=45,x2=33", "--max-mem", "2500",
        "--target", tmp_path / "target.zarr", "--temp", tmp_path / "temp.zarr",
        "--save", plan, "--parts", 2,
    )  # fmt: skip
    saved = json.loads(plan.read_text())
    assert saved["format"] == PLAN_FORMAT and saved["parts"] == 2 and len(saved["specs"]) == 3
    stages = max(len(item["stages"]) for item in saved["specs"])
    assert stages >= 2
    assert f"stages: {stages}" in done.stdout.splitlines()
    run_stages(plan, stages, parts=2)
    run_cli_ok("finish", plan)
    assert_same_group(zarr.open_group(tmp_path / "target.zarr", mode="r"), source)
    assert not (tmp_path / "temp.zarr").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run-part", "{plan}", "--stage", "9", "--part", "0", "--of", "2"], "has stages 0 to"),
        (["run-part", "{plan}", "--stage", "0", "--part", "2", "--of", "2"], "saved for 1 parts"),
        (["run-part", "{plan}", "--stage", "0", "--part", "0", "--of", "0"], "saved for 1 parts"),
        (["run-part", "{plan}", "--stage", "0", "--part", "1"], "has parts 0 to 0"),
        (["finish", "{plan}"], "have not finished"),
        (["run-part", "{missing}", "--stage", "0", "--part", "0", "--of", "1"], "cannot read"),
        (["finish", "{not_a_plan}"], "is not a plan saved by"),
        (["run-part", "{plan}", "--stage", "x", "--part", "0", "--of", "1"], "invalid int"),
        (["plan", "{source}", "--target-chunks", "1,37", "--max-mem", "1MB", "--save", "{new}"],
         "--save needs --target"),
        (["plan", "{source}", "--target-chunks", "1,37", "--max-mem", "1MB", "--save", "{new}",
          "--target", "{memory}"], "in-memory store"),
        (["plan", "{source}", "--target-chunks", "1,37", "--max-mem", "1MB",
          "--save", "{missing}/plan.json", "--target", "{new}.zarr"], "no such directory"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_status_2(
    tmp_path: Path,
    make_array: ArrayFactory,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    source = make_array(tmp_path / "source.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    plan = tmp_path / "plan.json"
    assert status_of(["plan", str(tmp_path / "source.zarr"), "--target-chunks", "1,37",
                      "--max-mem", "1MB", "--target", str(tmp_path / "t.zarr"),
                      "--save", str(plan)]) == 0  # fmt: skip
    capsys.readouterr()
    (tmp_path / "junk.json").write_text('{"stages": 3}')
    names = {
        "plan": plan,
        "missing": tmp_path / "missing.json",
        "not_a_plan": tmp_path / "junk.json",
        "source": tmp_path / "source.zarr",
        "new": tmp_path / "new.json",
        "memory": f"memory://rechunker-core-cli/{uuid.uuid4().hex}/t.zarr",
    }
    assert status_of([a.format(**names) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert err.startswith("rechunker-core")
    assert not (tmp_path / "new.json").exists() and not (tmp_path / "new.json.zarr").exists()
    # The failed commands wrote nothing: the target is still as created.
    npt.assert_array_equal(zarr.open_array(tmp_path / "source.zarr", mode="r")[...], source[...])
    assert not np.any(zarr.open_array(tmp_path / "t.zarr", mode="r")[...] == source[...])


def status_of(argv: list[str]) -> int | str | None:
    """The exit status of ``rechunker-core ARGV`` run in this process."""
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        return exit.code
