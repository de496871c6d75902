"""The metrics of bucket moves on real clusters: two local clusters with wal_level = logical
as shards s1 and s2 (the fixtures of test_shard_move). A move held in its copying phase (the
target's subscription disabled from the progress callback) is reported in progress with a
growing lag, then 0 once it is done; a router with a stale directory counts its redirect on
the shard that refused it; a leftover slot is counted with its retained WAL, then dropped; a
shard down turns its check_up to 0 and the scrape goes on."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client import CollectorRegistry

from pgsessions import PostgresSession, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.monitoring import instrument, move_watch
from pgsessions.router import ShardedRouter
from pgsessions.shards import MoveProgress, drop_leftovers, move_buckets
from tests.helpers import apoll, user
from tests.lab.test_shard_move import (  # noqa: F401 - fixtures
    BUCKETS,
    configs,
    contents,
    schema,
    sids_in,
    two,
)


def _value(reg: CollectorRegistry, name: str, shard: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, {"router": shard, "shard": shard, **labels})


def _samples(reg: CollectorRegistry, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(s.labels), s.value) for fam in reg.collect() for s in fam.samples if s.name == name
    ]


async def _until(
    reg: CollectorRegistry, name: str, shard: str, want: object, **labels: str
) -> bool:
    async def holds() -> bool:
        got = _value(reg, name, shard, **labels)
        return bool(want(got)) if callable(want) else got == want

    return await apoll(holds, 30)


async def test_move_gauges_redirects_and_leftovers(
    two: tuple[LocalCluster, LocalCluster],  # noqa: F811
    schema: str,  # noqa: F811
) -> None:
    a, b = two
    reg, reg_stale = CollectorRegistry(), CollectorRegistry()
    async with ShardedRouter(configs(two, schema), buckets=BUCKETS) as sharded:
        await migrate(sharded)
        instrument(sharded, reg)
        move_watch(sharded, reg, interval=0.05)
        d = sharded.directory
        assert d is not None
        bucket = next(x for x in range(BUCKETS) if d.owners[x] == "s1")
        sid, other = sids_in(bucket, 2, prefix="mm")
        # a router that keeps its directory (no periodic re-read) until a shard refuses it
        slow = {
            n: dataclasses.replace(c, check_interval=600.0) for n, c in configs(two, schema).items()
        }
        async with ShardedRouter(slow, buckets=BUCKETS) as stale:
            instrument(stale, reg_stale)
            await PostgresSession(sid, stale).add_items([user("before")])
            # nothing moves yet: 0 in progress, every shard checked, no leftover
            assert await _until(
                reg, "pgsessions_moves_in_progress", "s1", 0.0, target="s2", phase="copying"
            )
            assert _value(reg, "pgsessions_move_check_up", "s2") == 1
            assert _value(reg, "pgsessions_move_leftovers", "s1", kind="slot") == 0
            assert _samples(reg, "pgsessions_move_lag_bytes") == []

            paused = asyncio.Event()
            names: list[str] = []

            def progress(ev: MoveProgress) -> None:
                if ev.phase == "copying" and not paused.is_set():
                    # hold the move in its copying phase: the target stops applying
                    names.append(f"pgs_move_{ev.move_id}")
                    b.primary.execute(f'ALTER SUBSCRIPTION "{names[0]}" DISABLE')
                    paused.set()

            mover = asyncio.create_task(
                move_buckets(sharded, [bucket], to="s2", progress=progress, wait=120)
            )
            await asyncio.wait_for(paused.wait(), 60)
            assert await _until(
                reg, "pgsessions_moves_in_progress", "s1", 1.0, target="s2", phase="copying"
            )
            assert (
                _value(reg, "pgsessions_moves_in_progress", "s1", target="s2", phase="fenced") == 0
            )
            assert (
                _value(reg, "pgsessions_moves_in_progress", "s2", target="s1", phase="copying") == 0
            )
            seconds = _value(
                reg, "pgsessions_move_phase_seconds", "s1", target="s2", phase="copying"
            )
            assert seconds is not None and seconds >= 0
            # the source goes on writing; the disabled subscription confirms nothing more
            await PostgresSession(other, sharded).add_items([user("x" * 2000) for _ in range(20)])
            assert await _until(
                reg,
                "pgsessions_move_lag_bytes",
                "s1",
                lambda v: v is not None and v > 0,
                target="s2",
            )
            # the move's own slot, publication and subscription are no leftovers
            for kind in ("slot", "publication"):
                assert _value(reg, "pgsessions_move_leftovers", "s1", kind=kind) == 0
            assert _value(reg, "pgsessions_move_leftovers", "s2", kind="subscription") == 0
            assert not mover.done()

            b.primary.execute(f'ALTER SUBSCRIPTION "{names[0]}" ENABLE')
            [result] = await asyncio.wait_for(mover, 120)
            assert result.buckets == (bucket,)
            assert await _until(
                reg, "pgsessions_moves_in_progress", "s1", 0.0, target="s2", phase="copying"
            )
            assert await apoll(lambda: _async(not _samples(reg, "pgsessions_move_lag_bytes")), 30)
            for phase in ("copying", "fenced", "flipped"):
                assert (
                    _value(reg, "pgsessions_moves_in_progress", "s1", target="s2", phase=phase) == 0
                )

            # the stale router is refused by s1 and lands on s2: one redirect, on s1
            assert stale.directory is not None and stale.directory.owners[bucket] == "s1"
            await PostgresSession(sid, stale).add_items([user("after")])
            assert stale.redirects == 1
            redirects = _samples(reg_stale, "pgsessions_redirects_total")
            assert [(lb["shard"], v) for lb, v in redirects if v] == [("s1", 1.0)]
            assert all(lb["operation"] for lb, _ in redirects)
            assert contents(b, schema, [sid]) == ["after", "before"]

        # a slot of no move keeps WAL: counted with its retained bytes, then dropped
        a.primary.execute(
            "SELECT pg_create_logical_replication_slot('pgs_move_forgotten', 'pgoutput')"
        )
        assert await _until(reg, "pgsessions_move_leftovers", "s1", 1.0, kind="slot")
        await PostgresSession(other, sharded).add_items([user("y" * 2000) for _ in range(5)])
        assert await _until(
            reg, "pgsessions_move_leftover_retained_bytes", "s1", lambda v: v is not None and v > 0
        )
        assert await drop_leftovers(sharded) == [("s1", "slot", "pgs_move_forgotten")]
        assert await _until(reg, "pgsessions_move_leftovers", "s1", 0.0, kind="slot")
        assert _value(reg, "pgsessions_move_leftover_retained_bytes", "s1") == 0

        # a shard down: its check reports 0, the other shard's gauges stay, scrapes go on
        move_watch(sharded, reg, timeout=1.0)
        b.stop_node(b.primary)
        try:
            assert await _until(reg, "pgsessions_move_check_up", "s2", 0.0)
            assert _value(reg, "pgsessions_move_check_up", "s1") == 1
            assert (
                _value(reg, "pgsessions_moves_in_progress", "s1", target="s2", phase="copying") == 0
            )
            assert (
                _value(reg, "pgsessions_moves_in_progress", "s2", target="s1", phase="copying")
                is None
            )
        finally:
            b.start_node(b.primary)
        assert await _until(reg, "pgsessions_move_check_up", "s2", 1.0)


async def _async(value: bool) -> bool:
    return value
