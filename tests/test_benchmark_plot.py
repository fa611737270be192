"""benchmarks/plot.py: a results file becomes a PNG; a bad one is refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PLOT = Path(__file__).parent.parent / "benchmarks" / "plot.py"


def run_plot(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PLOT), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_results_become_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = [
        {"codec": codec, "case": case, "wall_s": wall, "ratio": wall / 2, "peak_rss_mib": 300.0}
        for codec in ("blosc-lz4", "none")
        for case, wall in (("plain copy", 2.0), ("threads", 3.1), ("dask rechunk", 7.5))
    ]
    (tmp_path / "r.json").write_text(json.dumps(results))
    done = run_plot(tmp_path / "r.json", tmp_path / "r.png")
    assert done.returncode == 0, done.stderr
    data = (tmp_path / "r.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_a_result_without_a_field_is_refused(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps([{"codec": "none", "case": "threads"}]))
    done = run_plot(tmp_path / "r.json", tmp_path / "r.png")
    assert done.returncode == 2
    assert "result 0 lacks wall_s, ratio, peak_rss_mib" in done.stderr
    assert not (tmp_path / "r.png").exists()
