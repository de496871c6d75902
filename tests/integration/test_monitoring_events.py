"""Monitoring follows real events: lag, eligibility, routing by reason, failover, split brain.

These depend on the router's health monitor and failover (RouterObserver hooks and the
topology snapshot); every wait is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from pgsessions.devcluster import LocalCluster
from pgsessions.monitoring import serve
from pgsessions.router import RouterConfig, SessionRouter, SplitBrainError
from tests.helpers import apoll
from tests.monitoring_support import Scrape, healthz, scrape

# WAL volume that no TOAST compression shrinks: random md5 text, ~3 MB per call
BULK = (
    "INSERT INTO {table} (v) SELECT string_agg(md5(random()::text), '') "
    "FROM generate_series(1, 40) g, generate_series(1, 2000) r GROUP BY r"
)


async def make_table(router: SessionRouter) -> str:
    table = f"{router.config.schema}.mon_{uuid.uuid4().hex[:8]}"
    async with router.primary_connection() as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {router.config.schema}")
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v text)")
    return table


async def until(url: str, check: Callable[[Scrape], bool], within: float = 20.0) -> Scrape:
    """Scrape until ``check`` holds; fail with the last scrape's text otherwise."""
    last: list[Scrape] = []

    async def ok() -> bool:
        last[:] = [await scrape(url)]
        return check(last[0])

    if not await apoll(ok, within=within, interval=0.1):
        pytest.fail(f"condition not met within {within}s; last scrape:\n{last[0].text[-4000:]}")
    return last[0]


@pytest.fixture
async def lag_router(cluster: LocalCluster, schema: str) -> AsyncIterator[SessionRouter]:
    config = RouterConfig(
        hosts=cluster.dsns(),
        schema=schema,
        name="lag",
        check_interval=0.1,
        max_lag_bytes=256 * 1024,
        max_lag_seconds=30.0,
        healthy_for=0.3,
    )
    async with SessionRouter(config) as r:
        yield r


async def test_observer_counts_operations(router: SessionRouter) -> None:
    """Routing decisions, latencies, errors and pool waits follow the router's hooks."""
    registry = CollectorRegistry()
    with serve(router, port=0, registry=registry) as server:
        table = await make_table(router)
        before = await scrape(server.url)
        for i in range(4):
            await router.execute_write(
                "add_items", f"s{i}", f"INSERT INTO {table} (v) VALUES (%s)", ("x",)
            )
            await router.execute_read("get_items", f"s{i}", f"SELECT count(*) FROM {table}")
            await router.execute_read("get_items", None, "SELECT 1")
        after = await scrape(server.url)

        def delta(name: str, **labels: str) -> float:
            return (after.value(name, **labels) or 0) - (before.value(name, **labels) or 0)

        assert delta("pgsessions_routed_total", operation="add_items", role="primary") == 4
        assert delta("pgsessions_routed_total", operation="add_items", reason="write") == 4
        assert delta("pgsessions_routed_total", operation="get_items") == 8
        assert delta("pgsessions_operation_duration_seconds_count", operation="add_items") == 4
        assert delta("pgsessions_operation_duration_seconds_count", operation="get_items") == 8
        assert delta("pgsessions_pool_wait_seconds_count") >= 12
        assert not [
            s for s in after.samples("pgsessions_routed_total") if "s1" in s.labels.values()
        ]
        with pytest.raises(Exception):  # noqa: B017 - a data error: counted, never retried
            await router.execute_read("get_items", None, "SELECT 1/0")
        errors = await scrape(server.url)
        assert errors.value("pgsessions_operation_errors_total", operation="get_items") == 1
        assert not errors.samples("pgsessions_retries_total")


@pytest.mark.fault
async def test_paused_replica_lag_grows_and_it_leaves_rotation(
    lag_router: SessionRouter, cluster: LocalCluster
) -> None:
    router = lag_router
    r1, r2 = (n.host for n in cluster.replicas)
    registry = CollectorRegistry()
    with serve(router, port=0, registry=registry) as server:
        table = await make_table(router)
        # both replicas are measured and eligible before anything is paused
        await until(
            server.url,
            lambda s: all(
                s.value("pgsessions_replica_eligible", host=h) == 1
                and s.value("pgsessions_replication_lag_bytes", host=h) is not None
                for h in (r1, r2)
            ),
        )
        try:
            await asyncio.to_thread(cluster.pause_replay, cluster.replicas[0])
            await router.execute_write("bulk", "bulk", BULK.format(table=table))
            first = await until(
                server.url,
                lambda s: (
                    (s.value("pgsessions_replication_lag_bytes", host=r1) or 0) > 256 * 1024
                    and s.value("pgsessions_replica_eligible", host=r1) == 0
                ),
            )
            lag1 = first.value("pgsessions_replication_lag_bytes", host=r1) or 0
            await router.execute_write("bulk", "bulk", BULK.format(table=table))
            await until(
                server.url,
                lambda s: (s.value("pgsessions_replication_lag_bytes", host=r1) or 0) > lag1,
            )
            # the other replica catches up and stays (or comes back) in rotation
            await until(server.url, lambda s: s.value("pgsessions_replica_eligible", host=r2) == 1)

            # with both replicas behind, reads go to the primary for want of a replica
            await asyncio.to_thread(cluster.pause_replay, cluster.replicas[1])
            await router.execute_write("bulk", "bulk", BULK.format(table=table))
            await until(
                server.url,
                lambda s: (
                    s.value("pgsessions_replica_eligible", host=r1) == 0
                    and s.value("pgsessions_replica_eligible", host=r2) == 0
                ),
            )
            before = await scrape(server.url)
            for _ in range(5):
                await router.execute_read("get_items", None, "SELECT 1")
            after = await scrape(server.url)
            reason = {"operation": "get_items", "reason": "no_eligible_replica"}
            assert (after.value("pgsessions_routed_total", **reason) or 0) - (
                before.value("pgsessions_routed_total", **reason) or 0
            ) == 5
            assert after.value("pgsessions_routed_total", **reason, role="primary")
            assert (await healthz(server.url))[1]["routers"]["lag"]["eligible_replicas"] == 0  # type: ignore[index]
        finally:
            for node in cluster.replicas:
                await asyncio.to_thread(cluster.resume_replay, node)
            await asyncio.to_thread(cluster.wait_caught_up)
        # caught up again: both back in rotation, lag back to zero
        await until(
            server.url,
            lambda s: all(
                s.value("pgsessions_replica_eligible", host=h) == 1
                and s.value("pgsessions_replication_lag_bytes", host=h) == 0
                for h in (r1, r2)
            ),
        )


@pytest.mark.fault
async def test_crash_and_promote_counts_one_failover(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = await asyncio.to_thread(cluster_factory, replicas=2)
    config = RouterConfig(
        hosts=c.dsns(), name="failover", check_interval=0.1, failover_timeout=60.0
    )
    async with SessionRouter(config) as router:
        registry = CollectorRegistry()
        with serve(router, port=0, registry=registry) as server:
            table = await make_table(router)
            await router.execute_write("add_items", "s", f"INSERT INTO {table} (v) VALUES ('a')")
            await asyncio.to_thread(c.wait_caught_up)
            status, body = await healthz(server.url)
            assert status == 200
            assert body["routers"]["failover"]["primary"] == c.primary.host  # type: ignore[index]
            start = await scrape(server.url)
            assert start.value("pgsessions_failovers_total") == 0

            old, new = c.primary, c.replicas[0]
            await asyncio.to_thread(c.crash, old)

            # no reachable primary: /healthz says so, and so does the gauge
            async def unhealthy() -> bool:
                return (await healthz(server.url))[0] == 503

            assert await apoll(unhealthy, within=20, interval=0.1)
            assert (await scrape(server.url)).value("pgsessions_primary_known") == 0

            await asyncio.to_thread(c.promote, new, follow=True)
            await router.execute_write("add_items", "s", f"INSERT INTO {table} (v) VALUES ('b')")
            after = await until(
                server.url,
                lambda s: (
                    s.value("pgsessions_failovers_total") == 1
                    and s.value("pgsessions_failover_duration_seconds_count") == 1
                ),
            )
            assert (after.value("pgsessions_failover_duration_seconds_sum") or 0) > 0
            assert after.value("pgsessions_host_up", host=old.host) == 0
            assert after.value("pgsessions_host_up", host=new.host, role="primary") == 1
            status, body = await healthz(server.url)
            assert status == 200
            assert body["routers"]["failover"]["primary"] == new.host  # type: ignore[index]
            # more writes on the new primary: still exactly one failover
            for i in range(3):
                await router.execute_write(
                    "add_items", "s", f"INSERT INTO {table} (v) VALUES ('{i}')"
                )
            final = await scrape(server.url)
            assert final.value("pgsessions_failovers_total") == 1


@pytest.mark.fault
async def test_split_brain_is_reported_and_counted(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    c = await asyncio.to_thread(cluster_factory, replicas=1)
    config = RouterConfig(hosts=c.dsns(), name="split", check_interval=0.1, failover_timeout=2.0)
    async with SessionRouter(config) as router:
        registry = CollectorRegistry()
        with serve(router, port=0, registry=registry) as server:
            table = await make_table(router)
            await asyncio.to_thread(c.wait_caught_up)
            # promote the replica while the primary lives on: two writable hosts
            await asyncio.to_thread(c.promote, c.replicas[0])
            await until(server.url, lambda s: s.value("pgsessions_writable_hosts") == 2)
            with pytest.raises(SplitBrainError):
                await router.execute_write("add_items", "s", f"INSERT INTO {table} (v) VALUES (1)")
            result = await until(
                server.url, lambda s: (s.value("pgsessions_split_brain_total") or 0) >= 1
            )
            assert result.value("pgsessions_primary_known") == 0
            assert (await healthz(server.url))[0] == 503
