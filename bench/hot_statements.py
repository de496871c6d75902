"""Measure the session's hot statements on the primary: ``python -m bench.hot_statements``.

Prints the median (and p90) time of ``add_items`` with 2 items of about 1 KB each and of
``get_items(limit=50)`` on a session holding 200 items, over ``--runs`` calls each. Hosts:
``--hosts``, else ``PGSESSIONS_HOSTS``, else the local cluster. Reads are pinned to the
primary (``read_from_replicas=False``) so the figure is the statement itself, not routing.
This is a measurement tool, not a benchmark against peers (see ``bench/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import cast

from agents.items import TResponseInputItem

from pgsessions.router import RouterConfig, SessionRouter
from pgsessions.router.settings import count, flag
from pgsessions.sessions.schema import migrate
from pgsessions.sessions.session import PostgresSession


def _item(i: int, role: str) -> TResponseInputItem:
    text = f"{i:06d} " + "lorem ipsum " * 84
    return cast(TResponseInputItem, {"type": "message", "role": role, "content": text})


async def _timed(runs: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(20):  # warm the pool and the prepared statements
        await call(i)
    out = []
    for i in range(runs):
        t0 = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - t0)
    return out


def _fmt(name: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=10)
    return (
        f"{name:<28} median {statistics.median(samples) * 1e3:7.3f} ms"
        f"   p90 {q[8] * 1e3:7.3f} ms   ({len(samples)} calls)"
    )


async def measure(hosts: list[str] | str, runs: int) -> list[str]:
    schema = f"measure_{uuid.uuid4().hex[:8]}"
    config = RouterConfig(hosts=hosts, schema=schema, read_from_replicas=False)
    async with SessionRouter(config) as router:
        await migrate(router)
        try:
            writer = PostgresSession("measure-write", router)
            size = len(str(_item(0, "user")))
            add = await _timed(
                runs, lambda i: writer.add_items([_item(i, "user"), _item(i, "assistant")])
            )
            reader = PostgresSession("measure-read", router)
            await reader.add_items([_item(i, "user") for i in range(200)])
            get = await _timed(runs, lambda i: reader.get_items(50))
        finally:
            async with router.primary_connection() as conn:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return [
        _fmt(f"add_items(2 x ~{size} B)", add),
        _fmt("get_items(limit=50)", get),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", nargs="+", default=None)
    parser.add_argument("--runs", type=flag(count(10)), default=500)
    args = parser.parse_args()
    cluster = None
    hosts: list[str] | str
    if args.hosts:
        hosts = args.hosts
    elif os.environ.get("PGSESSIONS_HOSTS"):
        hosts = os.environ["PGSESSIONS_HOSTS"]
    else:
        from pgsessions.devcluster.local import ensure_local_cluster

        cluster, started = ensure_local_cluster()
        hosts = cluster.dsns()
        if not started:
            cluster = None
    try:
        for line in asyncio.run(measure(hosts, args.runs)):
            print(line)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
