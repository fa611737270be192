"""The S3 case: ours with source, temp and target on a moto S3 server on 127.0.0.1.

moto runs in a process of its own that is not a descendant of the worker, so
the objects it keeps in memory and its CPU are not counted as ours.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import zarr

from catalog import Job, resolve_chunks
from measure import Outcome, measured
from rechunker_core import rechunk
from w1 import need
from workloads import create_like, open_source, same_encoding

BUCKET = "bench"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_detached(command: list[str]) -> int:
    """Start ``command`` outside this process tree (through a launcher that exits); its pid."""
    launcher = (
        "import subprocess, sys; "
        f"p = subprocess.Popen({command!r}, stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL, start_new_session=True); print(p.pid)"
    )
    done = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True)
    done.check_returncode()
    return int(done.stdout)


@contextlib.contextmanager
def moto_server() -> Iterator[dict[str, Any]]:
    """A moto S3 server on 127.0.0.1 with an empty bucket; yields the storage_options."""
    boto3 = need("boto3")
    need("moto.server")
    port = free_port()
    pid = start_detached([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=BUCKET,
            aws_secret_access_key=BUCKET,
            region_name="us-east-1",
        )
        for _ in range(300):  # the server takes a second or two to listen
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the moto server on port {port} did not start in 30 s")
        yield {
            "key": BUCKET,
            "secret": BUCKET,
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).terminate()


def upload(local: zarr.Array[Any], url: str, options: dict[str, Any]) -> zarr.Array[Any]:
    """Copy ``local`` to ``url`` (untimed), ten source chunks along time at a time."""
    array = create_like(url, local, local.chunks, storage_options=options)
    step = local.chunks[0] * 10
    for start in range(0, local.shape[0], step):
        array[start : start + step] = local[start : start + step]
    return zarr.open_array(url, mode="r", storage_options=options)


def run_s3(job: Job, work_dir: Path) -> Outcome:
    """One rechunk S3 -> S3 with the temp on S3, on the threads executor."""
    need("s3fs")
    chunks = resolve_chunks(job.source_chunks, job.shape)
    local = open_source(Path(job.data_dir), job.shape, chunks, job.codec)
    if local is None:
        raise RuntimeError("the S3 case's local source is missing: run.py generates it first")
    executor = need("rechunker_core.executors.threads").ThreadsExecutor(max_workers=job.workers)
    outcome = Outcome()
    start = time.perf_counter()
    with moto_server() as options:
        source = upload(local, f"s3://{BUCKET}/source.zarr", options)
        outcome.setup_s = time.perf_counter() - start
        outcome.notes.append("moto runs outside the process tree; source uploaded untimed")
        target_url = f"s3://{BUCKET}/target.zarr"
        with measured(outcome.usage):
            rechunk(
                source,
                resolve_chunks(job.target_chunks, job.shape),
                job.max_mem,
                target_url,
                target_options={**same_encoding(local), "storage_options": options},
                temp_store=f"s3://{BUCKET}/temp.zarr",
                temp_options={"storage_options": options},
                executor=executor,
            ).execute()
        outcome.checked(local, zarr.open_array(target_url, mode="r", storage_options=options))
    outcome.extra = {"mb_per_s": local.nbytes / outcome.usage.wall / 1e6, "mb": local.nbytes / 1e6}
    return outcome
