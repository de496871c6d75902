"""One psycopg_pool per host, sized by role, plus the per-connection role record.

A connection opened while its server was a primary stays a connection to a primary until it
dies (a primary becomes a standby only through a restart, which kills its connections). So
the role each connection saw when it was opened is recorded; a connection opened while the
server was a standby is checked again before it is used as the primary's (it may have been
promoted since), and refused if it is still a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .classify import StandbyConnectionError, StatementDeadlineError
from .config import RouterConfig
from .connect import RouterConnection, configure, connect_kwargs, prepared_statement_failure
from .errors import PreparedStatementsError

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]

# connection -> True when it was opened on a standby (see the module docstring)
_opened_on_standby: weakref.WeakKeyDictionary[Conn, bool] = weakref.WeakKeyDictionary()


def abort_connection(conn: Conn) -> None:
    """Cut a connection's socket so that whoever waits on it gets an error at once.

    Used when a server stops answering (a blackholed host): cancelling the waiting coroutine
    instead would make psycopg try a cancel request and wait for it.
    """
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return
    try:
        sock = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()  # closes the duplicate only


@contextlib.contextmanager
def watchdog(conn: Conn, seconds: float) -> Iterator[Callable[[], bool]]:
    """Cut ``conn`` if the block has not finished within ``seconds``.

    Yields a function telling whether the watchdog fired; the block's error is then replaced
    by :class:`StatementDeadlineError`.
    """
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        abort_connection(conn)

    handle = asyncio.get_running_loop().call_later(seconds, fire)
    try:
        yield lambda: fired
    except psycopg.Error as exc:
        if fired:
            raise StatementDeadlineError(
                f"no answer within {seconds:.1f}s: connection closed"
            ) from exc
        raise
    finally:
        handle.cancel()


async def is_standby(conn: Conn, seconds: float) -> bool:
    with watchdog(conn, seconds):
        cur = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cur.fetchone()
    return bool(row and row[0])


class HostPool:
    """The pool of one host; ``role`` decides its size."""

    def __init__(self, dsn: str, label: str, role: str, config: RouterConfig) -> None:
        self.dsn = dsn
        self.label = label
        self.role = role
        self.config = config
        self.in_flight = 0
        self._recheck: asyncio.Future[None] | None = None
        min_size, max_size = self._sizes(role)
        self.pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            # connect options and prepared statements: see connect.py
            kwargs=connect_kwargs(dsn, config),
            connection_class=RouterConnection,
            configure=self._configure,
            open=False,
            timeout=config.pool_timeout,
            max_waiting=config.pool_max_waiting,
            reconnect_timeout=max(config.failover_timeout, 10.0),
            name=f"pgsessions-{config.name}-{label}",
            num_workers=2,
        )

    def _sizes(self, role: str) -> tuple[int, int]:
        c = self.config
        if role == "primary":
            return c.primary_pool_min, c.primary_pool_max
        return c.replica_pool_min, c.replica_pool_max

    async def _configure(self, conn: Conn) -> None:
        # nothing is SET here: session settings come as connect options (connect.py)
        with watchdog(conn, self.config.connect_timeout + self.config.statement_timeout):
            _opened_on_standby[conn] = await configure(conn, self.config, self.dsn)

    async def open(self, wait: bool) -> None:
        await self.pool.open(wait=wait, timeout=self.config.connect_timeout + 1.0)

    async def set_role(self, role: str) -> None:
        if role == self.role:
            return
        self.role = role
        min_size, max_size = self._sizes(role)
        await self.pool.resize(min_size, max_size)

    async def close(self) -> None:
        await self.pool.close(timeout=1.0)

    async def recheck(self) -> None:
        """Check every idle connection once and drop the broken ones (single flight).

        Run when the host was seen down and is back, or after a request found a pooled
        connection dead: its other idle connections died with it, and each would otherwise
        fail one request.
        """
        if self._recheck is None or self._recheck.done():
            self._recheck = asyncio.ensure_future(self._check_idle())
        await asyncio.shield(self._recheck)

    async def _check_idle(self) -> None:
        try:
            async with asyncio.timeout(self.config.connect_timeout + 1.0):
                await self.pool.check()
        except Exception:  # a pool closing or a host gone again: the monitor sees to it
            log.debug("pgsessions: pool check of %s failed", self.label, exc_info=True)

    def stats(self) -> dict[str, int]:
        return dict(self.pool.get_stats())

    @asynccontextmanager
    async def connection(
        self,
        *,
        wait: float,
        as_primary: bool,
        on_wait: Callable[[float], None] | None = None,
    ) -> AsyncIterator[Conn]:
        """Check out a connection (waiting at most ``wait`` seconds); with ``as_primary``
        refuse one to a standby."""
        t0 = time.monotonic()
        self.in_flight += 1
        try:
            async with self.pool.connection(timeout=max(0.05, wait)) as conn:
                if on_wait is not None:
                    on_wait(time.monotonic() - t0)
                if as_primary and _opened_on_standby.get(conn, True):
                    if await is_standby(conn, self.config.connect_timeout):
                        raise StandbyConnectionError(
                            f"{self.label} is a standby: not used as the primary"
                        )
                    _opened_on_standby[conn] = False
                try:
                    yield conn
                except psycopg.Error as exc:
                    failure = prepared_statement_failure(exc)
                    if failure is not None:
                        raise PreparedStatementsError(self.label, failure) from exc
                    raise
        finally:
            self.in_flight -= 1

    @asynccontextmanager
    async def admin_connection(self, *, wait: float) -> AsyncIterator[Conn]:
        """A primary connection for arbitrary admin work; closed afterwards, never reused,
        so nothing the block sets (SET, temporary tables, locks) reaches a later request."""
        async with self.connection(wait=wait, as_primary=True) as conn:
            try:
                yield conn
            finally:
                # the pool replaces a closed connection with a fresh one
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()
