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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ..errors import PreparedStatementsError
from .classify import StandbyConnectionError, StatementDeadlineError
from .config import RouterConfig
from .connect import RouterConnection, configure, connect_kwargs, prepared_statement_failure

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


class watchdog:
    """Cut ``conn`` if the block has not finished within ``seconds``; the block's error is
    then replaced by :class:`StatementDeadlineError`. A class, not a generator: it wraps
    every statement."""

    __slots__ = ("_conn", "_fired", "_handle", "_seconds")

    def __init__(self, conn: Conn, seconds: float) -> None:
        self._conn = conn
        self._seconds = seconds
        self._fired = False
        self._handle: asyncio.TimerHandle | None = None

    def _fire(self) -> None:
        self._fired = True
        abort_connection(self._conn)

    def __enter__(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self._seconds, self._fire)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        assert self._handle is not None
        self._handle.cancel()
        if self._fired and isinstance(exc, psycopg.Error):
            raise StatementDeadlineError(
                f"no answer within {self._seconds:.1f}s: connection closed"
            ) from exc


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
        _opened_on_standby[conn] = await self._setup(conn)

    async def _setup(self, conn: Conn) -> bool:
        """Every new connection's first step (pooled or admin); whether it is on a standby."""
        # nothing is SET here: session settings come as connect options (connect.py)
        with watchdog(conn, self.config.connect_timeout + self.config.statement_timeout):
            return await configure(conn, self.config, self.dsn)

    def not_primary(self) -> StandbyConnectionError:
        return StandbyConnectionError(f"{self.label} is a standby: not used as the primary")

    def prepared_statements_error(self, exc: BaseException) -> PreparedStatementsError | None:
        """What ``exc`` becomes when a pooler lost psycopg's prepared statements, or None."""
        failure = prepared_statement_failure(exc)
        return None if failure is None else PreparedStatementsError(self.label, failure)

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

    def connection(
        self,
        *,
        wait: float,
        as_primary: bool,
        on_wait: Callable[[float], None] | None = None,
    ) -> _Checkout:
        """Check out a connection (waiting at most ``wait`` seconds); with ``as_primary``
        refuse one to a standby. Use as ``async with pool.connection(...) as conn:``."""
        return _Checkout(self, wait, as_primary, on_wait)

    @asynccontextmanager
    async def admin_connection(self) -> AsyncIterator[Conn]:
        """A primary connection of its own for arbitrary admin work, opened for the block and
        closed afterwards, so nothing the block sets (SET, temporary tables, locks) reaches a
        request. Outside the pool: it takes no request's slot, and the pool never sees (nor
        warns about) a connection closed under it."""
        conn = await RouterConnection.connect(self.dsn, **connect_kwargs(self.dsn, self.config))
        try:
            if await self._setup(conn):
                raise self.not_primary()
            try:
                yield conn
            except psycopg.Error as exc:
                translated = self.prepared_statements_error(exc)
                if translated is not None:
                    raise translated from exc
                raise
        finally:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()


class _Checkout:
    """``HostPool.connection()``: getconn/putconn around a block, without psycopg_pool's own
    context manager (every request passes here: a class costs a fraction of two nested
    generator-based ones). Connections are autocommit, and putconn rolls back or discards
    one left in a transaction or broken."""

    __slots__ = ("_as_primary", "_conn", "_host", "_on_wait", "_wait")

    def __init__(
        self,
        host: HostPool,
        wait: float,
        as_primary: bool,
        on_wait: Callable[[float], None] | None,
    ) -> None:
        self._host = host
        self._wait = wait
        self._as_primary = as_primary
        self._on_wait = on_wait
        self._conn: Conn | None = None

    async def __aenter__(self) -> Conn:
        host = self._host
        t0 = time.monotonic()
        host.in_flight += 1
        try:
            conn = await host.pool.getconn(timeout=max(0.05, self._wait))
        except BaseException:
            host.in_flight -= 1
            raise
        self._conn = conn
        try:
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - t0)
            if self._as_primary and _opened_on_standby.get(conn, True):
                if await is_standby(conn, host.config.connect_timeout):
                    raise host.not_primary()
                _opened_on_standby[conn] = False
        except BaseException:
            await self._release()
            raise
        return conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        await self._release()
        if isinstance(exc, psycopg.Error):
            translated = self._host.prepared_statements_error(exc)
            if translated is not None:
                raise translated from exc

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await self._host.pool.putconn(conn)
        finally:
            self._host.in_flight -= 1
