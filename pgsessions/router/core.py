"""SessionRouter: where each statement runs.

This is the minimal router (every statement on the discovered primary); the lag-aware
replica routing, the monitor, retries and failover grow here behind the same methods.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.abc import Params, Query
from psycopg_pool import AsyncConnectionPool

from .config import RouterConfig
from .dsn import host_label
from .errors import NoPrimaryError, RouterClosedError
from .events import RouterObserver
from .lsn import format_lsn, parse_lsn
from .topology import HostState, Topology

Rows = list[tuple[Any, ...]]


class SessionRouter:
    """Sends writes to the primary's pool and history reads to caught-up replicas.

    Use as ``async with SessionRouter(config) as router:``. Statements come from sessions/
    through :meth:`execute_write` and :meth:`execute_read`; the router knows hosts and roles,
    never the schema.
    """

    def __init__(self, config: RouterConfig | str | Sequence[str]) -> None:
        if not isinstance(config, RouterConfig):
            config = RouterConfig(hosts=list(config) if not isinstance(config, str) else config)
        self.config = config
        self._pools: dict[str, AsyncConnectionPool[Any]] = {}
        self._primary: str | None = None
        self._topology = Topology()
        self._tokens: OrderedDict[str, int] = OrderedDict()
        self._observers: list[RouterObserver] = []
        self._open = False

    def __repr__(self) -> str:
        return f"SessionRouter(name={self.config.name!r}, primary={self._topology.primary!r})"

    # lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Discover roles and open the pools."""
        if self._open:
            return
        states: dict[str, str] = {}
        for dsn in self.config.host_list:
            label = host_label(dsn)
            try:
                conn = await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=max(1, int(self.config.connect_timeout))
                )
                async with conn:
                    cur = await conn.execute("SELECT pg_is_in_recovery()")
                    row = await cur.fetchone()
                    in_recovery = bool(row and row[0])
                states[label] = "standby" if in_recovery else "primary"
                if not in_recovery and self._primary is None:
                    self._primary = dsn
            except psycopg.Error as exc:
                states[label] = f"unreachable: {type(exc).__name__}"
        if self._primary is None:
            raise NoPrimaryError("no writable host found", states)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._primary,
            min_size=self.config.primary_pool_min,
            max_size=self.config.primary_pool_max,
            kwargs={"autocommit": True},
            open=False,
        )
        await pool.open(wait=True)
        self._pools[self._primary] = pool
        self._topology = Topology(
            hosts=tuple(
                HostState(
                    host=host_label(d), role="primary" if d == self._primary else "replica", up=True
                )
                for d in self.config.host_list
            ),
            primary=host_label(self._primary),
            checked_at=time.time(),
        )
        self._open = True

    async def close(self) -> None:
        """Stop the monitor and close every pool."""
        self._open = False
        pools, self._pools = self._pools, {}
        await asyncio.gather(*(p.close() for p in pools.values()), return_exceptions=True)

    async def __aenter__(self) -> SessionRouter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # observation ------------------------------------------------------------------------
    def topology(self) -> Topology:
        """The monitor's latest snapshot (no I/O)."""
        return self._topology

    def add_observer(self, observer: RouterObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: RouterObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    # consistency tokens ----------------------------------------------------------------
    def token_for(self, session_id: str) -> str | None:
        """The newest token this router holds for ``session_id``."""
        lsn = self._tokens.get(session_id)
        return None if lsn is None else format_lsn(lsn)

    def remember_token(self, session_id: str, token: str | None) -> None:
        """Keep ``token`` for ``session_id`` if it is newer than what is known (bounded LRU)."""
        if token is None:
            return
        lsn = parse_lsn(token)
        old = self._tokens.get(session_id)
        if old is None or lsn > old:
            self._tokens[session_id] = lsn
        self._tokens.move_to_end(session_id)
        while len(self._tokens) > self.config.token_cache_size:
            self._tokens.popitem(last=False)

    def forget_token(self, session_id: str) -> None:
        self._tokens.pop(session_id, None)

    # statements ------------------------------------------------------------------------
    def _primary_pool(self) -> AsyncConnectionPool[Any]:
        if not self._open:
            raise RouterClosedError("the router is not open: use `async with SessionRouter(...)`")
        assert self._primary is not None
        return self._pools[self._primary]

    async def execute_write(
        self, operation: str, session_id: str, query: Query, params: Params | None = None
    ) -> tuple[Rows, str]:
        """Run one idempotent statement on the primary, then take the consistency token.

        The statement and ``pg_current_wal_flush_lsn()`` go in one pipeline (one round trip)
        on an autocommit connection. The statement may be retried after an ambiguous failure,
        so it must be safe to apply twice (sessions/ makes it so with operation ids).
        Returns the statement's rows and the token, which is also remembered for the session.
        """
        async with self._primary_pool().connection() as conn:
            async with conn.pipeline():
                cur = conn.cursor()
                await cur.execute(query, params)
                lsn_cur = conn.cursor()
                await lsn_cur.execute("SELECT pg_current_wal_flush_lsn()::text")
            rows = await cur.fetchall() if cur.description is not None else []
            lsn_row = await lsn_cur.fetchone()
        assert lsn_row is not None
        token = str(lsn_row[0])
        self.remember_token(session_id, token)
        return rows, token

    async def execute_read(
        self,
        operation: str,
        session_id: str | None,
        query: Query,
        params: Params | None = None,
        *,
        token: str | None = None,
    ) -> Rows:
        """Run one read-only statement where it may run for a session at ``token``.

        ``token`` is the caller's own token; the router also applies its remembered one.
        """
        async with self._primary_pool().connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description is not None else []

    @asynccontextmanager
    async def primary_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit connection to the primary for admin work (migrations)."""
        async with self._primary_pool().connection() as conn:
            yield conn
