"""Fixtures shared by every test: sample arrays and groups, a dask cluster, a Prefect
server, an S3 (moto) server, and sources that must stay unchanged.

Prefect reads its settings when it is first imported, so the quiet test
settings (docs/engines.md) are set here, before any test module imports it,
with a throwaway ``PREFECT_HOME``. Helpers live in tests/helpers.py.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zarr
from zarr.storage import LocalStore, MemoryStore

from rechunker_core.executors.prefect import QUIET_SETTINGS
from tests.faults import digest
from tests.helpers import ArrayFactory, GroupFactory, create_array, create_group

_PREFECT_HOME = tempfile.mkdtemp(prefix="rechunker-core-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.update(QUIET_SETTINGS)
# Icechunk warns on every repository opened on a local file system that it is
# unsafe for concurrent commits; the tests commit from one process at a time.
os.environ.setdefault("ICECHUNK_LOG", "error")


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


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """storage_options for a bucket ``rechunk`` on a fresh local moto server."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="rechunk")
        yield {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    finally:
        server.stop()


@pytest.fixture(scope="session")
def make_array() -> ArrayFactory:
    """Factory: ``make_array(store, shape, chunks, **options)`` -> a filled zarr.Array.

    Session-scoped and stateless, so Hypothesis tests may use it too.
    """
    return create_array


@pytest.fixture(scope="session")
def make_group() -> GroupFactory:
    """Factory: ``make_group(store, zarr_format)`` -> the nested group of :func:`create_group`."""
    return create_group


@pytest.fixture
def frozen_source(make_array: ArrayFactory) -> Iterator[Callable[..., zarr.Array]]:
    """Factory: ``frozen_source(store, shape, chunks, **options)`` -> a source opened read-only.

    The array is made in ``store`` (a path or a MemoryStore), then opened
    through a read-only store, as every rechunking test of the failure suite
    reads its source. When the test ends, the source store must hash as it
    did when it was made.
    """
    made: list[tuple[Any, str]] = []

    def make(store: Any, shape: tuple[int, ...], chunks: tuple[int, ...], **options: Any) -> Any:
        make_array(store, shape, chunks, **options)
        made.append((store, digest(store)))
        if isinstance(store, MemoryStore):
            return zarr.open_array(store.with_read_only(True), mode="r")
        return zarr.open_array(LocalStore(str(Path(store)), read_only=True), mode="r")

    yield make
    for store, before in made:
        assert digest(store) == before, f"the source {store} was modified"
