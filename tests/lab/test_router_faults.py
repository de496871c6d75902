"""SessionRouter under real faults: lagging, crashed, promoted, split and blackholed nodes.

Every test that breaks a server gets a cluster of its own (``cluster_factory``); the proxy
tests put a TCP proxy of their own in front of a node of the shared cluster. Conditions are
polled with deadlines, never slept on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pgsessions.devcluster import LocalCluster, Node
from pgsessions.devcluster.proxy import ThreadedProxy as Proxy
from pgsessions.devcluster.proxy import command_complete
from pgsessions.router import NoPrimaryError, SessionRouter, SplitBrainError
from tests.integration.test_router import Store, eligible, fast_config, wait_until

pytestmark = pytest.mark.fault

ClusterFactory = Callable[..., LocalCluster]


@dataclass
class Events:
    """A RouterObserver that keeps what it was told."""

    failovers: list[float] = field(default_factory=list)
    split_brains: int = 0
    retries: list[tuple[str, str]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def on_route(self, operation: str, role: str, reason: str) -> None: ...
    def on_operation(
        self, operation: str, role: str, seconds: float, error: str | None
    ) -> None: ...

    def on_retry(self, operation: str, reason: str) -> None:
        self.retries.append((operation, reason))

    def on_pool_wait(self, host: str, role: str, seconds: float) -> None: ...
    def on_connection_lost(self, host: str, role: str) -> None:
        self.lost.append(host)

    def on_failover(self, seconds: float) -> None:
        self.failovers.append(seconds)

    def on_split_brain(self) -> None:
        self.split_brains += 1


def schema_name() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def count_rows(node: Node, store: Store, sid: str | None = None) -> int:
    if sid is None:
        return int(node.execute(f'SELECT count(*) FROM "{store.s}".items')[0][0])
    q = f'SELECT count(*) FROM "{store.s}".items WHERE session_id = %s'
    return int(node.execute(q, (sid,))[0][0])


def history_on(node: Node, store: Store, sid: str) -> list[str]:
    q = f'SELECT op_id FROM "{store.s}".items WHERE session_id = %s ORDER BY seq'
    return [r[0] for r in node.execute(q, (sid,))]


async def open_router(hosts: list[str], schema: str, **kw: Any) -> SessionRouter:
    r = SessionRouter(fast_config(hosts, schema, **kw))
    await r.open()
    return r


# ------------------------------------------------------------------------------ (5)
async def test_lagging_replica_leaves_and_returns_with_hysteresis(
    cluster_factory: ClusterFactory,
) -> None:
    """(5) A replica delayed past max_lag_seconds leaves rotation within two check intervals
    and returns only after healthy_for; a replica whose walreceiver stopped is not eligible
    although its received and replayed positions are equal."""
    c = await asyncio.to_thread(cluster_factory, replicas=2)
    store = Store(schema_name())
    interval, max_lag, healthy_for = 0.2, 1.0, 1.5
    r = await open_router(
        c.dsns(),
        store.s,
        check_interval=interval,
        max_lag_seconds=max_lag,
        healthy_for=healthy_for,
    )
    slow, other = c.replicas
    try:
        await store.create(r)
        await wait_until(lambda: len(eligible(r)) == 2, 10, "both replicas eligible")
        stop: list[bool] = []

        async def writer() -> None:
            while not stop:
                await store.add(r, "lag-writer")
                await asyncio.sleep(0.03)

        w = asyncio.create_task(writer())
        await asyncio.to_thread(c.set_replay_delay, slow, 4.0)
        t_set = time.monotonic()
        await wait_until(lambda: slow.host not in eligible(r), 10, "the delayed replica to leave")
        left = time.monotonic() - t_set
        # its lag passes max_lag about max_lag after the delay starts; then two intervals
        assert left <= max_lag + 2 * interval + 0.6, f"left rotation {left:.2f}s after the delay"
        assert other.host in eligible(r)
        state = {h.host: h for h in r.topology().hosts}[slow.host]
        assert state.lag_seconds is not None and state.lag_seconds > max_lag

        # reads keep going to the healthy replica meanwhile
        by_host0 = r.stats()["reads_by_host"]
        for _ in range(10):
            await store.get(r, None, sid="lag-writer")
        by_host1 = r.stats()["reads_by_host"]
        assert by_host1[slow.host] == by_host0[slow.host]

        await asyncio.to_thread(c.set_replay_delay, slow, 0)
        t_clear = time.monotonic()
        await wait_until(lambda: slow.host in eligible(r), 15, "the replica to return")
        back = time.monotonic() - t_clear
        assert back >= healthy_for, f"returned after {back:.2f}s, before healthy_for"
        assert back <= healthy_for + 4.0

        # walreceiver stopped: no WAL arrives, received == replayed, still not eligible
        stop.append(True)
        await w
        await asyncio.to_thread(c.set_primary_conninfo, other, "host=127.0.0.1 port=1 user=x")
        await wait_until(lambda: other.host not in eligible(r), 10, "the cut replica to leave")
        rows = other.execute("SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()")
        assert rows[0][0] is True
        state = {h.host: h for h in r.topology().hosts}[other.host]
        assert state.streaming is False and state.up
        for _ in range(5):  # still not eligible over several checks
            await asyncio.sleep(interval)
            assert other.host not in eligible(r)
        await asyncio.to_thread(c.set_primary_conninfo, other, c.primary.conninfo)
        await wait_until(lambda: other.host in eligible(r), 15, "the replica to stream again")
    finally:
        await r.close()


# ------------------------------------------------------------------------------ (6)
async def test_replica_crash_mid_load_fails_no_read(cluster_factory: ClusterFactory) -> None:
    """(6) A replica crashes under load: zero failed reads; it rejoins after restart."""
    c = await asyncio.to_thread(cluster_factory, replicas=2)
    store = Store(schema_name())
    r = await open_router(c.dsns(), store.s)
    victim = c.replicas[0]
    try:
        await store.create(r)
        await wait_until(lambda: len(eligible(r)) == 2, 10, "both replicas eligible")
        stop: list[bool] = []
        failures: list[BaseException] = []
        reads = 0

        async def session(n: int) -> None:
            nonlocal reads
            sid = f"crash-{n}"
            mine: list[str] = []
            while not stop:
                try:
                    got = await store.get(r, sid)
                    reads += 1
                    assert got == mine
                    op, _ = await store.add(r, sid)
                    mine.append(op)
                except Exception as exc:  # any failure fails the test
                    failures.append(exc)
                    return

        tasks = [asyncio.create_task(session(n)) for n in range(12)]
        await wait_until(lambda: r.stats()["reads_by_host"][victim.host] > 30, 10, "load")
        await asyncio.to_thread(c.stop_node, victim, "immediate")
        await wait_until(lambda: victim.host not in eligible(r), 5, "the crashed replica out")
        n_before = reads
        await wait_until(lambda: reads > n_before + 100, 10, "reads to go on")
        await asyncio.to_thread(c.start_node, victim)
        await wait_until(lambda: victim.host in eligible(r), 20, "the replica to rejoin")
        served = r.stats()["reads_by_host"][victim.host]
        await wait_until(
            lambda: r.stats()["reads_by_host"][victim.host] > served + 20, 10, "reads on it again"
        )
        stop.append(True)
        await asyncio.gather(*tasks)
        assert not failures, failures[:3]
        print(f"\nreads {reads}, retries {r.stats()['retries']}")
    finally:
        await r.close()


# ------------------------------------------------------------------------------ (7)
async def test_primary_crash_under_50_writers_loses_and_duplicates_nothing(
    cluster_factory: ClusterFactory,
) -> None:
    """(7) The primary crashes under 50 concurrently writing sessions and a replica is
    promoted (synchronous replication): every add succeeds within failover_timeout, every
    history is exactly the acknowledged writes in order, and no read ever missed one."""
    c = await asyncio.to_thread(cluster_factory, replicas=2, sync=True)
    store = Store(schema_name())
    events = Events()
    r = await open_router(c.dsns(), store.s, failover_timeout=30.0)
    r.add_observer(events)
    old = c.primary
    try:
        await store.create(r)
        stop: list[bool] = []
        acked: dict[str, list[str]] = {}
        failures: list[str] = []
        successes: list[float] = []
        slowest = 0.0

        async def session(n: int) -> None:
            nonlocal slowest
            sid = f"w{n:02d}-{uuid.uuid4().hex[:4]}"
            mine = acked.setdefault(sid, [])
            while not stop:
                t0 = time.monotonic()
                try:
                    op, _ = await store.add(r, sid)
                except Exception as exc:
                    failures.append(
                        f"{sid}: add failed after {time.monotonic() - t0:.1f}s: {exc!r}"
                    )
                    return
                slowest = max(slowest, time.monotonic() - t0)
                successes.append(time.monotonic())
                mine.append(op)
                got = await store.get(r, sid)
                if got != mine:
                    failures.append(f"{sid}: read {len(got)} items, acknowledged {len(mine)}")
                    return
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(session(n)) for n in range(50)]
        await wait_until(lambda: len(successes) > 300, 20, "load")
        await asyncio.to_thread(c.stop_node, old, "immediate")
        t_crash = time.monotonic()
        # the most advanced standby holds every acknowledged commit (ANY 1 synchronous)
        lsns = {
            n.name: n.execute("SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn")[0][0]
            for n in c.replicas
        }
        new = max(c.replicas, key=lambda n: lsns[n.name])
        t_promote = time.monotonic()
        await asyncio.to_thread(c.promote, new)
        t_promoted = time.monotonic()
        await wait_until(lambda: any(t > t_promoted for t in successes), 30, "a write after")
        first_after = min(t for t in successes if t > t_promote)
        for other in c.replicas:
            if other.name not in (new.name, old.name):
                await asyncio.to_thread(c.follow, other, new)
        n_now = len(successes)
        await wait_until(lambda: len(successes) > n_now + 300, 20, "load on the new primary")
        stop.append(True)
        await asyncio.gather(*tasks)
        assert not failures, failures[:5]
        assert slowest <= 30.0

        for sid, mine in acked.items():
            assert history_on(new, store, sid) == mine, sid
            assert len(set(mine)) == len(mine)
        assert r.topology().primary == new.host
        assert r.stats()["failovers"] == 1 and len(events.failovers) == 1
        print(
            f"\ncrash->promote call {t_promote - t_crash:.2f}s; promote took "
            f"{t_promoted - t_promote:.2f}s; first write after promote call "
            f"{first_after - t_promote:.3f}s, after promote returned "
            f"{max(0.0, first_after - t_promoted):.3f}s; slowest add {slowest:.2f}s; "
            f"failover event {events.failovers[0]:.2f}s; writes {sum(map(len, acked.values()))}; "
            f"retries {r.stats()['retries']}"
        )
    finally:
        await r.close()


# ------------------------------------------------------------------------------ (8)
async def test_old_primary_back_as_standby_gets_no_writes(cluster_factory: ClusterFactory) -> None:
    """(8) The old primary returns as a standby: no write goes to it (even through a router
    that has not noticed), and the pools heal: it serves reads as a replica."""
    c = await asyncio.to_thread(cluster_factory, replicas=1)
    store = Store(schema_name())
    live = await open_router(c.dsns(), store.s)
    # a router whose monitor will not look again for a minute: it learns from its errors
    stale = await open_router(c.dsns(), store.s, check_interval=60.0, name="stale")
    old, new = c.primary, c.replicas[0]
    try:
        await store.create(live)
        stop: list[bool] = []
        failures: list[BaseException] = []
        done = 0

        async def writer(n: int) -> None:
            nonlocal done
            while not stop:
                try:
                    await store.add(live, f"live-{n}")
                    done += 1
                except Exception as exc:
                    failures.append(exc)
                    return
                await asyncio.sleep(0.01)

        tasks = [asyncio.create_task(writer(n)) for n in range(5)]
        await wait_until(lambda: done > 50, 10, "load")
        await asyncio.to_thread(c.stop_node, old, "fast")
        await asyncio.to_thread(c.promote, new)
        await asyncio.to_thread(c.rejoin_as_replica, old)
        assert old.role() == "replica"
        n_now = done
        await wait_until(lambda: done > n_now + 50, 20, "writes on the new primary")

        # the stale router still believes in the old primary; its writes must land on new
        assert stale.topology().primary == old.host
        # let its pool for the old primary replace the connections the restart killed: the
        # new ones reach a standby, which the role check on checkout must refuse as primary
        pool = stale._hosts[old.host].pool
        assert pool is not None
        await pool.pool.check()
        await wait_until(lambda: pool.stats().get("pool_available", 0) >= 1, 10, "reconnect")
        for i in range(5):
            await store.add(stale, "stale", op_id=f"stale-{i}")
        assert stale.topology().primary == new.host
        assert count_rows(new, store, "stale") == 5
        assert stale.stats()["retries"]["write"].get("read_only"), stale.stats()
        print(f"\nstale router retries: {stale.stats()['retries']}")

        # pools heal: the old primary serves reads as a replica of the live router
        await wait_until(lambda: old.host in eligible(live), 20, "the old primary as replica")
        pools = live.pool_stats()
        assert pools[new.host]["pool_max"] == live.config.primary_pool_max
        assert pools[old.host]["pool_max"] == live.config.replica_pool_max
        served = live.stats()["reads_by_host"][old.host]
        for _ in range(20):
            await store.get(live, None, sid="live-0")
        assert live.stats()["reads_by_host"][old.host] > served
        stop.append(True)
        await asyncio.gather(*tasks)
        assert not failures, failures[:3]
    finally:
        await live.close()
        await stale.close()


# ------------------------------------------------------------------------------ (9)
async def test_split_brain_refuses_writes_until_resolved(cluster_factory: ClusterFactory) -> None:
    """(9) A replica promoted while the primary runs: writes raise SplitBrainError and
    neither node receives a write; writes resume once one of them is gone."""
    c = await asyncio.to_thread(cluster_factory, replicas=1)
    store = Store(schema_name())
    events = Events()
    r = await open_router(c.dsns(), store.s)
    r.add_observer(events)
    first, second = c.primary, c.replicas[0]
    try:
        await store.create(r)
        await store.add(r, "split")
        await asyncio.to_thread(c.wait_caught_up)
        await asyncio.to_thread(c.promote, second)
        await wait_until(lambda: bool(r.topology().split_brain), 5, "split brain detected")
        assert set(r.topology().split_brain) == {first.host, second.host}
        counts = (count_rows(first, store), count_rows(second, store))
        for i in range(5):
            with pytest.raises(SplitBrainError) as info:
                await store.add(r, "split", op_id=f"during-{i}")
            assert first.host in str(info.value) and second.host in str(info.value)
        assert (count_rows(first, store), count_rows(second, store)) == counts
        assert r.stats()["split_brain_refusals"] == 5 and events.split_brains == 5
        # reads still work meanwhile (from the old primary, which holds every write)
        assert len(await store.get(r, "split")) == 1

        await asyncio.to_thread(c.stop_node, second, "fast")
        await wait_until(lambda: not r.topology().split_brain, 5, "split brain resolved")
        await store.add(r, "split", op_id="after")
        assert history_on(first, store, "split")[-1] == "after"
        assert r.topology().primary == first.host
    finally:
        await r.close()


# ------------------------------------------------------------------------------ (10)
async def test_ambiguous_commit_is_applied_once(cluster: LocalCluster) -> None:
    """(10) The connection dies after the server sent its reply to COMMIT: the retried add
    is stored once; a retried pop returns the item it removed and removes one."""
    store = Store(schema_name())
    with Proxy("127.0.0.1", cluster.primary.port) as proxy:
        hosts = [proxy.dsn()] + [n.dsn for n in cluster.replicas]
        r = await open_router(hosts, store.s)
        try:
            await store.create(r)
            assert r.topology().primary == proxy.dsn_host
            sid = f"amb-{uuid.uuid4().hex[:6]}"
            proxy.drop_after_reply(command_complete("COMMIT"))
            await store.add(r, sid, op_id="the-op")
            assert proxy.drops == 1 and not proxy.armed
            assert r.stats()["retries"]["write"].get("connection", 0) >= 1
            assert await store.get(r, sid) == ["the-op"]
            assert count_rows(cluster.primary, store, sid) == 1

            for i in range(3):
                await store.add(r, sid, op_id=f"item-{i}")
            proxy.drop_after_reply(command_complete("COMMIT"))
            popped = await store.pop(r, sid, "pop-1")
            assert proxy.drops == 2
            assert popped == "item-2"
            assert await store.get(r, sid) == ["the-op", "item-0", "item-1"]
            # replaying the same pop again returns the same item and removes nothing more
            assert await store.pop(r, sid, "pop-1") == "item-2"
            assert count_rows(cluster.primary, store, sid) == 3
        finally:
            await r.close()
            cluster.primary.execute(f'DROP SCHEMA IF EXISTS "{store.s}" CASCADE')


# ------------------------------------------------------------------------------ (11)
async def test_blackholed_replica_reads_move_on_no_call_hangs(cluster: LocalCluster) -> None:
    """(11) A replica stops answering (proxy blackhole): reads move elsewhere within the
    statement timeout and no call hangs."""
    store = Store(schema_name())
    holed, other = cluster.replicas
    statement_timeout = 2.0
    with Proxy("127.0.0.1", holed.port) as proxy:
        hosts = [cluster.primary.dsn, proxy.dsn(), other.dsn]
        r = await open_router(hosts, store.s, statement_timeout=statement_timeout)
        try:
            await store.create(r)
            await asyncio.to_thread(cluster.wait_caught_up)
            await wait_until(lambda: proxy.dsn_host in eligible(r), 10, "proxied replica in")
            stop: list[bool] = []
            durations: list[float] = []
            failures: list[BaseException] = []

            async def reader(n: int) -> None:
                sid = f"bh-{n}"
                op, _ = await store.add(r, sid)
                while not stop:
                    t0 = time.monotonic()
                    try:
                        got = await store.get(r, sid)
                        assert got == [op]
                    except Exception as exc:
                        failures.append(exc)
                        return
                    durations.append(time.monotonic() - t0)
                    await asyncio.sleep(0.005)

            tasks = [asyncio.create_task(reader(n)) for n in range(10)]
            await wait_until(lambda: r.stats()["reads_by_host"][proxy.dsn_host] > 30, 10, "load")
            proxy.blackhole()
            t_hole = time.monotonic()
            await wait_until(lambda: proxy.dsn_host not in eligible(r), 5, "the replica out")
            out_after = time.monotonic() - t_hole
            # the hung replica does not hold up the checks of the others: each round ends
            # within check_timeout, so the healthy replica's state keeps being refreshed
            fresh: set[float] = set()
            t_end = time.monotonic() + 3.0
            while time.monotonic() < t_end:
                fresh.add({h.host: h for h in r.topology().hosts}[other.host].checked_at)
                await asyncio.sleep(0.02)  # sampling, not synchronisation
            stamps = sorted(fresh)
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            bound = r.config.check_timeout + r.config.check_interval + 1.0
            assert len(stamps) >= 3 and max(gaps) <= bound, (stamps, bound)
            n_now = len(durations)
            await wait_until(lambda: len(durations) > n_now + 200, 15, "reads to go on")
            stop.append(True)
            _, pending = await asyncio.wait(tasks, timeout=statement_timeout + 3)
            assert not pending, "a reader hung"
            assert not failures, failures[:3]
            worst = max(durations)
            print(
                f"\nblackholed replica out of rotation after {out_after:.2f}s; slowest read "
                f"{worst:.2f}s; retries {r.stats()['retries']}"
            )
            assert worst <= statement_timeout + 1.0
            proxy.forward()
            await wait_until(lambda: proxy.dsn_host in eligible(r), 15, "the replica back")
        finally:
            await r.close()
            cluster.primary.execute(f'DROP SCHEMA IF EXISTS "{store.s}" CASCADE')


# ------------------------------------------------------------------------------ (12)
async def test_no_primary_writes_raise_reads_keep_working(cluster_factory: ClusterFactory) -> None:
    """(12) No primary for longer than failover_timeout: writes raise NoPrimaryError naming
    each host's state; reads from the replicas keep working."""
    c = await asyncio.to_thread(cluster_factory, replicas=2)
    store = Store(schema_name())
    timeout = 2.0
    # trust auth ignores the password; it is there to show it never reaches the message
    secret = "pw-" + uuid.uuid4().hex
    hosts = [d.replace("postgres@", f"postgres:{secret}@") for d in c.dsns()]
    r = await open_router(hosts, store.s, failover_timeout=timeout)
    primary = c.primary
    try:
        await store.create(r)
        sid = "lonely"
        ops = [(await store.add(r, sid))[0] for _ in range(3)]
        await asyncio.to_thread(c.stop_node, primary, "fast")
        t0 = time.monotonic()
        with pytest.raises(NoPrimaryError) as info:
            await store.add(r, sid)
        took = time.monotonic() - t0
        assert timeout - 0.5 <= took <= timeout + 2.0, took
        err = info.value
        assert set(err.hosts) == {n.host for n in c.nodes}
        assert err.hosts[primary.host].startswith("down")
        for n in c.replicas:
            assert err.hosts[n.host].startswith("standby")
            assert n.host in str(err)
        assert primary.host in str(err)
        assert secret not in str(err) and secret not in repr(err.hosts), str(err)
        print(f"\nNoPrimaryError: {err}")
        # reads go on from the replicas: with the session's token and without one
        before = r.stats()["reads_on_replicas"]
        for _ in range(10):
            assert await store.get(r, sid) == ops
            assert await store.get(r, None, sid=sid) == ops
        assert r.stats()["reads_on_replicas"] == before + 20
        with pytest.raises(NoPrimaryError):
            async with r.primary_connection():
                pass
        await asyncio.to_thread(c.start_node, primary)
        await store.add(r, sid)  # the primary is back: writes work again
    finally:
        await r.close()
