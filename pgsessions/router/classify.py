"""Which failures the router may retry, why (the ``reason`` label of retries), and the
backoff between attempts.

Retryable: a lost connection and SQLSTATE class ``08`` (but not an ``08P01`` protocol
violation at ERROR severity: the connection is still there), ``57P01``-``57P03`` (shutdown,
crash, not yet accepting connections), a pool retired with its host, ``25006`` on a write
(the "primary" is a standby) and on a replica ``40001``/``40P01`` (a recovery conflict
cancelled the read). Data errors (``22``), constraint errors (``23``) and programming errors
are never retried: the caller gets the original psycopg error.

Overload is not failure: a pool that gave no connection in time, a full pool queue and
SQLSTATE class ``53`` are :func:`is_overload`; the router never bans a host for them.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

#: the host answered, but as a standby: rediscover before retrying a write
READ_ONLY = "read_only"
CONNECTION = "connection"
SHUTDOWN = "shutdown"
RESOURCES = "resources"
POOL_TIMEOUT = "pool_timeout"
POOL_CLOSED = "pool_closed"
RECOVERY_CONFLICT = "recovery_conflict"
#: a statement that got no answer within the router's deadline (cut by the watchdog)
TIMEOUT = "timeout"


class StandbyConnectionError(psycopg.OperationalError):
    """A connection meant for the primary turned out to be to a standby."""


class StatementDeadlineError(psycopg.OperationalError):
    """The server did not answer within the router's deadline; the connection was cut."""


def sqlstate_of(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) if isinstance(exc, psycopg.Error) else None


def _protocol_error_on_live_connection(exc: psycopg.Error, state: str) -> bool:
    # 08P01 at ERROR severity (e.g. a bind message that does not match a prepared statement a
    # pooler mixed up) leaves the connection open: not a lost connection. A FATAL one (a
    # pooler dropping the client) is.
    severity = exc.diag.severity_nonlocalized or exc.diag.severity
    return state == "08P01" and severity not in ("FATAL", "PANIC")


def classify(exc: BaseException, *, write: bool) -> str | None:
    """The retry reason for ``exc``, or None when it must reach the caller unchanged."""
    if isinstance(exc, PoolClosed):
        return POOL_CLOSED  # the monitor retired that host's pool (the router checks it is open)
    if isinstance(exc, StandbyConnectionError):
        return READ_ONLY
    if isinstance(exc, StatementDeadlineError):
        return TIMEOUT
    if isinstance(exc, (PoolTimeout, TooManyRequests)):
        return POOL_TIMEOUT
    if not isinstance(exc, psycopg.Error):
        return CONNECTION if isinstance(exc, ConnectionError) else None
    state = sqlstate_of(exc)
    if state is None:
        # no SQLSTATE: the client lost the server (EOF, reset, refused)
        return CONNECTION if isinstance(exc, psycopg.OperationalError) else None
    if state.startswith("08") and not _protocol_error_on_live_connection(exc, state):
        return CONNECTION
    if state in ("57P01", "57P02", "57P03"):
        return SHUTDOWN
    if state.startswith("53"):
        return RESOURCES
    if state == "25006":
        return READ_ONLY if write else None
    if state in ("40001", "40P01") and not write:
        return RECOVERY_CONFLICT
    return None


def is_overload(exc: BaseException) -> bool:
    """True when a host is busy rather than broken (pool timeout or queue full, class 53)."""
    return classify(exc, write=True) in (POOL_TIMEOUT, RESOURCES)


def is_connection_loss(exc: BaseException) -> bool:
    """True when ``exc`` means the connection is gone (not merely the statement failed)."""
    return classify(exc, write=True) in (CONNECTION, SHUTDOWN, TIMEOUT)


def short_error(exc: BaseException) -> str:
    """A short label for metrics: the psycopg class name (never the message)."""
    return type(exc).__name__


# retries ----------------------------------------------------------------------------
#: first backoff is up to this many seconds; it doubles per attempt up to BACKOFF_MAX
BACKOFF_FIRST = 0.02
BACKOFF_MAX = 1.0


def write_retrying(
    deadline_seconds: float,
    retryable: Callable[[BaseException], bool],
    before_sleep: Callable[[RetryCallState], Awaitable[None] | None],
) -> AsyncRetrying:
    """Attempts until one succeeds, an error is not retryable, or the deadline has passed.

    The backoff never sleeps past the deadline, so the last attempt runs at the deadline:
    a write gives up after ``deadline_seconds`` (plus that attempt), never earlier.
    """
    jitter = wait_random_exponential(multiplier=BACKOFF_FIRST, max=BACKOFF_MAX)

    def wait(state: RetryCallState) -> float:
        left = deadline_seconds - (state.seconds_since_start or 0.0)
        return max(0.0, min(jitter(state), left))

    return AsyncRetrying(
        stop=stop_after_delay(deadline_seconds),
        wait=wait,
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


def backoff(attempt: int) -> float:
    """Backoff before read attempt ``attempt`` (1-based) when no host could serve it."""
    return random.uniform(0, min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt))
