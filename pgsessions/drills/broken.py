"""Deliberately broken variants, to prove that the drill can fail (tests, ``--break-router``).

- ``skip-token-check``: reads go to any replica, ignoring the session's consistency token
  (the router's own ``unsafe_skip_token_check`` switch when it has one);
- ``drop-batch``: one batch in ten is acknowledged without being written.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import psycopg
from psycopg.abc import Params, Query
from psycopg_pool import AsyncConnectionPool

from ..router import RouterConfig, SessionRouter
from ..router.dsn import host_label
from ..sessions import PostgresSession
from .ledger import current_read

UNSAFE_FIELD = "unsafe_skip_token_check"


def router_has_unsafe_switch() -> bool:
    return any(f.name == UNSAFE_FIELD for f in dataclasses.fields(RouterConfig))


class TokenIgnoringRouter(SessionRouter):
    """Sends every read to a replica, round robin, whatever the session has written."""

    _stale_pools: dict[str, AsyncConnectionPool[Any]]

    async def open(self) -> None:
        await super().open()
        self._stale_pools = {}
        for dsn in self.config.host_list:
            try:
                async with await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=2
                ) as conn:
                    row = await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone()
            except psycopg.Error:
                continue
            if row and row[0]:
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    dsn, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
                )
                await pool.open(wait=True)
                self._stale_pools[host_label(dsn)] = pool
        self._cycle = itertools.cycle(list(self._stale_pools.items()))

    async def close(self) -> None:
        pools = getattr(self, "_stale_pools", {})
        for p in pools.values():
            await p.close()
        await super().close()

    async def execute_read(
        self,
        operation: str,
        session_id: str | None,
        query: Query,
        params: Params | None = None,
        **kwargs: Any,
    ) -> list[tuple[Any, ...]]:
        if self._stale_pools:
            host, pool = next(self._cycle)
            rec = current_read.get()
            if rec is not None:
                rec.role, rec.reason, rec.host = "replica", "token_ignored", host
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(query, params)
                    return await cur.fetchall() if cur.description is not None else []
            except psycopg.Error:
                pass  # the replica is gone: fall back to the real router
        return await super().execute_read(operation, session_id, query, params, **kwargs)


class DroppingSession(PostgresSession):
    """Acknowledges one ``add_items`` batch in ten without writing it."""

    _calls = 0

    async def add_items(self, items: list[Any], *, wrapper: Any = None) -> None:
        self._calls += 1
        if self._calls % 10 == 5:
            return
        await super().add_items(items, wrapper=wrapper)
