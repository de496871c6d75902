"""Overload is not failure; pools survive host restarts; admin settings never leak; a
cancelled open() leaves nothing behind."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter

import pytest

from pgsessions import OverloadedError, PostgresSession, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.router import RouterConfig, SessionRouter
from tests.integration.test_router import fast_config, wait_until

ClusterFactory = object


@pytest.mark.parametrize("coalesce", [False, True], ids=["alone", "coalesced"])
async def test_300_writers_on_a_2_connection_pool_no_ban_no_failover(
    cluster: LocalCluster, schema: str, coalesce: bool
) -> None:
    """Every write is stored or refused with OverloadedError; nothing is duplicated; the
    healthy primary is never banned and no failover or lost connection is counted. Each
    write alone, the pool refuses some; coalesced, the queued writes share transactions."""
    cfg = fast_config(
        cluster.dsns(),
        schema,
        name="busy",
        primary_pool_min=2,
        primary_pool_max=2,
        pool_timeout=0.5,
        pool_max_waiting=40,
        coalesce_writes=coalesce,
    )
    async with SessionRouter(cfg) as r:
        await migrate(r)
        outcome: Counter[str] = Counter()
        stored: list[str] = []

        async def writer(n: int) -> None:
            sid = f"w{n}"
            try:
                await PostgresSession(sid, r).add_items([{"role": "user", "content": sid}])
            except OverloadedError as exc:
                assert exc.host == r.topology().primary
                outcome["refused"] += 1
            else:
                stored.append(sid)
                outcome["stored"] += 1

        await asyncio.gather(*(writer(n) for n in range(300)))
        stats = r.stats()
        assert outcome["stored"] + outcome["refused"] == 300, outcome
        if not coalesce:
            assert outcome["refused"] > 0 and outcome["stored"] >= 42, outcome  # 2 + 40 queued
        else:
            assert outcome["stored"] >= 42, outcome
        assert stats["bans"] == 0 and stats["failovers"] == 0, stats
        assert stats["connections_lost"] == 0 and stats["overloaded"] == outcome["refused"]
        assert not any(h.banned for h in r.topology().hosts)
        rows = cluster.primary.execute(
            f'SELECT session_id, count(*) FROM "{schema}".messages GROUP BY 1'
        )
        assert sorted(sid for sid, _ in rows) == sorted(stored)  # refused: nothing written
        assert all(n == 1 for _, n in rows)  # stored: exactly once
        # once the burst is over the same router writes normally
        await PostgresSession("after", r).add_items([{"role": "user", "content": "x"}])


async def test_a_host_restart_fails_no_request_and_bans_at_most_once(
    cluster_factory: ClusterFactory,
) -> None:
    """The primary restarts between checks: its pooled connections are dead. Writes and
    reads carry on without an error, and the host is banned at most once."""
    c = cluster_factory(replicas=1)  # type: ignore[operator]
    schema = f"t_{uuid.uuid4().hex[:8]}"
    cfg = fast_config(c.dsns(), schema, name="restart", primary_pool_min=4, check_interval=5.0)
    async with SessionRouter(cfg) as r:
        await migrate(r)
        session = PostgresSession("restart", r)
        await asyncio.gather(*(session.add_items([{"content": i}]) for i in range(8)))
        await wait_until(lambda: r.pool_stats()[c.primary.host]["pool_available"] >= 4, 10, "pool")
        await asyncio.to_thread(c.stop_node, c.primary, "fast")
        await asyncio.to_thread(c.start_node, c.primary)
        assert r.topology().hosts[0].up  # the monitor (5 s interval) has not noticed
        bans0 = r.stats()["bans"]
        for i in range(8, 20):
            await session.add_items([{"content": i}])
            assert (await session.get_items(limit=1)) == [{"content": i}]
        stats = r.stats()
        assert stats["bans"] - bans0 <= 1, stats
        assert stats["write_errors"] == 0 and stats["read_errors"] == 0, stats
        assert len(await session.get_items()) == 20


async def test_settings_made_in_an_admin_block_never_reach_a_request(
    cluster: LocalCluster, schema: str
) -> None:
    async with SessionRouter(fast_config(cluster.dsns(), schema, name="admin")) as r:
        async with r.primary_connection() as conn:
            await conn.execute("SET statement_timeout = '1ms'")
            await conn.execute("SET application_name = 'admin-block'")
            admin_pid = conn.info.backend_pid
        seen = set()
        for _ in range(20):
            rows, _token = await r.execute_write(
                "probe",
                "s",
                "SELECT current_setting('statement_timeout'),"
                " current_setting('application_name'), pg_backend_pid()",
            )
            timeout, app, pid = rows[0]
            seen.add(pid)
            assert timeout != "1ms" and app != "admin-block"
        assert admin_pid not in seen


async def test_an_admin_block_takes_no_pool_slot_and_logs_no_warning(
    cluster: LocalCluster, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Admin work (migrations, prune, the CLI) opens a connection of its own: a full pool
    does not hold it up, and closing it afterwards makes psycopg_pool log nothing (closing a
    pooled connection made it warn "discarding closed connection" on every migrate)."""
    cfg = fast_config(
        cluster.dsns()[:1], schema, name="admin-own", primary_pool_min=1, primary_pool_max=1
    )
    async with SessionRouter(cfg) as r:
        with caplog.at_level(logging.WARNING, logger="psycopg"):
            async with r.primary_connection() as held:  # nested: another one
                async with r.primary_connection() as conn:
                    pids = {held.info.backend_pid, conn.info.backend_pid}
                    await conn.execute("SET application_name = 'admin-own'")
            assert len(pids) == 2
            await migrate(r)
            rows, _ = await r.execute_write("probe", "s", "SELECT pg_backend_pid()")
            assert rows[0][0] not in pids
        (stats,) = r.pool_stats().values()
        assert stats.get("connections_num") == 1 and stats.get("returns_bad", 0) == 0, stats
        warnings = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert warnings == [], warnings


async def test_cancelled_open_leaves_no_pool_and_no_task(cluster: LocalCluster) -> None:
    """open() cancelled (wait_for with a short timeout) at points spread over its run."""
    # the fastest of three opens: the points below then fall inside nearly every later open
    took = float("inf")
    for _ in range(3):
        t0 = time.monotonic()
        async with SessionRouter(RouterConfig(hosts=cluster.dsns(), name="timing")):
            took = min(took, time.monotonic() - t0)
    before = set(asyncio.all_tasks())
    cancelled = 0
    for i in range(16):
        r = SessionRouter(RouterConfig(hosts=cluster.dsns(), name=f"cancel{i}"))
        try:
            await asyncio.wait_for(r.open(), timeout=took * i / 16)
        except TimeoutError:
            cancelled += 1
        else:
            await r.close()
        assert r.closed
        assert not r._monitor.tasks()
        assert all(h.pool is None for h in r._hosts.values())
        assert all(h.prober._conn is None for h in r._hosts.values())
        leftover = [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()]
        assert not leftover, leftover
    assert cancelled >= 8, cancelled
    # and a router opened after all that works
    async with SessionRouter(RouterConfig(hosts=cluster.dsns(), name="after")) as r:
        assert r.topology().primary == cluster.primary.host


def test_pool_max_waiting_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="pool_max_waiting"):
        RouterConfig(hosts="host=x", pool_max_waiting=-1)


async def test_a_recovery_conflict_on_a_replica_is_retried_on_another_host(
    cluster_factory: ClusterFactory,
) -> None:
    """A replica cancels a read to replay a lock (SQLSTATE 40001): the read is retried at
    once elsewhere and returns; the replica is not lost for good."""
    c = cluster_factory(  # type: ignore[operator]
        replicas=2,
        settings={"hot_standby_feedback": "off", "max_standby_streaming_delay": "0"},
    )
    c.primary.execute("CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 100) g")
    await asyncio.to_thread(c.wait_caught_up)
    cfg = fast_config(c.dsns(), "public", name="conflict")
    async with SessionRouter(cfg) as r:
        await wait_until(lambda: len(r.topology().eligible()) == 2, 10, "replicas eligible")
        slow = "SELECT count(*) FROM t, pg_sleep(1.5) /* conflict-probe */"
        read = asyncio.create_task(r.execute_read("conflict", None, slow))

        def running_on_a_replica() -> bool:
            return any(
                n.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s"
                    " AND pid <> pg_backend_pid()",
                    ("%conflict-probe%",),
                )[0][0]
                for n in c.replicas
            )

        await wait_until(running_on_a_replica, 10, "the read to run on a replica")
        # an ACCESS EXCLUSIVE lock is WAL-logged; replaying it cancels the replica's read
        c.primary.execute("DO $$ BEGIN LOCK TABLE t IN ACCESS EXCLUSIVE MODE; END $$")
        rows = await asyncio.wait_for(read, 15)
        assert rows == [(100,)]
        assert r.stats()["retries"]["read"].get("recovery_conflict", 0) >= 1, r.stats()
