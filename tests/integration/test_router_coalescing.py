"""Write coalescing (RouterConfig.coalesce_writes): batching decisions without a server, then
real servers: own outcomes, exactly once, order per session, tenants apart, a crash.

To make writes queue on purpose, two writes that wait for an advisory lock held by the test
fill the router's in-flight slots; the test polls ``stats()["writes_queued"]`` and then
releases the lock, so the queued writes go as one batch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.monitoring import serve
from pgsessions.router.coalesce import (
    MAX_IN_FLIGHT,
    Coalescer,
    Pending,
    params_bytes,
    take_batch,
)
from tests.helpers import assistant, user
from tests.integration.test_router import Store, fast_config, wait_until
from tests.monitoring_support import scrape

ClusterFactory = Callable[..., LocalCluster]


# ------------------------------------------------------------------------------ no server
def _pending(
    loop: asyncio.AbstractEventLoop, key: str, setup: Any = None, size: int = 10, name: str = ""
) -> Pending[str]:
    async def alone() -> str:
        return "alone"

    return Pending(name or key, key, "SELECT 1", None, setup, size, loop.create_future(), alone)


async def test_take_batch_bounds_count_and_bytes() -> None:
    loop = asyncio.get_running_loop()
    q = deque(_pending(loop, f"s{i:02d}") for i in range(10))
    batch = take_batch(q, max_writes=4, max_bytes=10_000)
    assert [p.key for p in batch] == ["s00", "s01", "s02", "s03"]
    assert len(q) == 6 and q[0].key == "s04"
    q = deque([_pending(loop, "a", size=60), _pending(loop, "b", size=60)])
    assert [p.key for p in take_batch(q, max_writes=10, max_bytes=100)] == ["a"]
    # a write bigger than the bound still goes, alone
    q = deque([_pending(loop, "big", size=500)])
    assert [p.key for p in take_batch(q, max_writes=10, max_bytes=100)] == ["big"]


async def test_take_batch_one_setup_per_batch_and_order_per_session() -> None:
    loop = asyncio.get_running_loop()
    t1, t2 = ("SET", ("t1",)), ("SET", ("t2",))
    q = deque(
        [
            _pending(loop, "x", t1, name="x1"),
            _pending(loop, "y", t2, name="y1"),
            _pending(loop, "y", t1, name="y2"),  # after a y write that stays: stays too
            _pending(loop, "b", t1, name="b1"),
            _pending(loop, "a", t1, name="a1"),
            _pending(loop, "a", t1, name="a2"),
        ]
    )
    batch = take_batch(q)
    # one tenant, sorted by session (lock order), a session's writes in arrival order
    assert [p.operation for p in batch] == ["a1", "a2", "b1", "x1"]
    assert all(p.sent for p in batch)
    assert [p.operation for p in q] == ["y1", "y2"]
    assert [p.operation for p in take_batch(q)] == ["y1"]
    assert [p.operation for p in take_batch(q)] == ["y2"]
    assert take_batch(q) == []


async def test_take_batch_drops_writes_whose_caller_left() -> None:
    loop = asyncio.get_running_loop()
    gone, kept = _pending(loop, "a"), _pending(loop, "b")
    gone.future.cancel()
    assert take_batch(deque([gone, kept])) == [kept]


def test_params_bytes() -> None:
    assert params_bytes(None) == 0
    assert params_bytes(("abc", b"de", ["x" * 10, "y"], 5)) == 3 + 2 + 11 + 16 + 8
    assert params_bytes({"a": "xyz"}) == 3


async def test_coalescer_lone_write_runs_at_once_and_queued_ones_go_together() -> None:
    batches: list[list[str]] = []
    withdrawn: list[str] = []

    async def run_batch(batch: list[Pending[str]]) -> None:
        batches.append([p.operation for p in batch])
        for p in batch:
            p.future.set_result(f"done {p.operation}")

    c: Coalescer[str] = Coalescer(run_batch, withdrawn.append)
    assert c.runs_alone()  # idle: a lone write never waits
    for _ in range(MAX_IN_FLIGHT - 1):
        assert c.runs_alone()
    assert not c.runs_alone()  # every slot busy: the next ones queue

    async def alone() -> str:
        raise AssertionError("not run alone")

    waiting = [
        asyncio.ensure_future(c.queued(f"w{i}", f"s{i}", "SELECT 1", None, None, alone))
        for i in range(5)
    ]
    cancelled = asyncio.ensure_future(c.queued("gone", "s9", "SELECT 1", None, None, alone))
    await wait_until(lambda: len(c.queue) == 6, 5, "six queued")
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert withdrawn == ["gone"]
    c.release()  # a slot frees: it sends what queued, as one batch
    assert await asyncio.gather(*waiting) == [f"done w{i}" for i in range(5)]
    assert batches == [[f"w{i}" for i in range(5)]]
    await wait_until(lambda: c.in_flight == MAX_IN_FLIGHT - 1, 5, "the drain slot freed")
    for _ in range(MAX_IN_FLIGHT - 1):
        c.release()
    assert c.in_flight == 0 and c.runs_alone()


# ------------------------------------------------------------------------------ servers
@dataclass
class Batches:
    """A RouterObserver that keeps the coalescing events."""

    sizes: list[tuple[int, str]] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    outcomes: list[tuple[str, str]] = field(default_factory=list)

    def on_write_batch(self, size: int, outcome: str) -> None:
        self.sizes.append((size, outcome))

    def on_batch_wait(self, operation: str, seconds: float) -> None:
        self.waits.append(seconds)

    def on_write_coalescing(self, operation: str, outcome: str) -> None:
        self.outcomes.append((operation, outcome))


LOCK = 7_310_031


@asynccontextmanager
async def slots_held(
    router: SessionRouter, primary_dsn: str, lock: int = LOCK
) -> AsyncIterator[Callable[[int], Any]]:
    """Fill the router's write slots with writes that wait for an advisory lock; yields
    ``until_queued(n)``; on exit the lock is released and the slot writes finish."""
    holder = await psycopg.AsyncConnection.connect(primary_dsn, autocommit=True)
    await holder.execute("SELECT pg_advisory_lock(%s)", (lock,))
    blockers = [
        asyncio.ensure_future(
            router.execute_write("block", f"block-{i}", "SELECT pg_advisory_xact_lock(%s)", (lock,))
        )
        for i in range(MAX_IN_FLIGHT)
    ]

    async def waiting_for_lock() -> bool:
        cur = await holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND objid = %s",
            (lock,),
        )
        row = await cur.fetchone()
        return row is not None and row[0] >= MAX_IN_FLIGHT

    await wait_until(waiting_for_lock, 10, "the slot writes waiting for the lock")

    async def until_queued(n: int) -> None:
        await wait_until(lambda: router.stats()["writes_queued"] >= n, 10, f"{n} writes queued")

    try:
        yield until_queued
    finally:
        await holder.execute("SELECT pg_advisory_unlock(%s)", (lock,))
        await holder.close()
        await asyncio.gather(*blockers)


async def test_queued_writes_share_one_transaction_each_told_its_own_result(
    router: SessionRouter, cluster: LocalCluster
) -> None:
    """Sessions adding and popping at once: one batch, each caller its own outcome and
    token, every item once, and a pop returns the item of its own session."""
    events = Batches()
    router.add_observer(events)
    await migrate(router)
    tag = uuid.uuid4().hex[:6]
    sessions = [PostgresSession(f"co-{tag}-{i}", router) for i in range(12)]
    for s in sessions:
        await s.add_items([user(f"first {s.session_id}")])
    async with slots_held(router, cluster.primary.dsn) as until_queued:
        adds = [
            asyncio.ensure_future(s.add_items([user(f"u {s.session_id}"), assistant("a")]))
            for s in sessions[:8]
        ]
        pops = [asyncio.ensure_future(s.pop_item()) for s in sessions[8:]]
        await until_queued(12)
    assert await asyncio.gather(*adds) == [None] * 8
    popped = await asyncio.gather(*pops)
    assert [p["content"] for p in popped if p is not None] == [
        f"first {s.session_id}" for s in sessions[8:]
    ]
    assert (12, "committed") in events.sizes
    assert events.outcomes.count(("add_items", "batched")) == 8
    assert events.outcomes.count(("pop_item", "batched")) == 4
    assert len(events.waits) >= 12 and all(w >= 0 for w in events.waits)
    for s in sessions[:8]:
        assert s.consistency_token is not None
        got = await PostgresSession(s.session_id, router).get_items()
        assert [i["content"] for i in got] == [f"first {s.session_id}", f"u {s.session_id}", "a"]
    for s in sessions[8:]:
        assert await s.get_items() == []
    router.remove_observer(events)


@pytest.fixture
def stacked_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ``k`` of every statement write_batch sends (execution._runs, watched): the
    number of writes stacked in it, 0 for one sent as it is."""
    from pgsessions.router import execution

    sent: list[int] = []
    runs = execution._runs

    def watched(statements: Any) -> Any:
        for query, params, k in runs(statements):
            sent.append(k)
            yield query, params, k

    monkeypatch.setattr(execution, "_runs", watched)
    return sent


async def test_a_batchs_add_items_go_as_one_statement(
    router: SessionRouter, cluster: LocalCluster, stacked_runs: list[int]
) -> None:
    """Ten sessions' add_items queued together are sent as one statement over VALUES: each
    lands once, in order, with its own token."""
    sent = stacked_runs
    await migrate(router)
    tag = uuid.uuid4().hex[:6]
    sessions = [PostgresSession(f"st-{tag}-{i}", router) for i in range(10)]
    async with slots_held(router, cluster.primary.dsn) as until_queued:
        adds = [
            asyncio.ensure_future(s.add_items([user(f"u {s.session_id}"), assistant("a")]))
            for s in sessions
        ]
        await until_queued(10)
    assert await asyncio.gather(*adds) == [None] * 10
    assert 10 in sent  # the ten as one statement
    for s in sessions:
        assert s.consistency_token is not None
        got = await PostgresSession(s.session_id, router).get_items()
        assert [i["content"] for i in got] == [f"u {s.session_id}", "a"]


async def test_a_bad_write_inside_a_stacked_statement_fails_only_its_caller(
    router: SessionRouter, cluster: LocalCluster, stacked_runs: list[int]
) -> None:
    """An add_items whose operation id is no uuid, stacked with nine good ones: the one
    statement fails, the batch rolls back, each write runs alone; the bad caller gets its
    own error and its session stays exactly as it was, the nine land once."""
    from pgsessions.sessions.items import encode_items
    from pgsessions.sessions.sql.session import statements

    sent = stacked_runs
    await migrate(router)
    sql = statements(router.config.schema)
    tag = uuid.uuid4().hex[:6]
    sessions = [PostgresSession(f"sb-{tag}-{i}", router) for i in range(9)]
    victim = PostgresSession(f"sb-{tag}-bad", router)
    await victim.add_items([user("kept")])
    enc = encode_items([user("never")])
    params = (victim.session_id, "not-a-uuid", enc.items, enc.roles, enc.types, None, False)
    async with slots_held(router, cluster.primary.dsn) as until_queued:
        good = [asyncio.ensure_future(s.add_items([user(s.session_id)])) for s in sessions]
        bad = asyncio.ensure_future(
            router.execute_write(
                "add_items",
                victim.session_id,
                sql.add_items,
                params,
                commits=True,
                retry_params=(*params[:-1], True),
                batch_query=sql.add_items_in_batch,
            )
        )
        await until_queued(10)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="uuid"):
        await bad
    assert await asyncio.gather(*good) == [None] * 9
    assert 10 in sent  # the ten went as one statement first
    for s in sessions:
        assert [i["content"] for i in await s.get_items()] == [s.session_id]
    assert [i["content"] for i in await victim.get_items()] == ["kept"]


async def test_a_failing_write_fails_only_its_caller(
    router: SessionRouter, cluster: LocalCluster
) -> None:
    """One bad statement in a batch: its caller gets its own error, the others land once
    (the batch ran each write alone), and the bad write left nothing behind."""
    events = Batches()
    router.add_observer(events)
    await migrate(router)
    tag = uuid.uuid4().hex[:6]
    sessions = [PostgresSession(f"bad-{tag}-{i}", router) for i in range(6)]
    async with slots_held(router, cluster.primary.dsn) as until_queued:
        good = [asyncio.ensure_future(s.add_items([user(s.session_id)])) for s in sessions]
        bad = asyncio.ensure_future(router.execute_write("bad", f"bad-{tag}", "SELECT 1/0"))
        await until_queued(7)
    with pytest.raises(psycopg.errors.DivisionByZero):
        await bad
    assert await asyncio.gather(*good) == [None] * 6
    for s in sessions:
        assert [i["content"] for i in await s.get_items()] == [s.session_id]
    assert (7, "failed") in events.sizes
    assert events.outcomes.count(("add_items", "fallback")) == 6
    router.remove_observer(events)


async def test_a_sessions_writes_in_one_batch_keep_their_order(
    router: SessionRouter, cluster: LocalCluster
) -> None:
    await migrate(router)
    sid = f"order-{uuid.uuid4().hex[:6]}"
    s = PostgresSession(sid, router)
    others = [PostgresSession(f"{sid}-{i}", router) for i in range(3)]
    async with slots_held(router, cluster.primary.dsn) as until_queued:
        writes = [asyncio.ensure_future(o.add_items([user("x")])) for o in others[:2]]
        writes += [asyncio.ensure_future(s.add_items([user(f"m{k}")])) for k in range(4)]
        writes.append(asyncio.ensure_future(others[2].add_items([user("y")])))
        await until_queued(7)
    await asyncio.gather(*writes)
    assert [i["content"] for i in await s.get_items()] == ["m0", "m1", "m2", "m3"]


@pytest.mark.owner_sql  # creates a table of its own
async def test_writes_of_different_tenants_never_share_a_transaction(
    router: SessionRouter, cluster: LocalCluster, schema: str
) -> None:
    """Each write records the setting its setup made and the transaction it ran in: every
    write saw its own tenant, and no transaction held two tenants."""
    table = f'"{schema}".seen'
    async with router.primary_connection() as conn:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f"CREATE TABLE {table} (want text, got text, xid xid8)")
    insert = f"INSERT INTO {table} VALUES (%s, current_setting('pgs.tenant'), pg_current_xact_id())"
    events = Batches()
    router.add_observer(events)
    async with slots_held(router, cluster.primary.dsn) as until_queued:
        writes = [
            asyncio.ensure_future(
                router.execute_write(
                    "w",
                    f"s{i}",
                    insert,
                    (f"t{i % 3}",),
                    setup=("SELECT set_config('pgs.tenant', %s, true)", (f"t{i % 3}",)),
                )
            )
            for i in range(12)
        ]
        await until_queued(12)
    await asyncio.gather(*writes)
    router.remove_observer(events)
    async with router.primary_connection() as conn:
        cur = await conn.execute(f"SELECT want, got, xid::text FROM {table}")
        rows = await cur.fetchall()
    assert len(rows) == 12
    assert all(want == got for want, got, _ in rows)
    tenants_per_xact: dict[str, set[str]] = {}
    for want, _, xid in rows:
        tenants_per_xact.setdefault(xid, set()).add(want)
    assert all(len(t) == 1 for t in tenants_per_xact.values())
    assert sorted(n for n, outcome in events.sizes if outcome == "committed") == [4, 4, 4]


@pytest.mark.owner_sql  # creates a table of its own
async def test_a_caller_cancelled_while_queued_is_never_applied(
    router: SessionRouter, cluster: LocalCluster, schema: str
) -> None:
    store = Store(schema)
    await store.create(router)
    events = Batches()
    router.add_observer(events)
    async with slots_held(router, cluster.primary.dsn) as until_queued:
        kept = asyncio.ensure_future(store.add(router, "c1", op_id="kept"))
        gone = asyncio.ensure_future(store.add(router, "c2", op_id="gone"))
        await until_queued(2)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
    await kept
    assert await store.get(router, "c1") == ["kept"]
    assert await store.get(router, "c2") == []
    assert ("add_items", "withdrawn") in events.outcomes
    router.remove_observer(events)


@pytest.mark.owner_sql  # creates a table of its own
async def test_metrics_count_batches_waits_and_outcomes(
    router: SessionRouter, cluster: LocalCluster, schema: str
) -> None:
    store = Store(schema)
    await store.create(router)
    with serve(router, port=0, registry=CollectorRegistry()) as server:
        await store.add(router, "m0")  # alone
        async with slots_held(router, cluster.primary.dsn) as until_queued:
            writes = [asyncio.ensure_future(store.add(router, f"m{i}")) for i in range(1, 6)]
            await until_queued(5)
        await asyncio.gather(*writes)
        result = await scrape(server.url)
    assert result.value("pgsessions_write_batch_size_count") == 1
    assert result.value("pgsessions_write_batch_size_sum") == 5
    assert result.value("pgsessions_write_batches_total", outcome="committed") == 1
    assert result.value("pgsessions_write_batch_wait_seconds_count", operation="add_items") == 5
    done = result.value(
        "pgsessions_coalesced_writes_total", operation="add_items", outcome="batched"
    )
    assert done == 5
    alone = result.value(
        "pgsessions_coalesced_writes_total", operation="add_items", outcome="alone"
    )
    assert alone == 1


@pytest.mark.owner_sql  # creates a table of its own
async def test_a_lone_write_runs_at_once(router: SessionRouter, schema: str) -> None:
    store = Store(schema)
    await store.create(router)
    events = Batches()
    router.add_observer(events)
    for i in range(5):
        await store.add(router, "lone", op_id=f"op{i}")
    router.remove_observer(events)
    assert events.outcomes == [("add_items", "alone")] * 5
    assert events.sizes == [] and events.waits == []


@pytest.mark.owner_sql  # creates a table of its own
async def test_coalescing_off_sends_every_write_alone(
    router_config: RouterConfig, cluster: LocalCluster, schema: str
) -> None:
    cfg = RouterConfig(
        hosts=list(router_config.hosts), schema=schema, check_interval=0.1, coalesce_writes=False
    )
    store = Store(schema)
    async with SessionRouter(cfg) as r:
        await store.create(r)
        events = Batches()
        r.add_observer(events)
        await asyncio.gather(*(store.add(r, f"off{i}") for i in range(20)))
        assert events.outcomes == [] and events.sizes == []
        assert r.stats()["writes_queued"] == 0


async def test_primary_crash_mid_batch_loses_and_duplicates_nothing(
    cluster_factory: ClusterFactory,
) -> None:
    """40 sessions add at once (batches of many writes) while the primary crashes and a
    replica is promoted: every acknowledged add is stored once, in order; none is lost."""
    c = await asyncio.to_thread(cluster_factory, replicas=2, sync=True)
    schema = f"t_{uuid.uuid4().hex[:10]}"
    events = Batches()
    async with SessionRouter(fast_config(c.dsns(), schema, failover_timeout=30.0)) as r:
        await migrate(r)
        r.add_observer(events)
        stop: list[bool] = []
        acked: dict[str, list[str]] = {}
        failures: list[str] = []
        done: list[float] = []

        async def writer(n: int) -> None:
            sid = f"crash-{n:02d}"
            s = PostgresSession(sid, r)
            mine = acked.setdefault(sid, [])
            k = 0
            while not stop:
                text = f"{sid}-{k}"
                try:
                    await s.add_items([user(text)])
                except Exception as exc:
                    failures.append(f"{sid}: add {k} failed: {exc!r}")
                    return
                mine.append(text)
                done.append(time.monotonic())
                k += 1

        tasks = [asyncio.create_task(writer(n)) for n in range(40)]
        await wait_until(lambda: len(done) > 400, 30, "load")
        old = c.primary
        await asyncio.to_thread(c.stop_node, old, "immediate")
        lsns = {
            n.name: n.execute("SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn")[0][0]
            for n in c.replicas
        }
        new = max(c.replicas, key=lambda n: lsns[n.name])
        await asyncio.to_thread(c.promote, new)
        t_promoted = time.monotonic()
        await wait_until(lambda: any(t > t_promoted for t in done), 30, "a write after")
        for other in c.replicas:
            if other.name not in (new.name, old.name):
                await asyncio.to_thread(c.follow, other, new)
        n_now = len(done)
        await wait_until(lambda: len(done) > n_now + 200, 30, "load on the new primary")
        stop.append(True)
        await asyncio.gather(*tasks)
        assert not failures, failures[:5]
        assert any(size > 1 for size, _ in events.sizes), "no batch was formed"
        for sid, mine in acked.items():
            rows = new.execute(
                f"SELECT item->>'content' FROM \"{schema}\".messages"
                " WHERE session_id = %s ORDER BY seq",
                (sid,),
            )
            assert [row[0] for row in rows] == mine, sid
        print(
            f"\nwrites {sum(map(len, acked.values()))}; batches "
            f"{sum(1 for size, _ in events.sizes if size > 1)}; outcomes "
            f"{ {o: sum(1 for _, x in events.outcomes if x == o) for _, o in events.outcomes} }"
        )
