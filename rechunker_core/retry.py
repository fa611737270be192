"""Retrying one store operation: which errors pass, how long to wait, what to say when not.

Object stores fail a request now and then (a timeout, a dropped connection, a
``503 SlowDown``), and so do network file systems. A rechunk makes millions of
requests, so each chunk operation is retried on its own with exponential
backoff (:func:`retrying`), and only an error that retrying cannot fix
(:func:`is_transient` says which) stops the run, as a :class:`StoreError`
naming what failed, where, and why.

This module imports nothing of the project and no store library: errors of
botocore, aiobotocore and aiohttp are recognised by their class names, so
classifying them costs no import.
"""

from __future__ import annotations

import asyncio
import errno
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_RETRIES",
    "RetryPolicy",
    "StoreError",
    "is_transient",
    "retrying",
    "retrying_async",
]

T = TypeVar("T")

#: Retries of one chunk operation before the run stops, and the first wait in
#: seconds; waits double (1, 2, 4, 8, 16 s: half a minute outlasts the
#: throttling bursts of object stores) up to :attr:`RetryPolicy.max_wait`.
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 1.0


class StoreError(OSError):
    """A store operation failed for good: retries ran out, or retrying cannot help.

    The message names the operation, the chunk or region, the array, the
    store and the cause; the cause is also chained as ``__cause__``. Whatever
    the run wrote stays in place, so ``rechunk(..., resume=True)`` can finish it.
    """


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, one chunk operation is retried.

    Attributes
    ----------
    retries : int
        Retries after the first attempt (``0``: fail at once).
    backoff : float
        Seconds before the first retry; each later wait doubles, with jitter.
    max_wait : float
        The longest single wait, in seconds.

    >>> [RetryPolicy(4, 0.5, max_wait=3.0).wait(n, jitter=1.0) for n in range(4)]
    [0.5, 1.0, 2.0, 3.0]
    """

    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        retries, backoff = self.retries, self.backoff
        if isinstance(retries, bool) or not isinstance(retries, Integral) or retries < 0:
            raise ValueError(f"retries={retries!r} must be a non-negative integer, such as 5")
        if isinstance(backoff, bool) or not isinstance(backoff, Real) or not backoff >= 0:
            raise ValueError(
                f"retry_backoff={backoff!r} must be a non-negative number of seconds, such as 1.0"
            )
        # numpy numbers are accepted, and stored as Python's (the policy goes into JSON).
        object.__setattr__(self, "retries", int(retries))
        object.__setattr__(self, "backoff", float(backoff))

    def wait(self, retry: int, jitter: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (from 0).

        ``jitter`` (drawn from 0.5 to 1 unless given) spreads the retries of
        many workers that failed at once, so they do not return at once.
        """
        scale = random.uniform(0.5, 1.0) if jitter is None else jitter
        return float(min(self.max_wait, self.backoff * 2**retry) * scale)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {"retries": self.retries, "backoff": self.backoff, "max_wait": self.max_wait}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["retries"]), float(data["backoff"]), float(data["max_wait"]))


#: errno values retrying cannot fix: the disk is full, access is denied, the
#: path is wrong, the request is malformed.
PERMANENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS", "ENOENT", "EEXIST",
        "EISDIR", "ENOTDIR", "EINVAL", "ENAMETOOLONG", "EMSGSIZE", "ENOSYS", "EREMCHG",
        "ENOTEMPTY", "EBADF", "ELOOP", "EXDEV",
    )
    if hasattr(errno, name)
)  # fmt: skip

#: OSError subclasses that say the request itself is wrong.
_PERMANENT_OS_ERRORS = (
    PermissionError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
)

#: Class names of network errors of botocore, aiobotocore, aiohttp, urllib3
#: and http.client that a new attempt may well not meet.
_TRANSIENT_NAMES = frozenset(
    {
        "HTTPClientError", "EndpointConnectionError", "ConnectTimeoutError",
        "ReadTimeoutError", "ConnectionClosedError", "ResponseStreamingError",
        "IncompleteReadError", "IncompleteRead", "ResponseParserError",
        "ServerDisconnectedError", "ClientPayloadError", "ClientConnectionError",
        "ServerTimeoutError", "RemoteDisconnected", "ProtocolError",
    }
)  # fmt: skip

#: Error codes of S3 (and the services that copy its API) worth retrying.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
        "RequestTimeoutException", "InternalError", "ServiceUnavailable",
        "RequestLimitExceeded", "TooManyRequestsException", "BandwidthLimitExceeded",
        "OperationAborted", "500", "502", "503", "504",
    }
)  # fmt: skip


def _client_error_is_transient(error: BaseException) -> bool | None:
    """For a botocore ``ClientError``: whether its HTTP status or code is worth retrying."""
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _TRANSIENT_CODES or (
        isinstance(status, int) and (status >= 500 or status == 429)
    )


def is_transient(error: BaseException) -> bool:
    """Whether a new attempt of the failed store operation may succeed.

    Timeouts, dropped connections, ``OSError`` of no telling errno (``EIO``,
    ``EBUSY``, ...), and HTTP 5xx / 429 or S3 throttling codes are transient.
    A full disk, denied access, a missing path, any other error (a bug, bad
    data) and a :class:`StoreError` (already retried) are not. An error of
    an unknown kind is judged by its cause, if it has one.

    >>> is_transient(TimeoutError()), is_transient(OSError(errno.EIO, "I/O error"))
    (True, True)
    >>> is_transient(OSError(errno.ENOSPC, "No space left")), is_transient(PermissionError())
    (False, False)
    >>> is_transient(ValueError("bad")), is_transient(StoreError("given up"))
    (False, False)
    """
    for _ in range(8):  # follow causes, but never around a cycle forever
        if isinstance(error, StoreError):
            return False
        if isinstance(error, TimeoutError | ConnectionError | InterruptedError | BlockingIOError):
            return True
        if isinstance(error, _PERMANENT_OS_ERRORS):
            return False
        if isinstance(error, OSError):
            return error.errno not in PERMANENT_ERRNOS
        names = {cls.__name__ for cls in type(error).__mro__}
        if names & _TRANSIENT_NAMES:
            return True
        if "ClientError" in names:
            verdict = _client_error_is_transient(error)
            if verdict is not None:
                return verdict
        cause = error.__cause__
        if cause is None:
            return False
        error = cause
    return False


def _wait_or_raise(
    error: Exception, attempt: int, what: str | Callable[[], str], policy: RetryPolicy
) -> float:
    """Seconds to wait before retrying after ``error``; raise StoreError if not to retry.

    A ``ValueError`` or ``TypeError`` is raised as it is: it says what is wrong
    with the input (such as an in-memory store opened from another process)
    better than a store error would.
    """
    transient = is_transient(error)
    if not transient and isinstance(error, ValueError | TypeError):
        raise error
    if not transient or attempt >= policy.retries:
        described = what() if callable(what) else what
        tries = f"after {attempt + 1} attempts" if attempt else "on the first attempt"
        kind = "transient" if transient else "permanent"
        raise StoreError(
            f"{described} failed {tries} ({kind} error): {type(error).__name__}: {error}"
        ) from error
    return policy.wait(attempt)


def retrying(
    operation: Callable[[], T],
    what: str | Callable[[], str],
    policy: RetryPolicy | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``operation``; retry it while it fails transiently, as ``policy`` allows.

    Parameters
    ----------
    operation : callable
        One store operation, taking no arguments; it must be safe to repeat
        (a whole-chunk write, a read).
    what : str or callable
        What it does, for the error message: ``"writing chunk c/0/3 of the
        array 'a' in store s3://bucket/t.zarr"``; a callable is asked only on
        failure.
    policy : RetryPolicy, optional
        Defaults to :class:`RetryPolicy` ().

    Raises
    ------
    StoreError
        When an attempt fails permanently or the retries run out; chained to
        the last error.

    >>> calls = []
    >>> def flaky():
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise TimeoutError("slow")
    ...     return "ok"
    >>> retrying(flaky, "reading", RetryPolicy(5, 0.0)), len(calls)
    ('ok', 3)
    >>> retrying(lambda: open("/no/such/c.0"), "reading c.0", RetryPolicy(5, 0.0))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    rechunker_core.retry.StoreError: reading c.0 failed on the first attempt (permanent ...
    """
    policy = policy or RetryPolicy()
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as error:
            sleep(_wait_or_raise(error, attempt, what, policy))
        attempt += 1


async def retrying_async(
    operation: Callable[[], Awaitable[T]],
    what: str | Callable[[], str],
    policy: RetryPolicy | None = None,
) -> T:
    """:func:`retrying` for a coroutine: the waits do not hold up the event loop."""
    policy = policy or RetryPolicy()
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception as error:
            await asyncio.sleep(_wait_or_raise(error, attempt, what, policy))
        attempt += 1
