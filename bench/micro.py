"""Client CPU per operation of the building blocks of a turn: `python -m bench.micro`.

One connection, one coroutine, no concurrency: process CPU time per call (best of 3 runs),
so a busy shared machine barely moves the numbers. It splits pgsessions' cost into what
psycopg costs for the statements sent and what the router/session layers add on top, next
to the raw floor's statements. Starts its own throw-away cluster (no replicas, fsync off).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from .payloads import Payloads

_TXN = [
    "BEGIN",
    "SELECT set_config('synchronous_commit', 'on', true) "
    "WHERE current_setting('synchronous_commit') = 'off'",
]
_TOKEN = "SELECT pg_current_wal_flush_lsn()::text"


async def _cpu_per_call(f: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """(client CPU, wall) microseconds per call, from the run with the least CPU of 3."""
    for _ in range(max(50, n // 10)):
        await f()
    best = (float("inf"), float("inf"))
    for _ in range(3):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await f()
        best = min(best, ((time.process_time() - c0) / n, (time.perf_counter() - t0) / n))
    return best[0] * 1e6, best[1] * 1e6


async def run(dsn: str, n: int) -> list[tuple[str, float, float]]:
    """(label, client CPU us per call, wall us per call) for each building block."""
    from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
    from pgsessions.router.arrays import ADAPTERS
    from pgsessions.sessions.items import encode_items
    from pgsessions.sessions.sql.session import statements

    from .contenders import BenchEnv, FloorContender

    schema = f"micro_{uuid.uuid4().hex[:6]}"
    pl = Payloads()
    out: list[tuple[str, float, float]] = []
    cfg = RouterConfig(hosts=[dsn], schema=schema, primary_pool_min=1, primary_pool_max=1)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, context=ADAPTERS)
    floor = FloorContender()
    await floor.open(BenchEnv(dsn, [], workdir=Path("."), prefix=schema))
    try:
        async with SessionRouter(cfg) as router:
            await migrate(router)
            st = statements(schema)
            counter = iter(range(10**9))

            def add_params() -> tuple[Any, ...]:
                b = encode_items(pl.turn("m", next(counter)))
                return ("m1", uuid.uuid4(), b.items, b.roles, b.types, None, False)

            async def pipeline(stmts: list[tuple[str, Any]]) -> None:
                async with conn.pipeline():
                    curs = []
                    for q, p in stmts:
                        cur = conn.cursor()
                        await cur.execute(q, p)  # type: ignore[arg-type]
                        curs.append(cur)
                for cur in curs:
                    if cur.description is not None:
                        await cur.fetchall()

            session = PostgresSession("m2", router)
            fsession = floor.session("m3")
            for i in range(60):
                await session.add_items(pl.turn("m2", i))
                await fsession.add_items(pl.turn("m3", i))
            cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("psycopg: SELECT 1", lambda: conn.execute("SELECT 1")),
                (
                    "psycopg pipeline: SELECT 1, token",
                    lambda: pipeline([("SELECT 1", None), (_TOKEN, None)]),
                ),
                (
                    "psycopg pipeline: BEGIN, set_config, SELECT 1, COMMIT, token",
                    lambda: pipeline(
                        [
                            (_TXN[0], None),
                            (_TXN[1], None),
                            ("SELECT 1", None),
                            ("COMMIT", None),
                            (_TOKEN, None),
                        ]
                    ),
                ),
                (
                    "router.execute_write(SELECT 1)",
                    lambda: router.execute_write("x", "m0", "SELECT 1"),
                ),
                (
                    "router.execute_read(SELECT 1), primary",
                    lambda: router.execute_read("x", "m0", "SELECT 1"),
                ),
                (
                    "psycopg: CALL add_items_checked_committed(), 1 statement",
                    lambda: conn.execute(st.add_items, add_params()),
                ),
                (
                    "router.execute_write(CALL add_items_checked_committed())",
                    lambda: router.execute_write(
                        "add_items", "m1", st.add_items, add_params(), commits=True
                    ),
                ),
                ("PostgresSession.add_items(2 items)", lambda: session.add_items(pl.turn("m2", 0))),
                ("raw floor add_items(2 items)", lambda: fsession.add_items(pl.turn("m3", 0))),
                ("PostgresSession.get_items(50), primary", lambda: session.get_items(limit=50)),
                ("raw floor get_items(50)", lambda: fsession.get_items(limit=50)),
            ]
            for label, f in cases:
                cpu, wall = await _cpu_per_call(f, n)
                out.append((label, cpu, wall))
                print(f"{label:62s} {cpu:6.0f} us CPU {wall:7.0f} us wall", flush=True)
            async with router.primary_connection() as c:
                await c.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
        await floor.drop()
        await floor.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    p.add_argument("--dsn", default=None, help="a primary to use (default: a throw-away one)")
    p.add_argument("-n", type=int, default=2000, help="calls per measurement (2000)")
    args = p.parse_args()
    if args.dsn:
        asyncio.run(run(args.dsn, args.n))
        return
    from pgsessions.devcluster import LocalCluster

    with LocalCluster(replicas=0, fsync=False) as cluster:
        asyncio.run(run(cluster.primary.dsn, args.n))


if __name__ == "__main__":
    main()
