"""Fixtures for the engines: a dask cluster, a Prefect test server, a recording plan.

Prefect reads its settings when it is first imported, so the quiet test
settings (ENGINE_NOTES.md) are set here, before any test module imports it,
with a throwaway ``PREFECT_HOME``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.testing as npt
import pytest
import zarr

from rechunker_core import StagedCopySpec, rechunk
from rechunker_core.executors.prefect import QUIET_SETTINGS
from rechunker_core.storage import Region, ZarrRef

_PREFECT_HOME = tempfile.mkdtemp(prefix="rechunker-core-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.update(QUIET_SETTINGS)


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A ``distributed.Client`` on a two-process ``LocalCluster``.

    It is not made the default client, so other tests' ``dask.compute`` calls
    keep their own schedulers.
    """
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect server and database for the whole session."""
    pytest.importorskip("prefect")
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Heartbeats add about a second to every flow run.
    with (
        prefect_test_harness(server_startup_timeout=180),  # slow on a loaded machine
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


# --------------------------------------------------------------------------
# Watching the order of stages
# --------------------------------------------------------------------------

#: Reads and writes of each RecordingRef, by log name; this process only.
EVENTS: dict[str, list[str]] = {}


@dataclass(frozen=True)
class RecordingRef(ZarrRef):
    """A zarr array that notes every read and write in ``EVENTS[log]``.

    Used as the intermediate between two stages, it shows whether any task of
    the second stage read before every task of the first had written.
    """

    log: str = ""

    def read(self, region: Region) -> np.ndarray[Any, Any]:
        EVENTS[self.log].append("read")
        return super().read(region)

    def write(self, region: Region, data: np.ndarray[Any, Any]) -> None:
        super().write(region, data)
        EVENTS[self.log].append("write")


@dataclass(frozen=True)
class Recorded:
    """A two-stage spec whose intermediate records its reads and writes."""

    source: zarr.Array[Any]
    spec: StagedCopySpec
    target: ZarrRef
    log: str

    def check(self) -> None:
        """The target equals the source; every write came before every read."""
        npt.assert_array_equal(self.target.open()[...], self.source[...])
        events = EVENTS[self.log]
        writes = events.count("write")
        assert writes == self.spec.stages[0].num_tasks > 1
        assert events.count("read") == self.spec.stages[1].num_tasks > 1
        assert events[:writes] == ["write"] * writes, events


@pytest.fixture
def recorded(tmp_path: Path, make_array: Callable[..., zarr.Array[Any]]) -> Recorded:
    """A multi-stage plan on disk (41 x 37, chunks (41, 1) -> (1, 37)), recording."""
    source = make_array(tmp_path / "s.zarr", (41, 37), (41, 1), dtype="i4", fill_value=-1)
    (spec,) = rechunk(
        source,
        (1, 37),
        3000,
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
