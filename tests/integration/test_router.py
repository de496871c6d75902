"""SessionRouter on the shared healthy cluster: routing, read-your-writes, tokens, lifecycle.

The statements are the tests' own tiny idempotent SQL (an op-id unique key with
``ON CONFLICT DO NOTHING``), so these tests show the router alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pgsessions.devcluster import LocalCluster, Node
from pgsessions.router import RouterConfig, RouterError, SessionRouter
from pgsessions.router.lsn import parse_lsn


# --------------------------------------------------------------------------- helpers
class Store:
    """A tiny idempotent store: items(session_id, op_id unique, seq) and one-shot pops."""

    def __init__(self, schema: str) -> None:
        self.s = schema

    def ddl(self) -> str:
        s = self.s
        return (
            f'CREATE SCHEMA IF NOT EXISTS "{s}"; '
            f'CREATE TABLE IF NOT EXISTS "{s}".items (seq bigserial PRIMARY KEY, '
            "session_id text NOT NULL, op_id text NOT NULL UNIQUE, payload text); "
            f'CREATE TABLE IF NOT EXISTS "{s}".pops (op_id text PRIMARY KEY, item text)'
        )

    async def create(self, router: SessionRouter) -> None:
        async with router.primary_connection() as conn:
            await conn.execute(self.ddl())

    async def add(
        self, router: SessionRouter, session_id: str, op_id: str | None = None, payload: str = ""
    ) -> tuple[str, str]:
        """Add one item; returns (op_id, token)."""
        op_id = op_id or uuid.uuid4().hex
        _, token = await router.execute_write(
            "add_items",
            session_id,
            f'INSERT INTO "{self.s}".items (session_id, op_id, payload) VALUES (%s, %s, %s) '
            "ON CONFLICT (op_id) DO NOTHING",
            (session_id, op_id, payload),
        )
        return op_id, token

    async def get(
        self, router: SessionRouter, session_id: str | None, token: str | None = None, sid: str = ""
    ) -> list[str]:
        rows = await router.execute_read(
            "get_items",
            session_id,
            f'SELECT op_id FROM "{self.s}".items WHERE session_id = %s ORDER BY seq',
            (session_id if session_id is not None else sid,),
            token=token,
        )
        return [r[0] for r in rows]

    async def pop(self, router: SessionRouter, session_id: str, op_id: str) -> str | None:
        """Remove the newest item of the session once per op_id; a replay returns the same."""
        s = self.s
        rows, _ = await router.execute_write(
            "pop_item",
            session_id,
            f"""
            WITH done AS (SELECT item FROM "{s}".pops WHERE op_id = %(op)s),
            victim AS (
                DELETE FROM "{s}".items WHERE seq = (
                    SELECT max(seq) FROM "{s}".items WHERE session_id = %(sid)s
                ) AND NOT EXISTS (SELECT 1 FROM done)
                RETURNING op_id
            ),
            logged AS (
                INSERT INTO "{s}".pops (op_id, item) SELECT %(op)s, op_id FROM victim
                RETURNING item
            )
            SELECT item FROM done UNION ALL SELECT item FROM logged
            """,
            {"op": op_id, "sid": session_id},
        )
        return rows[0][0] if rows else None


async def wait_until(condition: Any, within: float, what: str, interval: float = 0.02) -> None:
    """Poll ``condition()`` (sync or async) until true; fail the test naming ``what``."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def eligible(router: SessionRouter) -> set[str]:
    return {h.host for h in router.topology().eligible()}


def fast_config(hosts: list[str], schema: str, **kw: Any) -> RouterConfig:
    base: dict[str, Any] = {
        "hosts": hosts,
        "schema": schema,
        "check_interval": 0.1,
        "healthy_for": 0.5,
        "failover_timeout": 20.0,
        "connect_timeout": 1.0,
        "statement_timeout": 3.0,
        "catch_up_wait": 0.05,
    }
    base.update(kw)
    return RouterConfig(**base)


@pytest.fixture
def store(schema: str) -> Store:
    return Store(schema)


@pytest.fixture
async def rtr(cluster: LocalCluster, schema: str, store: Store) -> AsyncIterator[SessionRouter]:
    async with SessionRouter(fast_config(cluster.dsns(), schema)) as r:
        await store.create(r)
        await asyncio.to_thread(cluster.wait_caught_up)
        yield r


@pytest.fixture
def paused_replicas(cluster: LocalCluster) -> Iterator[list[Node]]:
    """Pause replay on every replica of the shared cluster; resumed afterwards whatever happens."""
    paused: list[Node] = []
    try:
        for r in cluster.replicas:
            cluster.pause_replay(r)
            paused.append(r)
        yield paused
    finally:
        for r in paused:
            cluster.resume_replay(r)


# --------------------------------------------------------------------------- tests
async def test_steady_state_reads_run_on_replicas(rtr: SessionRouter, store: Store) -> None:
    """(1) Replicas caught up, think time between turns: >= 95% of get_items on replicas."""
    await wait_until(lambda: len(eligible(rtr)) == 2, 10, "both replicas eligible")

    async def conversation(n: int) -> None:
        sid = f"steady-{n}-{uuid.uuid4().hex[:6]}"
        mine: list[str] = []
        for _turn in range(6):
            assert await store.get(rtr, sid) == mine  # read history, then write the turn
            op, _ = await store.add(rtr, sid)
            mine.append(op)
            await asyncio.sleep(random.uniform(0.02, 0.08))  # think time
        assert await store.get(rtr, sid) == mine

    before = rtr.stats()
    await asyncio.gather(*(conversation(n) for n in range(10)))
    after = rtr.stats()
    total = after["reads_total"] - before["reads_total"]
    on_replicas = after["reads_on_replicas"] - before["reads_on_replicas"]
    share = on_replicas / total
    print(f"\nreads on replicas: {on_replicas}/{total} = {share:.1%}; by route {after['reads']}")
    assert total == 70
    assert share >= 0.95, after["reads"]
    hosts = after["reads_by_host"]
    replica_hosts = [h.host for h in rtr.topology().replicas()]
    assert all(hosts[h] > 0 for h in replica_hosts), hosts  # both replicas share the load


async def test_paused_replay_reads_own_write_from_primary_then_back(
    rtr: SessionRouter, store: Store, cluster: LocalCluster, paused_replicas: list[Node]
) -> None:
    """(2) Every replica paused: the read right after a write returns it (from the primary);
    after resume and catch-up, reads go back to the replicas."""
    sid = f"paused-{uuid.uuid4().hex[:6]}"
    op, _ = await store.add(rtr, sid)
    before = rtr.stats()["reads"]
    assert await store.get(rtr, sid) == [op]
    after = rtr.stats()["reads"]
    assert after.get("primary", {}).get("token_ahead", 0) == (
        before.get("primary", {}).get("token_ahead", 0) + 1
    ), after
    for r in paused_replicas:  # the replicas really do not have it
        rows = r.execute(f'SELECT count(*) FROM "{store.s}".items WHERE session_id = %s', (sid,))
        assert rows[0][0] == 0

    for r in paused_replicas:
        await asyncio.to_thread(cluster.resume_replay, r)
    await asyncio.to_thread(cluster.wait_caught_up)
    await wait_until(lambda: len(eligible(rtr)) == 2, 10, "replicas back in rotation")
    token = parse_lsn(rtr.token_for(sid) or "0/0")
    await wait_until(
        lambda: all((h.replay_lsn or 0) >= token for h in rtr.topology().replicas()),
        10,
        "the monitor to see the replicas past the token",
    )
    n0 = rtr.stats()["reads_on_replicas"]
    for _ in range(5):
        assert await store.get(rtr, sid) == [op]
    assert rtr.stats()["reads_on_replicas"] == n0 + 5


async def test_a_replay_check_lets_later_reads_skip_it(
    cluster: LocalCluster, schema: str, store: Store
) -> None:
    """A read that checked a replica's replay position teaches the router that position: the
    next read needing no more goes straight to a replica, before any monitor check."""
    config = fast_config(cluster.dsns(), schema, check_interval=60.0)
    async with SessionRouter(config) as r:
        await store.create(r)
        await asyncio.to_thread(cluster.wait_caught_up)
        await r._monitor.refresh()  # the last check before the write
        sid = f"learn-{uuid.uuid4().hex[:6]}"
        op, _ = await store.add(r, sid)
        before = r.stats()["reads"].get("replica", {})
        assert await store.get(r, sid) == [op]
        mid = r.stats()["reads"].get("replica", {})
        # the monitor has not seen the write replayed: the first read checked (and waited)
        assert mid.get("caught_up_wait", 0) == before.get("caught_up_wait", 0) + 1, mid
        for _ in range(3):
            assert await store.get(r, sid) == [op]
        after = r.stats()["reads"].get("replica", {})
        assert after.get("replica", 0) == mid.get("replica", 0) + 3, after
        assert after.get("caught_up_wait", 0) == mid.get("caught_up_wait", 0)


async def test_a_read_reporting_its_replay_position_lets_later_reads_skip_the_check(
    cluster: LocalCluster, schema: str, store: Store
) -> None:
    """A read without a replay check that returns its replica's replay position (the last
    column, ``replay_column=True``) teaches the router that position too: another session's
    read of a write replayed before it goes straight to that replica. Without the column the
    same read would check first (``caught_up_wait``)."""
    config = fast_config(cluster.dsns(), schema, check_interval=60.0)
    query = (
        f'SELECT count(*), pg_last_wal_replay_lsn()::text FROM "{schema}".items'
        " WHERE session_id = %s"
    )

    async def count(r: SessionRouter, sid: str, replay_column: bool) -> int:
        rows = await r.execute_read("get_items", sid, query, (sid,), replay_column=replay_column)
        return int(rows[0][0])

    for replay_column in (False, True):
        async with SessionRouter(config) as r:
            await store.create(r)  # raises the read floor past the monitor's positions
            other = f"other-{uuid.uuid4().hex[:6]}"
            await count(r, other, replay_column)  # checks once: learns the floor is replayed
            sid = f"learn-col-{uuid.uuid4().hex[:6]}"
            _, token = await store.add(r, sid)
            await asyncio.to_thread(cluster.wait_caught_up)
            replicas = [h for h in r._host_list if h.role == "replica"]
            assert all(h.replay_lsn < parse_lsn(token) for h in replicas)  # not known yet
            before = dict(r.stats()["reads"].get("replica", {}))
            for _ in range(2):  # both replicas (least in flight, then the other)
                assert await count(r, other, replay_column) == 0
            mid = r.stats()["reads"].get("replica", {})
            assert mid.get("replica", 0) == before.get("replica", 0) + 2, (replay_column, mid)
            assert await count(r, sid, replay_column) == 1  # read-your-writes either way
            after = r.stats()["reads"].get("replica", {})
            checked = after.get("caught_up_wait", 0) - mid.get("caught_up_wait", 0)
            assert checked == (0 if replay_column else 1), (replay_column, after)


async def test_session_without_token_reads_no_older_than_previous_check(
    cluster: LocalCluster, schema: str, store: Store, rtr: SessionRouter
) -> None:
    """(3) Router B has no token: after one check interval its read sees A's write."""
    sid = f"notoken-{uuid.uuid4().hex[:6]}"
    async with SessionRouter(fast_config(cluster.dsns(), schema, name="b")) as b:
        for i in range(10):
            op, _ = await store.add(rtr, sid, payload=str(i))
            # wait until router B has completed a check that started after the write
            done = b.topology().checked_at
            await wait_until(lambda done=done: b.topology().checked_at > done, 5, "a check")
            done = b.topology().checked_at
            await wait_until(lambda done=done: b.topology().checked_at > done, 5, "a check")
            assert b.token_for(sid) is None
            got = await store.get(b, sid)
            assert got and got[-1] == op, (i, got)
        reads = b.stats()["reads"]
        assert sum(reads.get("replica", {}).values()) >= 5, reads


async def test_token_handover_between_routers_with_replicas_paused(
    cluster: LocalCluster,
    schema: str,
    store: Store,
    rtr: SessionRouter,
    paused_replicas: list[Node],
) -> None:
    """(4) Write through A, read through B (its own pools) with A's token: never stale."""
    async with SessionRouter(fast_config(cluster.dsns(), schema, name="b")) as b:
        for i in range(5):
            sid = f"handover-{i}-{uuid.uuid4().hex[:6]}"
            op, token = await store.add(rtr, sid)
            assert rtr.token_for(sid) == token
            assert await store.get(b, sid, token=token) == [op]
            # without the token B may serve a replica's older state: that is the point
        reads = b.stats()["reads"]
        assert reads.get("primary", {}).get("token_ahead", 0) == 5, reads


async def test_close_returns_promptly_with_requests_in_flight(
    cluster: LocalCluster, schema: str, store: Store, rtr: SessionRouter
) -> None:
    """close() while reads and writes run: it returns at once, every call ends."""
    for attempt in range(20):
        r = SessionRouter(fast_config(cluster.dsns(), schema, name=f"c{attempt}"))
        await r.open()
        sid = f"close-{attempt}"
        stop: list[bool] = []

        async def worker(r: SessionRouter = r, sid: str = sid, stop: list[bool] = stop) -> None:
            while not stop:
                await store.add(r, sid)
                await store.get(r, sid)

        tasks = [asyncio.create_task(worker()) for _ in range(4)]
        await asyncio.sleep(random.uniform(0.01, 0.05))
        t0 = time.monotonic()
        await r.close()
        took = time.monotonic() - t0
        stop.append(True)
        assert took < 2.5, f"close took {took:.2f}s"
        _done, pending = await asyncio.wait(tasks, timeout=5)
        assert not pending, "a call hung after close()"
        for t in tasks:  # calls caught by close() end with a router error, never hang
            exc = t.exception()
            assert exc is None or isinstance(exc, RouterError), repr(exc)
        assert r.closed and not r._monitor.tasks()


async def test_data_and_constraint_errors_are_not_retried(rtr: SessionRouter) -> None:
    import psycopg

    with pytest.raises(psycopg.errors.DivisionByZero):
        await rtr.execute_write("x", "s", "SELECT 1/0")
    with pytest.raises(psycopg.errors.UndefinedTable):
        await rtr.execute_read("x", "s", "SELECT * FROM no_such_table")
    assert rtr.stats()["retries"] == {}
    # the connection went back clean: the next write works
    rows, _ = await rtr.execute_write("x", "s", "SELECT 42")
    assert rows == [(42,)]


async def test_read_your_writes_reads_spread_over_level_replicas(
    cluster: LocalCluster, rtr: SessionRouter, store: Store
) -> None:
    """Right after a write every read waits for a replica to catch up; when the replicas
    were level at the last check, those reads must not all go to the same one."""

    def level_at(lsn: int) -> bool:
        seen = {h.replay_lsn for h in rtr.topology().replicas()}
        return len(seen) == 1 and (seen.pop() or 0) >= lsn

    before = dict(rtr.stats()["reads_by_host"])
    token = "0/0"
    for i in range(40):
        # the monitor last saw both replicas at the same position...
        lsn = parse_lsn(token)
        await wait_until(lambda lsn=lsn: level_at(lsn), 10, "replicas level")
        # ...and this write is ahead of that: the read waits on one of them
        op, token = await store.add(rtr, f"spread-{i}")
        assert await store.get(rtr, f"spread-{i}") == [op]
    assert rtr.stats()["reads"]["replica"].get("caught_up_wait", 0) > 0
    served = {
        r.host: rtr.stats()["reads_by_host"][r.host] - before.get(r.host, 0)
        for r in cluster.replicas
    }
    assert all(n > 0 for n in served.values()), served


async def test_a_read_right_after_ddl_waits_instead_of_failing(
    rtr: SessionRouter, schema: str, paused_replicas: list[Node]
) -> None:
    """The replay check and the query travel together: a replica that has not replayed the
    CREATE TABLE yet answers 'no such table', and that must mean 'wait', not an error."""
    for i in range(3):
        table = f'"{schema}".fresh_{i}'
        _, token = await rtr.execute_write("ddl", "ddl", f"CREATE TABLE {table} AS SELECT {i} v")
        rows = await rtr.execute_read("read", None, f"SELECT v FROM {table}", token=token)
        assert rows == [(i,)]
    stats = rtr.stats()
    assert stats["read_errors"] == 0
    assert stats["reads"] == {"primary": {"token_ahead": 3}}  # replicas paused: after the wait


async def test_pools_pin_read_committed_whatever_the_server_default(
    cluster: LocalCluster, schema: str
) -> None:
    """A waiting read trusts each statement to take its own snapshot: the pools set read
    committed even when the role or server defaults to repeatable read."""
    rr = "options='-c default_transaction_isolation=repeatable\\\\ read'"  # libpq unescapes once
    hosts = [f"{n.conninfo} {rr}" for n in cluster.nodes]
    async with SessionRouter(fast_config(hosts, schema)) as r:
        async with r.primary_connection() as conn:
            cur = await conn.execute("SHOW transaction_isolation")
            assert await cur.fetchone() == ("read committed",)
        await wait_until(lambda: len(r.topology().replicas()) == 2, 10, "replicas seen")
        rows = await r.execute_read("x", None, "SHOW transaction_isolation")
        assert rows == [("read committed",)]
        assert r.stats()["reads_on_replicas"] == 1


async def test_a_committing_call_returns_its_rows_and_token(rtr: SessionRouter) -> None:
    """commits=True: a procedure commits itself and returns the token as its last column;
    a statement that does not is refused with an error naming what is missing."""
    import psycopg

    schema = f"call_{uuid.uuid4().hex[:8]}"
    async with rtr.primary_connection() as conn:
        await conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (x int)")
        await conn.execute(
            f"CREATE PROCEDURE {schema}.put(p int, INOUT n bigint DEFAULT NULL,"
            " INOUT token text DEFAULT NULL) LANGUAGE plpgsql AS $$ BEGIN"
            f" INSERT INTO {schema}.t VALUES (p); n := (SELECT count(*) FROM {schema}.t);"
            " COMMIT; token := pg_current_wal_flush_lsn()::text; END $$"
        )
    try:
        rows, token = await rtr.execute_write(
            "put", "call-s", f"CALL {schema}.put(%s)", (7,), commits=True
        )
        assert rows == [(1,)]
        assert rtr.token_for("call-s") == token
        async with rtr.primary_connection() as conn:
            cur = await conn.execute(
                "SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn, txid_current_if_assigned()",
                (token,),
            )
            assert await cur.fetchone() == (True, None)  # committed, no transaction left open
        with pytest.raises(psycopg.ProgrammingError, match="WAL flush position"):
            await rtr.execute_write("x", "s", "SELECT 42", commits=True)
        assert rtr.stats()["retries"] == {}
    finally:
        async with rtr.primary_connection() as conn:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")


async def test_token_is_taken_after_commit(rtr: SessionRouter, store: Store) -> None:
    """The token covers the commit record: flush position read after COMMIT, same trip."""
    sid = f"tok-{uuid.uuid4().hex[:6]}"
    rows, token = await rtr.execute_write(
        "probe", sid, "SELECT pg_current_wal_insert_lsn()::text, txid_current()"
    )
    inside_lsn, xid = rows[0]
    assert parse_lsn(token) >= parse_lsn(inside_lsn)
    async with rtr.primary_connection() as conn:
        cur = await conn.execute("SELECT txid_status(%s)", (xid,))
        assert (await cur.fetchone()) == ("committed",)
    assert rtr.token_for(sid) == token


def test_status_command_prints_the_topology(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from pgsessions.cli import main

    hosts = ",".join(cluster.dsns())
    assert main(["status", "--hosts", hosts, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["primary"] == cluster.primary.host
    roles = {h["host"]: h["role"] for h in data["hosts"]}
    assert roles == {
        cluster.primary.host: "primary",
        **{r.host: "replica" for r in cluster.replicas},
    }
    assert main(["status", "--hosts", *cluster.dsns()]) == 0  # several values, same thing
    out = capsys.readouterr().out
    assert "lag bytes" in out and cluster.replicas[0].host in out
    assert "postgres@" not in out  # hosts as host:port, never a DSN


async def test_observer_errors_never_break_a_request(rtr: SessionRouter, store: Store) -> None:
    class Broken:
        def __getattr__(self, name: str) -> Any:
            def boom(*args: Any) -> None:
                raise RuntimeError(name)

            return boom

    rtr.add_observer(Broken())  # type: ignore[arg-type]
    op, _ = await store.add(rtr, "obs")
    assert await store.get(rtr, "obs") == [op]


async def test_drills_token_ignoring_router_reads_stale(
    cluster: LocalCluster,
    schema: str,
    store: Store,
    rtr: SessionRouter,
    paused_replicas: list[Node],
) -> None:
    """The drills' deliberately broken router (not a public setting): a paused replica serves
    a session's read without its own write (the safe router above never does)."""
    from pgsessions.drills.broken import TokenIgnoringRouter

    assert "unsafe_skip_token_check" not in {f.name for f in dataclasses.fields(RouterConfig)}
    async with TokenIgnoringRouter(fast_config(cluster.dsns(), schema, name="unsafe")) as bad:
        sid = f"unsafe-{uuid.uuid4().hex[:6]}"
        op, _ = await store.add(bad, sid)
        assert await store.get(bad, sid) == []  # stale: the write is not on the replicas
        assert await store.get(rtr, sid, token=bad.token_for(sid)) == [op]


@pytest.mark.parametrize("policy", ["primary", "wait", "error"])
async def test_no_replica_policy(
    cluster: LocalCluster, schema: str, store: Store, policy: str
) -> None:
    """No replica at all: read the primary, or wait (then raise), or raise at once."""
    from pgsessions.router import NoEligibleReplicaError

    cfg = fast_config(
        [cluster.primary.dsn], schema, name="solo", no_replica_policy=policy, failover_timeout=0.5
    )
    async with SessionRouter(cfg) as solo:
        await store.create(solo)
        op, _ = await store.add(solo, "solo")
        if policy == "primary":
            assert await store.get(solo, "solo") == [op]
            assert solo.stats()["reads"] == {"primary": {"no_eligible_replica": 1}}
            return
        t0 = time.monotonic()
        with pytest.raises(NoEligibleReplicaError):
            await store.get(solo, "solo")
        took = time.monotonic() - t0
        assert (took >= 0.5) if policy == "wait" else (took < 0.5)


def test_write_on_a_standby_is_classified_read_only(cluster: LocalCluster, schema: str) -> None:
    """25006 from a real standby: a write there is retried after rediscovery (reason
    ``read_only``); the same SQLSTATE on a read is not a failover and is not retried."""
    import psycopg

    from pgsessions.router.classify import READ_ONLY, classify

    with psycopg.connect(cluster.replicas[0].dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
            conn.execute(f'CREATE SCHEMA "{schema}_standby"')
    assert info.value.sqlstate == "25006"
    assert classify(info.value, write=True) == READ_ONLY
    assert classify(info.value, write=False) is None


def test_status_watch_refreshes_until_interrupted(cluster: LocalCluster) -> None:
    """`pgsessions status --watch --json` prints one snapshot per interval (8 of them span
    >= 1.4 s, checks run every 0.5 s) and ends cleanly on Ctrl-C (SIGINT)."""
    import json
    import signal
    import subprocess
    import sys

    # -X faulthandler: if it hangs, SIGABRT makes it print every thread's stack
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pgsessions.cli", "status", "--watch"]
    hosts = ",".join(cluster.dsns())
    proc = subprocess.Popen(
        [*cmd, "--json", "--interval", "0.2", "--hosts", hosts],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background (`cmd &` without job control) ignores SIGINT,
        # and an ignored signal stays ignored in children: Ctrl-C would never reach it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        snaps = [json.loads(proc.stdout.readline()) for _ in range(8)]
        assert all(s["primary"] == cluster.primary.host for s in snaps)
        assert len({s["checked_at"] for s in snaps}) >= 2, "the snapshots never refreshed"
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, err = proc.communicate(timeout=10)
            more = out.count("\n")
            pytest.fail(f"still running 30 s after SIGINT ({more} more snapshots): {err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err


def test_monitor_role_needs_pg_monitor(cluster: LocalCluster) -> None:
    """What the README says about permissions: without pg_monitor PostgreSQL hides the
    walreceiver status (so the router never sees the replica streaming); with it, it shows."""
    import psycopg

    role = f"mon_{uuid.uuid4().hex[:8]}"
    cluster.primary.execute(f"CREATE ROLE {role} LOGIN")
    try:
        cluster.wait_caught_up()
        replica = cluster.replicas[0]
        dsn = replica.dsn.replace("postgres@", f"{role}@")
        q = "SELECT status FROM pg_stat_wal_receiver"
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(q).fetchall() == [(None,)]
        cluster.primary.execute(f"GRANT pg_monitor TO {role}")
        cluster.wait_caught_up()
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute(q).fetchall() == [("streaming",)]
    finally:
        cluster.primary.execute(f"DROP ROLE {role}")
