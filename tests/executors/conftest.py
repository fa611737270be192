"""Fixtures for the executors' own tests."""

from __future__ import annotations

import uuid
from dataclasses import fields, replace
from pathlib import Path

import pytest

from rechunker_core import StagedCopySpec, rechunk
from rechunker_core.storage import ZarrRef
from tests.helpers import EVENTS, ArrayFactory, Recorded, RecordingRef


@pytest.fixture
def recorded(tmp_path: Path, make_array: ArrayFactory) -> Recorded:
    """A multi-stage plan on disk (41 x 37, chunks (41, 1) -> (1, 37)), recording."""
    source = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    (spec,) = rechunk(
        source,
        (1, 37),
        2500,
        str(tmp_path / "t.zarr"),
        temp_store=str(tmp_path / "tmp.zarr"),
        executor="python",
    ).spec
    assert len(spec.stages) == 2
    log = uuid.uuid4().hex
    EVENTS[log] = []
    first, second = spec.stages
    middle = RecordingRef(
        **{f.name: getattr(first.target, f.name) for f in fields(ZarrRef)}, log=log
    )
    stages = (replace(first, target=middle), replace(second, source=middle))
    return Recorded(source, StagedCopySpec(stages, spec.cleanup), spec.target, log)
