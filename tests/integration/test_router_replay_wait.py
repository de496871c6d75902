"""A replica read waits for its position on the server (migration 0015's wait_replay): one
round trip, the query after the wait, no rows read and thrown away. Real replicas, replay
paused and resumed; a schema without the function falls back to polling from the client."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.node import Node
from pgsessions.monitoring import serve
from pgsessions.router import execution
from pgsessions.router.lsn import parse_lsn
from pgsessions.sessions.schema import quote_ident
from tests.helpers import texts, user
from tests.integration.test_router import fast_config, wait_until
from tests.monitoring_support import scrape


async def _replicas_know_wait_replay(r: SessionRouter) -> None:
    """The router was opened before its schema had wait_replay: after migrate() (admin work
    through the router) its monitor asks each replica again once it has replayed it."""
    replicas = [h for h in r._hosts.values() if h.role == "replica"]
    await wait_until(
        lambda: replicas and all(h.replay_wait for h in replicas), 10, "wait_replay known"
    )


def _waiting_backends(node: Node) -> int:
    """Backends of ``node`` running wait_replay right now."""
    rows = node.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE query LIKE '%wait_replay(%' AND pid <> pg_backend_pid() AND state = 'active'"
    )
    return int(rows[0][0])


async def test_wait_replay_answers_at_once_when_there_is_nothing_to_wait_for(
    cluster: LocalCluster, schema: str
) -> None:
    async with SessionRouter(fast_config(cluster.dsns(), schema)) as r:
        await migrate(r)
    await asyncio.to_thread(cluster.wait_caught_up)
    q = f"SELECT {quote_ident(schema)}.wait_replay(%s::pg_lsn, %s)"
    # a primary replays nothing: NULL, without waiting
    started = time.monotonic()
    assert cluster.primary.execute(q, ("FFFF/0", 5)) == [(None,)]
    replica = cluster.replicas[0]
    reached = replica.execute(q, ("0/1", 5))[0][0]
    assert parse_lsn(reached) > 1
    assert time.monotonic() - started < 4  # neither slept its 5 s
    # a position the replica will not reach soon: it gives up after its seconds, spinning
    # for the first of them, and answers where it got
    started = time.monotonic()
    spun = replica.execute(
        f"SELECT {quote_ident(schema)}.wait_replay(%s::pg_lsn, %s, %s)", ("FFFF/0", 0.3, 0.1)
    )[0][0]
    assert 0.29 <= time.monotonic() - started < 4
    assert parse_lsn(spun) < parse_lsn("FFFF/0")


@pytest.mark.fault
async def test_a_read_waits_on_the_server_and_runs_once_after_replay(
    cluster: LocalCluster, schema: str
) -> None:
    """Replay paused on one replica: read_if_replayed with a server wait stays in
    wait_replay on the replica until replay resumes, then its query sees the write."""
    async with SessionRouter(fast_config(cluster.dsns(), schema)) as r:
        await migrate(r)
        s = PostgresSession(f"rw-{uuid.uuid4().hex[:6]}", r)
        await asyncio.to_thread(cluster.wait_caught_up)
        replica = cluster.replicas[0]
        await asyncio.to_thread(cluster.pause_replay, replica)
        try:
            await s.add_items([user("after the pause")])
            lsn = parse_lsn(
                cluster.primary.execute("SELECT pg_current_wal_flush_lsn()::text")[0][0]
            )
            query = f"SELECT count(*) FROM {quote_ident(schema)}.messages WHERE session_id = %s"
            wait = execution.ReplayWait(execution.replay_wait_sql(schema), 20.0)
            async with await psycopg.AsyncConnection.connect(replica.dsn) as conn:
                may = await conn.execute(execution.may_wait_replay_sql(schema))
                assert await may.fetchone() == (True,)
                read = asyncio.ensure_future(
                    execution.read_if_replayed(conn, lsn, query, (s.session_id,), wait=wait)
                )
                await wait_until(lambda: _waiting_backends(replica) == 1, 10, "the wait")
                assert not read.done()
                await asyncio.to_thread(cluster.resume_replay, replica)
                rows, seen = await asyncio.wait_for(read, 20)
        finally:
            await asyncio.to_thread(cluster.resume_replay, replica)
    assert seen is not None and seen >= lsn
    assert rows == [(1,)]


@pytest.mark.fault
async def test_reads_behind_their_writes_wait_on_the_replicas_not_the_primary(
    cluster: LocalCluster, schema: str
) -> None:
    """Replay paused on both replicas while sessions read right after their writes: the
    reads wait in wait_replay on the replicas (no client polls), and once replay resumes
    every read sees its own write; none reads the primary."""
    tag = uuid.uuid4().hex[:6]
    async with SessionRouter(fast_config(cluster.dsns(), schema, catch_up_wait=15.0)) as r:
        await migrate(r)
        await _replicas_know_wait_replay(r)
        sessions = [PostgresSession(f"rs-{tag}-{i}", r) for i in range(6)]
        await asyncio.gather(*(s.add_items([user("first")]) for s in sessions))
        await asyncio.to_thread(cluster.wait_caught_up)
        with serve(r, port=0, registry=CollectorRegistry()) as server:
            try:
                for node in cluster.replicas:
                    await asyncio.to_thread(cluster.pause_replay, node)
                await asyncio.gather(*(s.add_items([user("second")]) for s in sessions))
                before = r.stats()
                reads = asyncio.gather(*(s.get_items() for s in sessions))
                await wait_until(
                    lambda: sum(_waiting_backends(n) for n in cluster.replicas) >= 1,
                    10,
                    "a read waiting in wait_replay",
                )
                assert not reads.done()
            finally:
                for node in cluster.replicas:
                    await asyncio.to_thread(cluster.resume_replay, node)
            got = await asyncio.wait_for(reads, 20)
            result = await scrape(server.url)
        assert [texts(g) for g in got] == [["first", "second"]] * len(sessions)
        st = r.stats()
        primary_reads = sum(st["reads"].get("primary", {}).values())
        assert primary_reads == sum(before["reads"].get("primary", {}).values())
        waits = [h.replay_wait for h in r._hosts.values() if h.role == "replica"]
        assert True in waits and False not in waits

        def outcome(o: str) -> float:
            return (
                result.value("pgsessions_coalesced_reads_total", operation="get_items", outcome=o)
                or 0
            )

        # groups behind the pause waited on the server in slices, then read again
        assert outcome("uncovered") == 0
        assert outcome("waited") + outcome("grouped") + outcome("alone") == len(sessions)


@pytest.mark.owner_sql  # drops a function of the schema
async def test_a_schema_without_wait_replay_falls_back_to_polling_from_the_client(
    cluster: LocalCluster, schema: str
) -> None:
    """The function dropped under a router that had used it: the next read meets the
    error, the router polls from the client for that host from then on, and every read still
    sees its own write."""
    tag = uuid.uuid4().hex[:6]
    async with SessionRouter(fast_config(cluster.dsns(), schema, coalesce_reads=False)) as r:
        await migrate(r)
        await _replicas_know_wait_replay(r)
        s = PostgresSession(f"nf-{tag}", r)
        for k in range(3):
            await s.add_items([user(f"m{k}")])
            assert texts(await s.get_items())[-1] == f"m{k}"
        replicas = [h for h in r._hosts.values() if h.role == "replica"]
        assert any(h.replay_wait for h in replicas)
        async with r.primary_connection() as conn:
            await conn.execute(
                f"DROP FUNCTION {quote_ident(schema)}"
                ".wait_replay(pg_lsn, double precision, double precision)"
            )
        await asyncio.to_thread(cluster.wait_caught_up)
        for k in range(3, 30):
            await s.add_items([user(f"m{k}")])
            assert texts(await s.get_items())[-1] == f"m{k}"
        # the replicas that served a read since (at least one) know it is gone
        assert any(h.replay_wait is False for h in replicas)
