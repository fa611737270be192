"""Turn benchmark results into a picture: wall time and peak memory per case.

Usage::

    .venv/bin/python benchmarks/plot.py results.json benchmarks.png

``results.json`` is a JSON list with one object per measured run::

    [{"codec": "blosc-lz4", "case": "threads", "wall_s": 12.3, "ratio": 1.8,
      "peak_rss_mib": 1450.0}, ...]

``case`` names what ran (an executor, ``plain copy``, ``dask rechunk``, ...),
``ratio`` is the wall time over the plain copy's with the same codec. The
picture has two panels, wall time and peak RSS, with one group of bars per
case and one bar per codec; each wall-time bar is labelled with its ratio.
Needs matplotlib (``pip install "rechunker-core[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIELDS = {"codec": str, "case": str, "wall_s": float, "ratio": float, "peak_rss_mib": float}


def load_results(path: Path) -> list[dict[str, Any]]:
    """The results in ``path``, each checked to have every field of :data:`FIELDS`."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of results")
    results = []
    for i, item in enumerate(data):
        missing = [name for name in FIELDS if not isinstance(item, dict) or name not in item]
        if missing:
            raise ValueError(f"{path}: result {i} lacks {', '.join(missing)}")
        results.append({name: kind(item[name]) for name, kind in FIELDS.items()})
    return results


def plot(results: Sequence[dict[str, Any]], out: Path) -> None:
    """Draw wall time and peak memory per case, one bar per codec, into ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in results))
    codecs = list(dict.fromkeys(r["codec"] for r in results))
    width = 0.8 / len(codecs)
    figure, (wall, memory) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(cases) + 4), 4.5))
    for j, codec in enumerate(codecs):
        found = {r["case"]: r for r in results if r["codec"] == codec}
        xs = [i + (j - (len(codecs) - 1) / 2) * width for i, c in enumerate(cases) if c in found]
        runs = [found[c] for c in cases if c in found]
        bars = wall.bar(xs, [r["wall_s"] for r in runs], width, label=codec)
        wall.bar_label(bars, labels=[f"x{r['ratio']:.2f}" for r in runs], fontsize=7)
        memory.bar(xs, [r["peak_rss_mib"] for r in runs], width, label=codec)
    for axes, label in ((wall, "wall time (s)"), (memory, "peak RSS (MiB)")):
        axes.set_xticks(range(len(cases)), cases, rotation=30, ha="right")
        axes.set_ylabel(label)
        axes.legend(title="codec", fontsize=8)
    wall.set_title("wall time (bar label: ratio to a plain copy)")
    memory.set_title("peak memory")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot benchmark results (a JSON list) as a PNG.")
    parser.add_argument("results", type=Path, help="the results, e.g. results.json")
    parser.add_argument("out", type=Path, help="the picture to write, e.g. benchmarks.png")
    args = parser.parse_args(argv)
    try:
        plot(load_results(args.results), args.out)
    except (OSError, ValueError) as error:
        print(f"plot.py: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
