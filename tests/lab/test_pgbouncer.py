"""Conformance through PgBouncer in transaction mode (1.18: no prepared statements kept
across transactions), one bouncer per node of the shared replicated cluster."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.testing import ModelStep, ScriptedModel, assistant_message
from agents.usage import Usage

from pgsessions import (
    PostgresSession,
    PreparedStatementsError,
    RouterConfig,
    SessionRouter,
    list_sessions,
    migrate,
)
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.pgbouncer import Bouncer, start_bouncers, stop_bouncers
from pgsessions.router import probe
from pgsessions.sessions import applied_migrations
from tests.helpers import apoll, cluster_cli, cluster_state_dir, processes_under

set_tracing_disabled(True)


@pytest.fixture(scope="module")
def bouncers(cluster: LocalCluster) -> Iterator[list[Bouncer]]:
    """One transaction-mode PgBouncer per node, primary first."""
    started = start_bouncers(cluster, pool_mode="transaction", pool_size=10)
    try:
        yield started
    finally:
        stop_bouncers(cluster.base_dir, only=started)


def bconfig(bouncers: list[Bouncer], schema: str, **kw: Any) -> RouterConfig:
    base: dict[str, Any] = {
        "hosts": [b.dsn for b in bouncers],
        "schema": schema,
        "check_interval": 0.1,
        "healthy_for": 0.3,
    }
    base.update(kw)
    return RouterConfig(**base)


@pytest.fixture
async def brouter(bouncers: list[Bouncer], schema: str) -> AsyncIterator[SessionRouter]:
    """A migrated router that reaches every node through its bouncer only."""
    async with SessionRouter(bconfig(bouncers, schema)) as r:
        await migrate(r)
        assert await apoll(lambda: _replicas_eligible(r, 2), within=15)
        yield r


async def _replicas_eligible(r: SessionRouter, n: int) -> bool:
    return sum(1 for h in r.topology().hosts if h.eligible) >= n


def msg(text: str, role: str = "user") -> Any:
    return {"role": role, "content": text}


async def test_round_trip_order_pop_and_clear(brouter: SessionRouter) -> None:
    s = PostgresSession("conv", brouter)
    await s.add_items([msg("a"), msg("b", "assistant")])
    await s.add_items([msg("c\u0000 '; DROP TABLE x; --")])
    assert [i["content"] for i in await s.get_items()] == ["a", "b", "c\u0000 '; DROP TABLE x; --"]
    assert [i["content"] for i in await s.get_items(limit=2)] == [
        "b",
        "c\u0000 '; DROP TABLE x; --",
    ]
    popped = await s.pop_item()
    assert popped is not None and popped["content"].startswith("c")
    assert [i["content"] for i in await s.get_items()] == ["a", "b"]
    await s.clear_session()
    assert await s.get_items() == []
    assert await s.pop_item() is None


async def test_usage_and_listing(brouter: SessionRouter) -> None:
    usage = Usage(requests=1, input_tokens=10, output_tokens=4, total_tokens=14)
    agent = Agent(
        name="a",
        model=ScriptedModel([ModelStep(output=[assistant_message("hi")], usage=usage)]),
    )
    s = PostgresSession("usage", brouter)
    result = await Runner.run(agent, "hello", session=s)
    await s.store_run_usage(result)
    total = await s.get_session_usage()
    assert total is not None and (total["input_tokens"], total["total_turns"]) == (10, 1)
    for i in range(3):
        await PostgresSession(f"listed-{i}", brouter).add_items([msg(str(i))])
    wanted = {"usage", "listed-0", "listed-1", "listed-2"}

    async def listed_in_two_pages() -> bool:
        # a listing is as fresh as the router's last check (no session token): poll
        page = await list_sessions(brouter, limit=2)
        if len(page) < 2 or page.next_cursor is None:
            return False  # the replica has not replayed the later sessions yet
        rest = await list_sessions(brouter, limit=10, after=page.next_cursor)
        return wanted <= {i.session_id for i in page} | {i.session_id for i in rest}

    assert await apoll(listed_in_two_pages, within=5)


async def test_concurrent_migrations_through_bouncers(bouncers: list[Bouncer], schema: str) -> None:
    """Several servers migrating at once through transaction-mode bouncers: the advisory lock
    is transaction-level, so each migration is applied exactly once."""
    routers = [SessionRouter(bconfig(bouncers, schema, name=f"m{i}")) for i in range(4)]
    for r in routers:
        await r.open()
    try:
        applied = await asyncio.gather(*(migrate(r) for r in routers))
        versions = await applied_migrations(routers[0])
        assert sorted(v for a in applied for v in a) == versions  # each applied once
        assert await migrate(routers[0]) == []
    finally:
        for r in routers:
            await r.close()


async def test_1000_iterations_read_your_writes_on_replicas(brouter: SessionRouter) -> None:
    """The loop that failed 976-986 times in 1000 with prepared statements on: every write is
    read back at once (read-your-writes via tokens and the replicas' replay check), and reads
    go to the replicas."""
    failures: list[str] = []

    async def worker(w: int) -> None:
        s = PostgresSession(f"loop-{w}", brouter)
        for k in range(50):
            try:
                await s.add_items([msg(f"{w}-{k}")])
                last = await s.get_items(limit=1)
                if [i["content"] for i in last] != [f"{w}-{k}"]:
                    failures.append(f"{w}-{k}: read {last}")
            except Exception as exc:
                failures.append(f"{w}-{k}: {exc!r}")

    before = brouter.stats()
    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(20)))
    took = time.monotonic() - t0
    after = brouter.stats()
    on_replicas = after["reads_on_replicas"] - before["reads_on_replicas"]
    print(f"\n1000 iterations through PgBouncer in {took:.1f}s; {on_replicas} reads on replicas")
    assert failures == []
    assert after["writes"] - before["writes"] == 1000
    assert on_replicas >= 500, after["reads"]
    assert after["connections_lost"] == before["connections_lost"]
    assert all(h.up for h in brouter.topology().hosts)


async def test_prepared_statements_on_behind_bouncer_raise_a_named_error(
    cluster: LocalCluster, schema: str
) -> None:
    """Forced on behind a transaction-mode bouncer, a prepared statement lands on a server
    connection that does not have it: the caller gets an error naming the setting."""
    (b,) = start_bouncers(_only_primary(cluster), pool_size=2)
    try:
        cfg = RouterConfig(
            hosts=[b.dsn],
            schema=schema,
            prepared_statements="on",
            primary_pool_min=1,
            primary_pool_max=1,
            check_interval=60,
            read_from_replicas=False,
        )
        async with SessionRouter(cfg) as r:
            query = "SELECT pg_backend_pid(), %s::int"
            with pytest.raises(PreparedStatementsError, match="prepared_statements") as info:
                async with await psycopg.AsyncConnection.connect(b.dsn) as other:
                    for i in range(50):
                        # prepared from the 5th run on, on the server connection it ran on
                        rows = await r.execute_read("x", None, query, (i,))
                        if i < 5:
                            continue
                        # hold that server connection (a pool of 2): the next run goes to
                        # the other one, which lacks the statement
                        for _ in range(20):
                            cur = await other.execute("SELECT pg_backend_pid()")
                            row = await cur.fetchone()
                            if row is not None and row[0] == rows[0][0]:
                                await r.execute_read("x", None, query, (i,))
                            await other.rollback()
            assert isinstance(info.value.__cause__, psycopg.Error)
            assert r.stats()["connections_lost"] == 0
    finally:
        stop_bouncers(cluster.base_dir, only=[b])


def _only_primary(cluster: LocalCluster) -> LocalCluster:
    """A view of ``cluster`` with just its primary (start_bouncers fronts every node)."""
    view = LocalCluster.load(cluster.base_dir)
    view.nodes = [view.primary]
    return view


async def test_prepared_statements_in_an_admin_block_raise_the_same_named_error(
    cluster: LocalCluster, schema: str
) -> None:
    """An admin block's connection is its own, outside the pool, and reports a lost prepared
    statement the same way a request does."""
    (b,) = start_bouncers(_only_primary(cluster), pool_size=2)
    try:
        cfg = RouterConfig(
            hosts=[b.dsn], schema=schema, prepared_statements="on", check_interval=60
        )
        async with SessionRouter(cfg) as r:
            query = "SELECT pg_backend_pid(), %s::int"
            with pytest.raises(PreparedStatementsError, match="prepared_statements") as info:
                async with (
                    r.primary_connection() as conn,
                    await psycopg.AsyncConnection.connect(b.dsn) as other,
                ):
                    for i in range(50):
                        cur = await conn.execute(query, (i,))
                        row = await cur.fetchone()
                        assert row is not None
                        if i < 5:
                            continue
                        # hold the server connection the statement was prepared on: the
                        # next run goes to the other one (a pool of 2)
                        for _ in range(20):
                            cur = await other.execute("SELECT pg_backend_pid()")
                            held = await cur.fetchone()
                            if held is not None and held[0] == row[0]:
                                await conn.execute(query, (i,))
                            await other.rollback()
            assert isinstance(info.value.__cause__, psycopg.Error)
    finally:
        stop_bouncers(cluster.base_dir, only=[b])


async def test_statement_timeout_never_leaks_through_the_bouncer(
    cluster: LocalCluster, schema: str
) -> None:
    """One server connection behind the bouncer: whatever the router did on it, another
    client through the same bouncer sees the server's own statement_timeout."""
    (b,) = start_bouncers(_only_primary(cluster), pool_size=1)
    try:
        direct = cluster.primary.execute("SHOW statement_timeout")[0][0]
        cfg = RouterConfig(hosts=[b.dsn], schema=schema, statement_timeout=7.25)
        async with SessionRouter(cfg) as r:
            await migrate(r)
            s = PostgresSession("timeout", r)
            await s.add_items([msg("x")])
            assert len(await s.get_items()) == 1
            async with r.primary_connection() as conn:
                cur = await conn.execute("SHOW statement_timeout")
                assert await cur.fetchone() == (direct,)  # the bouncer refused the options
            for _ in range(3):
                async with await psycopg.AsyncConnection.connect(b.dsn, autocommit=True) as c:
                    cur = await c.execute("SHOW statement_timeout")
                    assert await cur.fetchone() == (direct,)
                    cur = await c.execute("SHOW default_transaction_isolation")
                    assert await cur.fetchone() == ("read committed",)
    finally:
        stop_bouncers(cluster.base_dir, only=[b])


async def test_direct_connections_get_timeout_as_connect_option(
    cluster: LocalCluster, schema: str
) -> None:
    """Without a pooler the settings arrive as connect options (never SET) and auto turns
    prepared statements on."""
    cfg = RouterConfig(hosts=[cluster.primary.dsn], schema=schema, statement_timeout=7.25)
    async with SessionRouter(cfg) as r:
        async with r.primary_connection() as conn:
            cur = await conn.execute(
                "SELECT current_setting('statement_timeout'), source"
                " FROM pg_settings WHERE name = 'statement_timeout'"
            )
            assert await cur.fetchone() == ("7250ms", "client")
            assert conn.prepare_threshold == 5


async def test_malformed_probe_reply_downs_only_that_host(
    cluster: LocalCluster, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply of the wrong shape from one host (here: pg_last_wal_replay_lsn() shadowed on
    one replica's search_path) makes that host down for the check; the others are checked,
    writes keep working, and the host returns once its replies are sane."""
    cluster.primary.execute(
        f'CREATE SCHEMA IF NOT EXISTS "{schema}_evil"; '
        f'CREATE FUNCTION "{schema}_evil".pg_last_wal_replay_lsn() RETURNS text '
        "LANGUAGE sql AS $$ SELECT 'False' $$"
    )
    cluster.wait_caught_up()
    bad = cluster.replicas[0]
    evil = f"options='-c search_path={schema}_evil,pg_catalog'"
    hosts = [cluster.primary.conninfo, f"{bad.conninfo} {evil}", cluster.replicas[1].conninfo]
    caplog.set_level(logging.ERROR, logger="pgsessions")
    try:
        cfg = RouterConfig(hosts=hosts, schema=schema, check_interval=0.1, healthy_for=0.2)
        async with SessionRouter(cfg) as r:
            await migrate(r)
            states = {h.host: h for h in r.topology().hosts}
            assert not states[bad.host].up
            assert "unexpected reply" in (states[bad.host].error or "")
            assert states[cluster.primary.host].role == "primary"
            assert await apoll(lambda: _replicas_eligible(r, 1), within=10)
            await PostgresSession("w", r).add_items([msg("ok")])
            assert "health check failed" not in caplog.text
    finally:
        cluster.primary.execute(f'DROP SCHEMA "{schema}_evil" CASCADE')


async def test_probe_sql_of_the_wrong_shape_everywhere_then_recovery(
    cluster: LocalCluster, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every host answering a one-column row (what a pooler mixing up prepared statements
    returned) downs them all for those checks, and the router recovers once replies are sane:
    the primary is never left suspect."""
    cfg = RouterConfig(hosts=cluster.dsns(), schema=schema, check_interval=0.1)
    async with SessionRouter(cfg) as r:
        monkeypatch.setattr(probe, "PROBE_SQL", "SELECT 'False'")
        await r._monitor.refresh()  # a check that started after the patch
        await r._monitor.refresh()
        assert all(not h.up for h in r.topology().hosts)
        assert all("unexpected reply" in (h.error or "") for h in r.topology().hosts)
        monkeypatch.undo()
        s = PostgresSession("after", r)
        await asyncio.wait_for(migrate(r), 20)
        await asyncio.wait_for(s.add_items([msg("back")]), 20)
        assert [i["content"] for i in await s.get_items()] == ["back"]


def test_cli_up_with_pgbouncer_status_down() -> None:
    """`cluster up --pgbouncer` prints bouncer DSNs that reach the right nodes; `status` shows
    them; `down` stops them with the servers."""
    d = cluster_state_dir("pgs-bouncer-cli-")
    up = cluster_cli("up", "--dir", str(d), "--replicas", "1", "--pgbouncer", "--json", timeout=120)
    assert up.returncode == 0, up.stderr
    try:
        info = json.loads(up.stdout)
        assert set(info["pgbouncer"]) == {"node1", "node2"}
        assert info["hosts"].split(",") == [info["pgbouncer"]["node1"], info["pgbouncer"]["node2"]]
        for node, dsn in info["pgbouncer"].items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery(), pg_backend_pid()").fetchone()
                assert row is not None and row[0] == (node == "node2")
                assert row[1] != conn.info.backend_pid  # a pooler: auto leaves preparing off
        status = cluster_cli("status", "--dir", str(d), "--json", timeout=60)
        state = json.loads(status.stdout)
        assert [b["running"] for b in state["pgbouncer"]] == [True, True]
        assert {b["pool_mode"] for b in state["pgbouncer"]} == {"transaction"}
    finally:
        down = cluster_cli("down", "--dir", str(d), timeout=60)
    assert down.returncode == 0, down.stderr
    assert "stopped 2 pgbouncer" in down.stdout
    assert processes_under(d) == []
    assert not d.exists()
