"""Read coalescing (RouterConfig.coalesce_reads) on real servers with real replicas: reads
that start together share a round trip, each sees its own session's writes, gets its own
rows or its own error, and tenants' settings never cross.

``asyncio.gather`` starts its reads in the same loop step: the moment a coalesced write
batch creates, when every writer of the batch reads its history at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.monitoring import instrument, serve
from pgsessions.router import ShardedRouter
from tests.helpers import user
from tests.integration.test_router import Store, fast_config, wait_until
from tests.monitoring_support import scrape


@pytest.fixture
def store(schema: str) -> Store:
    return Store(schema)


@pytest.fixture
async def rtr(cluster: LocalCluster, schema: str, store: Store) -> AsyncIterator[SessionRouter]:
    async with SessionRouter(fast_config(cluster.dsns(), schema)) as r:
        await store.create(r)
        await asyncio.to_thread(cluster.wait_caught_up)
        yield r


@pytest.mark.owner_sql  # creates a table of its own
async def test_reads_started_together_share_a_round_trip_and_see_their_writes(
    rtr: SessionRouter, store: Store, cluster: LocalCluster
) -> None:
    tag = uuid.uuid4().hex[:6]
    sids = [f"rg-{tag}-{i}" for i in range(12)]
    for _ in range(3):
        ops = await asyncio.gather(*(store.add(rtr, sid) for sid in sids))
        # a replica behind the writes (a loaded machine) sends some reads to the primary,
        # alone: caught up, all 12 wait for replicas at once
        await asyncio.to_thread(cluster.wait_caught_up)
        groups0, grouped0 = rtr.stats()["read_groups"], rtr.stats()["reads_grouped"]
        got = await asyncio.gather(*(store.get(rtr, sid) for sid in sids))
        # read-your-writes: each read ends with its own session's newest write
        assert [g[-1] for g in got] == [op for op, _ in ops]
        st = rtr.stats()
        assert st["read_groups"] > groups0
        assert st["reads_grouped"] >= grouped0 + 2
    assert [len(g) for g in got] == [3] * 12
    assert st["reads_on_replicas"] == st["reads_total"]


@pytest.mark.owner_sql  # creates a table of its own
async def test_metrics_count_groups_waits_and_outcomes(
    rtr: SessionRouter, store: Store, cluster: LocalCluster
) -> None:
    """Replicas caught up: 12 reads started together are grouped (one group per replica
    they went to, or alone), one read on its own is alone; the metrics agree with stats()."""
    sids = [f"rm-{uuid.uuid4().hex[:6]}-{i}" for i in range(12)]
    with serve(rtr, port=0, registry=CollectorRegistry()) as server:
        ops = await asyncio.gather(*(store.add(rtr, sid) for sid in sids))
        await asyncio.to_thread(cluster.wait_caught_up)
        assert await store.get(rtr, sids[0]) == [ops[0][0]]  # alone
        got = await asyncio.gather(*(store.get(rtr, sid) for sid in sids))
        assert got == [[op] for op, _ in ops]
        st = rtr.stats()
        result = await scrape(server.url)
    groups, grouped = st["read_groups"], st["reads_grouped"]
    assert groups >= 1 and grouped >= 2
    assert result.value("pgsessions_read_group_size_count") == groups
    assert result.value("pgsessions_read_group_size_sum") == grouped
    assert result.value("pgsessions_read_groups_total", outcome="served") == groups
    assert result.value("pgsessions_read_groups_total", outcome="failed") is None
    waits = result.value("pgsessions_read_group_wait_seconds_count", operation="get_items")
    assert waits == grouped
    outcome = {
        o: result.value("pgsessions_coalesced_reads_total", operation="get_items", outcome=o)
        for o in ("alone", "grouped", "uncovered", "fallback", "withdrawn")
    }
    assert outcome["grouped"] == grouped
    assert outcome["alone"] is not None and outcome["alone"] + grouped == 13
    assert outcome["uncovered"] is None and outcome["fallback"] is None
    assert outcome["withdrawn"] is None
    # a SessionRouter's series: router label only, no shard label
    allowed = {"router", "operation", "outcome"}
    for name in ("pgsessions_read_group_size_count", "pgsessions_coalesced_reads_total"):
        assert all(set(s.labels) <= allowed for s in result.samples(name))


@pytest.mark.owner_sql  # migrates a schema of its own
async def test_a_sharded_routers_read_group_series_carry_the_shard(
    cluster: LocalCluster, schema: str
) -> None:
    """A ShardedRouter's shard reports its read groups with ``shard=<name>`` beside
    ``router``, and its counts agree with the shard's own stats()."""
    registry = CollectorRegistry()
    tag = uuid.uuid4().hex[:6]
    async with ShardedRouter({"s1": fast_config(cluster.dsns(), schema)}) as sharded:
        await migrate(sharded)
        instrument(sharded, registry)
        sessions = [PostgresSession(f"rs-{tag}-{i}", sharded) for i in range(12)]
        await asyncio.gather(*(s.add_items([user(f"m{i}")]) for i, s in enumerate(sessions)))
        await asyncio.to_thread(cluster.wait_caught_up)
        got = await asyncio.gather(*(s.get_items() for s in sessions))
        assert [len(g) for g in got] == [1] * 12
        st = sharded.shards["s1"].stats()
        families = list(registry.collect())  # while open: a closed router stops reporting
    values = {
        (x.name, tuple(sorted(x.labels.items()))): x.value for f in families for x in f.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return values.get((name, tuple(sorted({"router": "s1", "shard": "s1", **labels}.items()))))

    assert st["reads_grouped"] >= 2
    assert value("pgsessions_read_group_size_sum") == st["reads_grouped"]
    assert value("pgsessions_read_groups_total", outcome="served") == st["read_groups"]
    # the sessions' get_items, and the router's own reads (shard_directory, shard_moves)
    grouped = sum(
        x.value
        for f in families
        for x in f.samples
        if x.name == "pgsessions_coalesced_reads_total" and x.labels["outcome"] == "grouped"
    )
    assert grouped == st["reads_grouped"]
    assert (
        value("pgsessions_coalesced_reads_total", operation="get_items", outcome="grouped") or 0
    ) >= 2
    # no series of these metrics without the shard label
    for fam in families:
        if fam.name.startswith(("pgsessions_read_group", "pgsessions_coalesced_reads")):
            assert fam.samples and all(x.labels.get("shard") == "s1" for x in fam.samples)


@pytest.mark.fault
@pytest.mark.owner_sql  # creates a table of its own
async def test_a_group_check_behind_the_writes_sends_each_read_its_own_way(
    rtr: SessionRouter, store: Store, cluster: LocalCluster
) -> None:
    """Replay paused on both replicas: the group's replay check does not cover the reads'
    tokens, so each waits on its own and then reads the primary: still its own writes."""
    tag = uuid.uuid4().hex[:6]
    sids = [f"rp-{tag}-{i}" for i in range(6)]
    try:
        for node in cluster.replicas:
            await asyncio.to_thread(cluster.pause_replay, node)
        ops = await asyncio.gather(*(store.add(rtr, sid) for sid in sids))
        grouped0 = rtr.stats()["reads_grouped"]
        got = await asyncio.gather(*(store.get(rtr, sid) for sid in sids))
        assert got == [[op] for op, _ in ops]
        st = rtr.stats()
        assert st["reads_grouped"] == grouped0  # none served by a group that was behind
        assert st["reads"]["primary"]["token_ahead"] >= 6
    finally:
        for node in cluster.replicas:
            await asyncio.to_thread(cluster.resume_replay, node)
        await asyncio.to_thread(cluster.wait_caught_up)


@pytest.mark.fault
@pytest.mark.owner_sql  # creates a table of its own
async def test_a_group_behind_the_writes_waits_for_the_replica_once_and_reads_again(
    cluster: LocalCluster, schema: str, store: Store
) -> None:
    """Replay paused on both replicas while the reads' groups run their check: each group
    waits (catch_up_wait) and, once replay resumes, reads its members again on the replica:
    every read its own write, none on the primary, answered as "waited"."""
    tag = uuid.uuid4().hex[:6]
    sids = [f"rw-{tag}-{i}" for i in range(6)]
    async with SessionRouter(fast_config(cluster.dsns(), schema, catch_up_wait=15.0)) as r:
        await store.create(r)
        await asyncio.to_thread(cluster.wait_caught_up)
        with serve(r, port=0, registry=CollectorRegistry()) as server:
            try:
                for node in cluster.replicas:
                    await asyncio.to_thread(cluster.pause_replay, node)
                ops = await asyncio.gather(*(store.add(r, sid) for sid in sids))
                before = r.stats()
                reads = asyncio.gather(*(store.get(r, sid) for sid in sids))
                # the groups have run their check (behind) and wait on the replicas
                await wait_until(
                    lambda: r.stats()["read_groups"] > before["read_groups"], 10, "a read group"
                )
                assert not reads.done()
            finally:
                for node in cluster.replicas:
                    await asyncio.to_thread(cluster.resume_replay, node)
            got = await asyncio.wait_for(reads, 20)
            result = await scrape(server.url)
        assert got == [[op] for op, _ in ops]
        st = r.stats()
        primary_reads = sum(st["reads"].get("primary", {}).values())
        assert primary_reads == sum(before["reads"].get("primary", {}).values())

        def outcome(o: str) -> float:
            return (
                result.value("pgsessions_coalesced_reads_total", operation="get_items", outcome=o)
                or 0
            )

        assert outcome("waited") >= 2 and outcome("uncovered") == 0
        assert outcome("waited") + outcome("grouped") + outcome("alone") == len(sids)


@pytest.mark.owner_sql  # creates a table of its own
async def test_a_failing_read_in_a_group_fails_only_its_caller(
    rtr: SessionRouter, store: Store
) -> None:
    tag = uuid.uuid4().hex[:6]
    sids = [f"rb-{tag}-{i}" for i in range(5)]
    ops = await asyncio.gather(*(store.add(rtr, sid) for sid in sids))
    results = await asyncio.gather(
        *(store.get(rtr, sid) for sid in sids),
        rtr.execute_read("bad", None, "SELECT 1/0"),
        return_exceptions=True,
    )
    assert results[:5] == [[op] for op, _ in ops]
    assert isinstance(results[5], psycopg.errors.DivisionByZero)


async def test_reads_of_different_tenants_never_share_a_transaction(rtr: SessionRouter) -> None:
    """Each read's setup (transaction-local settings) reaches its own statement only."""

    def read(tenant: str) -> asyncio.Future[list[tuple[str]]]:
        return asyncio.ensure_future(
            rtr.execute_read(
                "get_items",
                None,
                "SELECT current_setting('pgsessions_test.tenant', true)",
                setup=("SELECT set_config('pgsessions_test.tenant', %s, true)", (tenant,)),
            )
        )

    for _ in range(3):
        tenants = [f"t{i % 3}" for i in range(12)]
        got = await asyncio.gather(*(read(t) for t in tenants))
        assert [rows[0][0] for rows in got] == tenants
    assert rtr.stats()["reads_grouped"] >= 2
    # outside a read, nothing stays set on the pooled connections
    plain = await asyncio.gather(
        *(
            rtr.execute_read("x", None, "SELECT current_setting('pgsessions_test.tenant', true)")
            for _ in range(8)
        )
    )
    assert all(rows[0][0] in (None, "") for rows in plain)


@pytest.mark.owner_sql  # creates a table of its own
async def test_coalescing_reads_off_sends_every_read_alone(
    cluster: LocalCluster, schema: str, store: Store
) -> None:
    async with SessionRouter(fast_config(cluster.dsns(), schema, coalesce_reads=False)) as r:
        await store.create(r)
        await asyncio.to_thread(cluster.wait_caught_up)
        sids = [f"ro-{uuid.uuid4().hex[:6]}-{i}" for i in range(8)]
        ops = await asyncio.gather(*(store.add(r, sid) for sid in sids))
        got = await asyncio.gather(*(store.get(r, sid) for sid in sids))
        assert got == [[op] for op, _ in ops]
        assert r.stats()["read_groups"] == 0 and r.stats()["reads_grouped"] == 0
