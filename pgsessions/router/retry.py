"""Write retries with tenacity: exponential backoff with jitter, deadline failover_timeout.

A write is retried only as a whole (one autocommit transaction per attempt, never inside an
open transaction), and only after a classified failure (see :mod:`.classify`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

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
    import random

    return random.uniform(0, min(BACKOFF_MAX, BACKOFF_FIRST * 2**attempt))
