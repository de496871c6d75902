"""Write coalescing: writes to the primary that wait at the same moment share one round trip
and one transaction, each caller told its own outcome.

A write runs at once, alone, while fewer than :data:`MAX_IN_FLIGHT` writes or batches are
in flight; otherwise it queues. When one in flight ends and writes are queued, its slot
sends what queued as one batch (bounded by :data:`MAX_BATCH_WRITES` and
:data:`MAX_BATCH_BYTES`; one ``setup`` per batch, so tenants are never mixed). A lone write
therefore never waits for company. How a batch runs, and what happens when it fails, is the
router's (``run_batch``); the choice of what goes in a batch is :func:`take_batch`, pure.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from psycopg.abc import Params, Query

from .execution import Setups

#: writes or batches one router keeps in flight to its primary at once
MAX_IN_FLIGHT = 2
#: most writes in one batch
MAX_BATCH_WRITES = 64
#: most parameter bytes in one batch (a write bigger than this still goes, alone)
MAX_BATCH_BYTES = 1 << 20

R = TypeVar("R")


def params_bytes(params: Params | None) -> int:
    """About how many bytes ``params`` send (strings, bytes and lists of them)."""
    if params is None:
        return 0
    values: Iterable[Any] = params.values() if isinstance(params, dict) else params
    n = 0
    for v in values:
        if isinstance(v, str | bytes | bytearray):
            n += len(v)
        elif isinstance(v, list | tuple):
            try:  # the usual case: all strings (one C loop)
                n += sum(map(len, v)) + 8 * len(v)
            except TypeError:
                n += sum(len(x) for x in v if isinstance(x, str | bytes | bytearray)) + 8 * len(v)
        else:
            n += 8
    return n


@dataclass(eq=False)
class Pending(Generic[R]):
    """One write waiting for a batch: what to send, and where its outcome goes."""

    operation: str
    #: the session it belongs to ('' for none): the batch is ordered by it (lock order)
    key: str
    #: the statement as it runs inside a batch's transaction, and its parameters
    query: Query
    params: Params | None
    setup: Setups | None
    size: int
    future: asyncio.Future[R]
    #: runs this write alone on the ordinary path (after its batch failed)
    alone: Callable[[], Awaitable[R]]
    queued_at: float = field(default_factory=time.monotonic)
    #: taken into a batch (from then on the batch decides its fate)
    sent: bool = False


def take_batch(
    queue: deque[Pending[R]], max_writes: int = MAX_BATCH_WRITES, max_bytes: int = MAX_BATCH_BYTES
) -> list[Pending[R]]:
    """Remove and return the next batch from ``queue``, in lock order (by session key,
    arrival order kept within a session).

    The batch takes the ``setup`` of the first live write; writes with another setup stay
    queued, and so does every later write of a session one of whose writes stays (order
    per session). Writes whose caller has gone (a done future) are dropped. At least one
    write is taken when any is live, whatever its size.
    """
    batch: list[Pending[R]] = []
    kept: list[Pending[R]] = []
    held: set[str] = set()
    setup: Setups | None = None
    size = 0
    while queue:
        p = queue.popleft()
        if p.future.done():
            continue
        if not batch:
            setup = p.setup
        elif (
            len(batch) >= max_writes
            or p.setup != setup
            or p.key in held
            or size + p.size > max_bytes
        ):
            kept.append(p)
            held.add(p.key)
            if len(batch) >= max_writes:
                break
            continue
        p.sent = True
        batch.append(p)
        size += p.size
    queue.extendleft(reversed(kept))
    batch.sort(key=lambda p: p.key)  # stable: a session's writes keep their order
    return batch


class Coalescer(Generic[R]):
    """The queue and the in-flight slots of one router's writes (one event loop).

    ``run_batch(batch)`` sends a batch and settles every future in it (result or error);
    it must not raise. ``withdrawn(operation)`` is told of a write whose caller was
    cancelled while it was queued.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Pending[R]]], Awaitable[None]],
        withdrawn: Callable[[str], None] = lambda operation: None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._run_batch = run_batch
        self._withdrawn = withdrawn
        self._max_in_flight = max_in_flight
        self.queue: deque[Pending[R]] = deque()
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def runs_alone(self) -> bool:
        """Whether a write arriving now runs at once (a free slot, nothing queued); if so
        it has taken the slot and must call :meth:`release` when done."""
        if self.in_flight < self._max_in_flight and not self.queue:
            self.in_flight += 1
            return True
        return False

    async def queued(
        self,
        operation: str,
        key: str,
        query: Query,
        params: Params | None,
        setup: Setups | None,
        alone: Callable[[], Awaitable[R]],
    ) -> R:
        """Queue a write for the next batch and wait for its outcome. A caller cancelled
        while its write is still queued withdraws it (never sent); once the batch is sent
        the write's fate is the batch's."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        p = Pending(operation, key, query, params, setup, params_bytes(params), fut, alone)
        self.queue.append(p)
        try:
            return await fut
        except asyncio.CancelledError:
            if not p.sent:  # fut is cancelled with the caller: take_batch drops it
                self._withdrawn(operation)
            raise

    def release(self) -> None:
        """A write or batch in flight ended: its slot sends what queued, or frees."""
        if self.queue:
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.in_flight -= 1

    async def _drain(self) -> None:
        try:
            while True:
                batch = take_batch(self.queue)
                if not batch:
                    return
                await self._run_batch(batch)
        finally:
            self.in_flight -= 1
