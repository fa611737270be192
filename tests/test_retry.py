"""Which store errors are retried, how long the waits are, and what a final failure says.

The errors are the real classes the store libraries raise (botocore,
aiohttp, s3fs's translations of S3 error codes, the OS's errnos), built the
way those libraries build them.
"""

from __future__ import annotations

import errno

import numpy as np
import numpy.testing as npt
import pytest
import zarr
from zarr.storage import MemoryStore

from rechunker_core.retry import RetryPolicy, StoreError, is_transient, retrying
from rechunker_core.storage import RetryingStore
from tests.faults import FaultyStore


def client_error(code: str, status: int) -> Exception:
    botocore = pytest.importorskip("botocore.exceptions")
    response = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    error: Exception = botocore.ClientError(response, "PutObject")
    return error


def s3fs_error(code: str, status: int) -> Exception:
    """What s3fs raises for an S3 error response (it translates ClientError to OSError)."""
    errors = pytest.importorskip("s3fs.errors")
    translated: Exception = errors.translate_boto_error(client_error(code, status))
    return translated


@pytest.mark.parametrize(
    ("make", "transient"),
    [
        (lambda: TimeoutError("read timed out"), True),
        (lambda: ConnectionResetError(errno.ECONNRESET, "reset by peer"), True),
        (lambda: OSError(errno.EIO, "Input/output error"), True),
        (lambda: OSError("no errno at all"), True),
        (lambda: OSError(errno.ENOSPC, "No space left on device"), False),
        (lambda: OSError(errno.EDQUOT, "Disk quota exceeded"), False),
        (lambda: PermissionError(errno.EACCES, "Permission denied"), False),
        (lambda: FileNotFoundError(errno.ENOENT, "No such file"), False),
        (lambda: OSError(errno.EROFS, "Read-only file system"), False),
        (lambda: client_error("SlowDown", 503), True),
        (lambda: client_error("InternalError", 500), True),
        (lambda: client_error("ThrottlingException", 400), True),
        (lambda: client_error("TooManyRequests", 429), True),
        (lambda: client_error("AccessDenied", 403), False),
        (lambda: client_error("NoSuchBucket", 404), False),
        (lambda: s3fs_error("SlowDown", 503), True),
        (lambda: s3fs_error("ServiceUnavailable", 503), True),
        (lambda: s3fs_error("InternalError", 500), True),
        (lambda: s3fs_error("RequestTimeout", 400), True),
        (lambda: s3fs_error("AccessDenied", 403), False),
        (lambda: s3fs_error("NoSuchKey", 404), False),
        (lambda: s3fs_error("InvalidArgument", 400), False),
        (lambda: ValueError("a bug, or bad data"), False),
        (lambda: StoreError("retried already"), False),
    ],
)
def test_what_is_transient(make: object, transient: bool) -> None:
    error = make()  # type: ignore[operator]
    assert is_transient(error) is transient, repr(error)


def test_network_errors_of_the_http_libraries_are_transient() -> None:
    botocore = pytest.importorskip("botocore.exceptions")
    aiohttp = pytest.importorskip("aiohttp")
    assert is_transient(botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(botocore.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(aiohttp.ServerDisconnectedError())
    assert not is_transient(botocore.NoCredentialsError())


def test_an_unknown_error_is_judged_by_its_cause() -> None:
    class Wrapped(Exception):
        pass

    for cause, transient in [(TimeoutError(), True), (PermissionError(), False)]:
        try:
            try:
                raise cause
            except Exception as inner:
                raise Wrapped("wrapped") from inner
        except Wrapped as error:
            assert is_transient(error) is transient


def test_waits_double_up_to_the_cap_and_the_last_error_is_named() -> None:
    waits: list[float] = []
    attempts: list[int] = []

    def always_slow() -> None:
        attempts.append(1)
        raise TimeoutError("slow")

    policy = RetryPolicy(retries=5, backoff=0.5, max_wait=3.0)
    with pytest.raises(StoreError) as info:
        retrying(
            always_slow,
            "reading chunk c/1/2 of the array 'a' in store s3://b/t.zarr",
            policy,
            sleep=waits.append,
        )
    assert len(attempts) == 6
    assert all(0.5 * b <= w <= b for w, b in zip(waits, [0.5, 1.0, 2.0, 3.0, 3.0]))
    assert str(info.value) == (
        "reading chunk c/1/2 of the array 'a' in store s3://b/t.zarr failed after 6 attempts "
        "(transient error): TimeoutError: slow"
    )
    assert isinstance(info.value.__cause__, TimeoutError)


def test_a_permanent_error_is_not_retried() -> None:
    attempts: list[int] = []

    def full() -> None:
        attempts.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="on the first attempt \\(permanent error\\)"):
        retrying(full, "writing", RetryPolicy(5, 0.0))
    assert attempts == [1]


def test_bad_input_is_raised_as_it_is() -> None:
    """Not retried, and not hidden in a StoreError: its message says what to change."""
    attempts: list[int] = []

    def foreign() -> None:
        attempts.append(1)
        raise ValueError("the in-memory store memory://1 holds its data in process 2")

    with pytest.raises(ValueError, match="holds its data in process 2") as info:
        retrying(foreign, "reading", RetryPolicy(5, 0.0))
    assert not isinstance(info.value, StoreError) and attempts == [1]


@pytest.mark.parametrize(
    "bad",
    [{"retries": -1}, {"retries": 2.5}, {"retries": True}, {"backoff": -1.0}, {"backoff": "1"}],
)
def test_bad_policies_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be a non-negative"):
        RetryPolicy(**bad)  # type: ignore[arg-type]


def test_numpy_numbers_make_a_plain_policy() -> None:
    policy = RetryPolicy(np.int64(3), np.float32(0.5))  # type: ignore[arg-type]
    assert policy.to_dict() == {"retries": 3, "backoff": 0.5, "max_wait": 60.0}
    assert type(policy.retries) is int and type(policy.backoff) is float


def test_each_request_of_an_array_is_retried_on_its_own() -> None:
    """A read of 24 chunks at 30% failed requests: whole-read retries would give up."""
    memory = MemoryStore()
    data = np.arange(24 * 5).reshape(24, 5)
    zarr.create_array(memory, shape=data.shape, chunks=(1, 5), dtype=data.dtype)[...] = data
    flaky = FaultyStore(memory, fraction=0.3, seed=4)
    array = zarr.open_array(RetryingStore(flaky, RetryPolicy(8, 0.0)), mode="r+")
    npt.assert_array_equal(array[...], data)
    array[...] = data + 1
    npt.assert_array_equal(zarr.open_array(memory)[...], data + 1)
    assert {op for op, _ in flaky.failures} == {"get", "set"}
    # Without retries the same faults surface as the store's own errors.
    with pytest.raises(OSError, match="injected fault"):
        zarr.open_array(FaultyStore(memory, fraction=0.3, seed=4), mode="r")[...]
