"""Views of a plan: the SVG picture (parsed), the HTML repr, and ``info``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import zarr

from rechunker_core import rechunk
from rechunker_core.api import draw_plan
from rechunker_core.display import describe_store
from tests.helpers import ArrayFactory, GroupFactory

SVG = "{http://www.w3.org/2000/svg}"


def arrays_drawn(svg: str) -> list[tuple[str, str]]:
    """(name, role) of every array group of a picture, which must parse as SVG."""
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    found = []
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "array":
            assert group.find(f"{SVG}polygon") is not None  # a grid was drawn
            found.append((group.get("data-name", ""), group.get("data-role", "")))
    return found


def stages_drawn(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [
        " ".join(t.itertext())
        for g in root.iter(f"{SVG}g")
        if g.get("class") == "stage"
        for t in g.iter(f"{SVG}text")
    ]


def test_html_repr_draws_every_array_of_each_chain(
    tmp_path: Path, make_group: GroupFactory
) -> None:
    source = make_group(tmp_path / "g.zarr", 3)
    result = rechunk(
        source,
        {"temp": (1, 45), "sub/deeper/counts": (10,), "sub/mask": (9, 1, 5)},
        2500,
        str(tmp_path / "t.zarr"),
        temp_store=str(tmp_path / "tmp.zarr"),
    )
    html = result._repr_html_()
    svg = html[html.index("<svg") : html.index("</svg>") + len("</svg>")]
    drawn = arrays_drawn(svg)
    expected = []
    for spec, name in zip(result.spec, ("sub/deeper/counts", "sub/mask", "temp"), strict=True):
        middles = [f"intermediate {i}" for i in range(1, len(spec.stages))]
        expected += [(name, role) for role in ("source", *middles, "target")]
    assert sorted(drawn) == sorted(expected)
    texts = stages_drawn(svg)
    assert any("stage 1" in t for t in texts)
    assert all("tasks" in t for t in texts if t.startswith("stage"))
    assert any("peak task" in t for t in texts)
    assert arrays_drawn(result.svg()) == drawn


@pytest.mark.parametrize("shape", [(), (50,), (40, 36), (10, 20, 30), (2, 3, 4, 5)])
def test_every_rank_draws(tmp_path: Path, make_array: ArrayFactory, shape: tuple[int, ...]) -> None:
    chunks = tuple(max(1, n // 2) for n in shape)
    source = make_array(tmp_path / "a.zarr", shape, chunks)
    target = tuple(1 for _ in shape)
    svg = draw_plan(source, target, "1MB")
    assert arrays_drawn(svg) == [("a.zarr", "source"), ("a.zarr", "target")]


def test_describe_store_lists_every_array(tmp_path: Path, make_group: GroupFactory) -> None:
    source = make_group(tmp_path / "g.zarr", 3)
    text = describe_store(zarr.open_group(str(tmp_path / "g.zarr")), "g.zarr")
    names = [a for a, m in source.members(max_depth=None) if isinstance(m, zarr.Array)]
    assert text.splitlines()[0].startswith(f"g.zarr: zarr group (format 3), {len(names)} array")
    for name in names:
        assert f"  {name}: shape {source[name].shape}" in text
    assert "codecs" in text and "stored" in text
