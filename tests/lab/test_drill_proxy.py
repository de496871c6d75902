"""The fault proxy of the drills: forward, blackhole, cut, reject, resume (real PostgreSQL)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.proxy import TcpProxy


async def _one(port: int) -> int:
    conn = await psycopg.AsyncConnection.connect(
        f"host=127.0.0.1 port={port} user=postgres dbname=pgsessions", connect_timeout=2
    )
    async with conn:
        cur = await conn.execute("SELECT 42")
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_proxy_faults(cluster: LocalCluster) -> None:
    async with TcpProxy("127.0.0.1", cluster.primary.port) as proxy:
        assert await _one(proxy.port) == 42

        conn = await psycopg.AsyncConnection.connect(
            f"host=127.0.0.1 port={proxy.port} user=postgres dbname=pgsessions", autocommit=True
        )
        proxy.blackhole()
        query = asyncio.create_task(conn.execute("SELECT 1"))
        done, _ = await asyncio.wait({query}, timeout=0.3)
        assert not done  # nothing flows
        assert proxy.cut() >= 1
        with pytest.raises(psycopg.OperationalError):
            await query
        await conn.close()

        proxy.reject()
        with pytest.raises(psycopg.OperationalError):
            await _one(proxy.port)

        proxy.resume()
        assert await _one(proxy.port) == 42
    assert proxy.open_connections == 0
