"""Many writers and poppers on one session: nothing lost, nothing doubled, order kept."""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate

WRITERS = 8
BATCHES = 200


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


async def primary_token(router: SessionRouter) -> str:
    """The primary's flush position now: reads at this token see every commit so far."""
    async with router.primary_connection() as conn:
        cur = await conn.execute("SELECT pg_current_wal_flush_lsn()::text")
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


def writer_process(hosts: list[str], schema: str, writer: int, barrier: Barrier) -> None:
    """One OS process with its own router, appending BATCHES items one call at a time."""

    async def run() -> None:
        config = RouterConfig(hosts=hosts, schema=schema, primary_pool_min=1, primary_pool_max=2)
        async with SessionRouter(config) as router:
            session = PostgresSession("shared", router)
            barrier.wait(timeout=60)  # every writer starts together
            for i in range(BATCHES):
                await session.add_items([{"role": "user", "content": f"{writer}:{i}"}])

    asyncio.run(run())


async def test_processes_appending_to_one_session(db: SessionRouter) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    config = db.config
    procs = [
        ctx.Process(target=writer_process, args=(list(config.host_list), config.schema, w, barrier))
        for w in range(WRITERS)
    ]
    for p in procs:
        p.start()
    try:
        codes = await asyncio.to_thread(lambda: [p.join(240) or p.exitcode for p in procs])
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert codes == [0] * WRITERS
    reader = PostgresSession("shared", db, consistency_token=await primary_token(db))
    items = await reader.get_items()
    tags = [i["content"] for i in items]
    assert len(tags) == WRITERS * BATCHES
    assert len(set(tags)) == len(tags)  # each exactly once
    for w in range(WRITERS):
        mine = [int(t.split(":")[1]) for t in tags if t.startswith(f"{w}:")]
        assert mine == list(range(BATCHES)), f"writer {w} out of order"
    # writers interleaved (they really ran at the same time)
    firsts = {t.split(":")[0] for t in tags[:BATCHES]}
    assert len(firsts) > 1
    # the sequence has no holes and the counters agree
    async with db.primary_connection() as conn:
        schema = config.schema
        cur = await conn.execute(
            f'SELECT min(seq), max(seq), count(*) FROM "{schema}".messages'
            " WHERE session_id = 'shared'"
        )
        assert await cur.fetchone() == (1, WRITERS * BATCHES, WRITERS * BATCHES)
        cur = await conn.execute(
            f'SELECT item_count, user_turns, next_seq FROM "{schema}".conversations'
            " WHERE session_id = 'shared'"
        )
        n = WRITERS * BATCHES
        assert await cur.fetchone() == (n, n, n + 1)


async def test_concurrent_pops_return_distinct_items(db: SessionRouter) -> None:
    session = PostgresSession("pops", db)
    await session.add_items([{"n": i} for i in range(60)])
    poppers = [PostgresSession("pops", db) for _ in range(40)]
    popped: list[Any] = await asyncio.gather(*(p.pop_item() for p in poppers))
    assert None not in popped
    numbers = sorted(item["n"] for item in popped)
    assert numbers == list(range(20, 60))  # the newest 40, each once
    assert await session.get_items() == [{"n": i} for i in range(20)]


async def test_concurrent_pops_on_a_short_session(db: SessionRouter) -> None:
    session = PostgresSession("few", db)
    await session.add_items([{"n": i} for i in range(5)])
    popped = await asyncio.gather(*(session.pop_item() for _ in range(12)))
    assert sorted(p["n"] for p in popped if p is not None) == [0, 1, 2, 3, 4]
    assert popped.count(None) == 7
    assert await session.get_items() == []


async def test_concurrent_adds_and_pops_keep_counters_exact(db: SessionRouter) -> None:
    session = PostgresSession("mixed", db)
    await session.add_items([{"role": "user", "content": "seed"}])
    adds = [session.add_items([{"role": "user", "content": str(i)}]) for i in range(30)]
    pops = [session.pop_item() for _ in range(15)]
    results = await asyncio.gather(*adds, *pops)
    popped = [r for r in results[30:] if r is not None]
    remaining = await session.get_items()
    assert len(popped) + len(remaining) == 31
    assert sorted(i["content"] for i in popped + remaining) == sorted(
        ["seed", *(str(i) for i in range(30))]
    )
    async with db.primary_connection() as conn:
        cur = await conn.execute(
            f'SELECT item_count, user_turns FROM "{db.config.schema}".conversations'
            " WHERE session_id = 'mixed'"
        )
        assert await cur.fetchone() == (len(remaining), len(remaining))
