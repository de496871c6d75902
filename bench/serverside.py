"""What a session costs the primary, per call: `python -m bench.serverside`.

WAL bytes (``pg_current_wal_insert_lsn()`` deltas) and the primary's own CPU time (its
processes in /proc: see servercpu.py) per ``add_items`` (a user message and a ~1 KB
assistant message), per ``get_items(limit=50)`` and per turn (both), for pgsessions with
reads on the primary, next to the one-statement floor of bench/wal.py and the raw floor's
read of the same 50 items. CPU is given twice: all the primary's processes (what a call
costs the server, WAL senders included), then its client backends alone, in nanoseconds
(what the statements cost, without background work such as autovacuum). One client, one
call at a time; CPU is the least of 3 runs, WAL the median, so a busy shared machine
barely moves the figures. It measures whichever ``pgsessions`` is imported, so two
versions can be compared back to back on one cluster. Starts its own throw-away cluster
(primary + 2 replicas, fsync on) unless given ``--dsn`` (a primary on this machine, as a
superuser).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql

from .contenders import FLOOR_READ
from .payloads import Payloads
from .servercpu import client_backends_cpu_seconds, postmaster_pid, tree_cpu_seconds
from .wal import FLOOR_APPEND, FLOOR_DDL


async def _lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def run(dsn: str, n: int) -> dict[str, dict[str, float]]:
    """{case: {"wal_bytes": ..., "primary_cpu_us": ..., "backend_cpu_us": ...}} per call:
    the primary's processes, and its client backends alone (see servercpu.py)."""
    from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate

    pid = await postmaster_pid(dsn)
    if pid is None:
        raise SystemExit(f"cannot read the server's processes in /proc for {dsn}")
    schema = f"cost_{uuid.uuid4().hex[:6]}"
    floor = sql.Identifier(f"{schema}_floor")
    pl = Payloads()
    admin = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    for q in FLOOR_DDL:
        await admin.execute(sql.SQL(q).format(s=floor))
    append = sql.SQL(FLOOR_APPEND).format(s=floor)
    floor_read = sql.SQL(FLOOR_READ).format(
        t=sql.Identifier(f"{schema}_floor", "messages"), k=sql.Identifier("seq")
    )
    fconn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    cfg = RouterConfig(hosts=[dsn], schema=schema, read_from_replicas=False)
    out: dict[str, dict[str, float]] = {}
    try:
        async with SessionRouter(cfg) as router:
            await migrate(router)
            counter = iter(range(10**9))

            async def measure(case: str, f: Callable[[int], Awaitable[Any]]) -> None:
                for _ in range(max(50, n // 10)):
                    await f(next(counter))
                cpus, backend_cpus, wals = [], [], []
                for _ in range(3):
                    c0, b0 = tree_cpu_seconds(pid), client_backends_cpu_seconds(pid)
                    w0 = await _lsn(admin)
                    for _ in range(n):
                        await f(next(counter))
                    wals.append((await _lsn(admin) - w0) / n)
                    cpus.append((tree_cpu_seconds(pid) - c0) / n)
                    backend_cpus.append((client_backends_cpu_seconds(pid) - b0) / n)
                out[case] = {
                    "wal_bytes": round(statistics.median(wals), 1),
                    "primary_cpu_us": round(min(cpus) * 1e6, 1),
                    "backend_cpu_us": round(min(backend_cpus) * 1e6, 1),
                }
                print(
                    f"{case:34s} WAL {out[case]['wal_bytes']:7.0f} B"
                    f"   primary CPU {out[case]['primary_cpu_us']:6.0f} us"
                    f"   of which backends {out[case]['backend_cpu_us']:6.0f} us",
                    flush=True,
                )

            sessions = [PostgresSession(f"c{i}", router) for i in range(20)]

            async def add(k: int) -> None:
                await sessions[k % 20].add_items(pl.turn("c", k))

            async def get(k: int) -> None:
                await sessions[k % 20].get_items(limit=50)

            async def turn(k: int) -> None:
                await add(k)
                await get(k)

            async def floor_add(k: int) -> None:
                items = json.dumps(pl.turn("f", k), separators=(",", ":"))
                await fconn.execute(append, {"sid": f"f{k % 20}", "items": items})

            async def floor_get(k: int) -> None:
                cur = await fconn.execute(floor_read, (f"f{k % 20}", 50))
                await cur.fetchall()

            await measure("pgsessions add_items", add)
            await measure("pgsessions get_items(50), primary", get)
            await measure("pgsessions turn, primary", turn)

            await measure("floor statement add", floor_add)
            await measure("floor statement get_items(50)", floor_get)
            async with router.primary_connection() as conn:
                await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    finally:
        await admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(floor))
        await fconn.close()
        await admin.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.serverside", description=__doc__)
    p.add_argument("--dsn", default=None, help="a primary on this machine (default: a new one)")
    p.add_argument("-n", type=int, default=1000, help="calls per run (1000)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = p.parse_args()
    t0 = time.perf_counter()
    if args.dsn:
        out = asyncio.run(run(args.dsn, args.n))
    else:
        from pgsessions.devcluster import LocalCluster

        with LocalCluster(replicas=2, fsync=True) as cluster:
            out = asyncio.run(run(cluster.primary.dsn, args.n))
    if args.json:
        print(json.dumps(out))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
