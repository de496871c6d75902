"""ShardedRouter on real servers: two replicated clusters (primary + 1 replica each) as
shards s1 and s2. Placement and the directory's rules are unit-tested apart
(test_sharding_decisions.py); here: the set-up, routing, fencing and redirects, tokens,
misconfiguration at open, and a fault that stays inside its shard."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgsessions import PostgresSession, list_sessions, migrate
from pgsessions.analytics.report import usage_report
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.cluster import DBNAME
from pgsessions.errors import DirectoryError, ShardError
from pgsessions.export.dump import export_lines
from pgsessions.export.load import import_records
from pgsessions.export.records import read_export
from pgsessions.monitoring import instrument, uninstrument
from pgsessions.monitoring.endpoint import Endpoint
from pgsessions.retention.prune import prune
from pgsessions.router import RouterConfig, SessionRouter, ShardedRouter
from pgsessions.router.placement import bucket_of
from pgsessions.sessions.schema import load_migrations
from tests.conftest import drop_schema
from tests.helpers import (
    apoll,
    assistant,
    cluster_cli,
    cluster_state_dir,
    poll,
    processes_under,
    run_result,
    user,
)


@pytest.fixture(scope="module")
def two() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    a = LocalCluster(replicas=1, fsync=False)
    b = LocalCluster(replicas=1, fsync=False)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def shard_schema(two: tuple[LocalCluster, LocalCluster]) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    for c in two:
        drop_schema(c, name)


def configs(
    clusters: tuple[LocalCluster, ...], schema: str, names: tuple[str, ...] = ("s1", "s2")
) -> dict[str, RouterConfig]:
    return {
        n: RouterConfig(hosts=c.dsns(), schema=schema, check_interval=0.1, failover_timeout=10)
        for n, c in zip(names, clusters, strict=True)
    }


@pytest.fixture
async def sharded(
    two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> AsyncIterator[ShardedRouter]:
    # the directory is read again on a refusal only: tests make its copy stale on purpose
    async with ShardedRouter(configs(two, shard_schema), buckets=64, directory_interval=3600) as r:
        await migrate(r)
        yield r


def sid_on(router: ShardedRouter, shard: str, prefix: str = "conv") -> str:
    """A fresh session id whose bucket the router places on ``shard``."""
    for i in range(10_000):
        sid = f"{prefix}-{uuid.uuid4().hex[:8]}-{i}"
        if router._place(sid).shard == shard:
            return sid
    raise AssertionError("no session id found")


def messages_on(c: LocalCluster, schema: str, sid: str) -> int:
    rows = c.primary.execute(
        f'SELECT count(*) FROM "{schema}".messages WHERE session_id = %s', (sid,)
    )
    return int(rows[0][0])


def hand_over(old: LocalCluster, new: LocalCluster, schema: str, bucket: int, epoch: int) -> None:
    """Move ``bucket``'s ownership from ``old`` to ``new`` at ``epoch`` behind the routers'
    backs, as a move's fence and flip do (its rows stay where they are)."""
    old.primary.execute(f'DELETE FROM "{schema}".shard_buckets WHERE bucket = %s', (bucket,))
    new.primary.execute(
        f'INSERT INTO "{schema}".shard_buckets (bucket, epoch) VALUES (%s, %s)', (bucket, epoch)
    )


async def test_migrate_spreads_buckets_and_sessions_land_on_their_owner(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    assert sharded.stats()["buckets"] == {"s1": 32, "s2": 32}
    assert await migrate(sharded) == []  # idempotent: the set-up stays as it is
    a, b = two
    sids = [f"conv-{i}" for i in range(24)]
    for sid in sids:
        s = PostgresSession(sid, sharded)
        await s.add_items([user(sid), assistant("ok")])
        owner = sharded._place(sid).shard
        assert s.consistency_token is not None and s.consistency_token.startswith(f"{owner}:")
        assert [i["content"] for i in await s.get_items()] == [sid, "ok"]
        here, there = (a, b) if owner == "s1" else (b, a)
        assert messages_on(here, shard_schema, sid) == 2
        assert messages_on(there, shard_schema, sid) == 0
        assert sharded.cluster_for(sid) is sharded.shards[owner]
    assert {sharded._place(sid).shard for sid in sids} == {"s1", "s2"}
    page = await list_sessions(sharded, limit=10)
    seen = [info.session_id for info in page.sessions]
    while page.next_cursor is not None:
        page = await list_sessions(sharded, limit=10, after=page.next_cursor)
        seen += [info.session_id for info in page.sessions]
    assert sorted(seen) == sorted(sids)


async def test_a_stale_directory_is_refused_and_the_write_lands_once_on_the_owner(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    a, b = two
    sid = sid_on(sharded, "s1")
    bucket = bucket_of(sid, 64)
    # a move, as issue 30's cutover will make it: the old owner lets go, the new one takes
    # the bucket at a new epoch; this router still holds the old directory
    # routers that read the directory again only a minute from now: stale across the move
    slow = {
        n: dataclasses.replace(c, check_interval=60.0)
        for n, c in configs(two, shard_schema).items()
    }
    async with ShardedRouter(slow, buckets=64) as stale:
        hand_over(a, b, shard_schema, bucket, 2)
        assert stale._place(sid).shard == "s1"
        s = PostgresSession(sid, stale)
        await s.add_items([user("after the move")])
        assert stale.redirects >= 1
        assert stale._place(sid) == stale._place(sid).__class__(bucket, "s2", 2)
        assert messages_on(a, shard_schema, sid) == 0
        assert messages_on(b, shard_schema, sid) == 1
        assert s.consistency_token is not None and s.consistency_token.startswith("s2:")
        assert [i["content"] for i in await s.get_items()] == ["after the move"]
    # a read through a router with the old directory is refused by s1 and redirected too
    async with ShardedRouter(slow, buckets=64, check_reads=True) as other:
        other._directory = sharded_dir_before(other, bucket)
        assert [i["content"] for i in await PostgresSession(sid, other).get_items()] == [
            "after the move"
        ]
        assert other.redirects == 1


async def test_reads_follow_a_move_within_a_check_without_any_refusal(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    a, b = two
    sid = sid_on(sharded, "s1")
    bucket = bucket_of(sid, 64)
    await PostgresSession(sid, sharded).add_items([user("on s1")])
    async with ShardedRouter(
        configs(two, shard_schema), buckets=64, directory_interval=0.1
    ) as reader:
        assert reader._place(sid).shard == "s1"
        b.primary.execute(
            f'INSERT INTO "{shard_schema}".conversations (session_id) VALUES (%s)', (sid,)
        )
        hand_over(a, b, shard_schema, bucket, 2)

        # no write is refused: the router reads the directory again on its own
        async def moved() -> bool:
            return reader._place(sid).shard == "s2"

        assert await apoll(moved, within=5.0)
        assert reader.redirects == 0
        # reads now go to the new owner (which holds the conversation but no item yet)
        assert await PostgresSession(sid, reader).get_items() == []


async def test_a_moves_leftovers_on_the_old_owner_are_listed_and_exported_once(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    a, b = two
    sid = sid_on(sharded, "s1")
    bucket = bucket_of(sid, 64)
    await PostgresSession(sid, sharded).add_items([user("copied")])
    await PostgresSession(sid, sharded).store_run_usage(run_result(5))
    # the state between a move's flip and its clean-up: both shards hold the rows, s2 owns
    b.primary.execute(
        f'INSERT INTO "{shard_schema}".conversations (session_id, item_count) VALUES (%s, 1)',
        (sid,),
    )
    hand_over(a, b, shard_schema, bucket, 2)
    # written behind the router's back, so no token makes a replica read wait for it
    b.wait_caught_up()
    await sharded.refresh()
    assert sharded.owned_by(sharded.shards["s1"]) == [
        x for x in range(64) if x < 32 and x != bucket
    ]
    listed = [i.session_id for i in (await list_sessions(sharded, limit=100)).sessions]
    assert listed.count(sid) == 1
    exported = [json.loads(line) for line in [x async for x in export_lines(sharded)][1:]]
    assert [r.get("session_id") for r in exported if r.get("kind") == "conversation"].count(
        sid
    ) == 1
    # the usage row left on s1 is not counted; the one written on s2 after the flip is
    moved = PostgresSession(sid, sharded)
    await moved.add_items([user("on s2")])
    await moved.store_run_usage(run_result(7))
    now = datetime.now(UTC)
    report = await usage_report(
        sharded, since=now - timedelta(hours=1), until=now + timedelta(hours=1)
    )
    (by_model,) = report.reports["by_model"]
    assert (by_model["turns"], by_model["total_tokens"]) == (1, 8)


def sharded_dir_before(router: ShardedRouter, bucket: int):  # type: ignore[no-untyped-def]
    """``router``'s directory with ``bucket`` back on s1 at epoch 1 (a stale copy)."""
    d = router.directory
    assert d is not None
    owners = list(d.owners)
    epochs = list(d.epochs)
    owners[bucket], epochs[bucket] = "s1", 1
    return d.__class__(d.buckets, tuple(owners), tuple(epochs))


async def test_the_fence_holds_a_change_of_ownership_until_the_write_commits(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    a, _ = two
    sid = sid_on(sharded, "s1")
    bucket = bucket_of(sid, 64)
    qs = f'"{shard_schema}"'
    with psycopg.connect(a.primary.dsn) as writer, psycopg.connect(a.primary.dsn) as mover:
        writer.execute(f"SELECT {qs}.fence(%s, 1)", (bucket,))  # a write in flight
        mover.execute("SET lock_timeout = '300ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            mover.execute(f"DELETE FROM {qs}.shard_buckets WHERE bucket = %s", (bucket,))
        mover.rollback()
        writer.commit()
        mover.execute(f"DELETE FROM {qs}.shard_buckets WHERE bucket = %s", (bucket,))
        mover.commit()
        with pytest.raises(psycopg.Error) as refused:
            writer.execute(f"SELECT {qs}.fence(%s, 1)", (bucket,))
        assert refused.value.sqlstate == "PGS01"
        writer.rollback()


async def test_tokens_name_their_shard_and_others_are_ignored(sharded: ShardedRouter) -> None:
    on1, on2 = sid_on(sharded, "s1"), sid_on(sharded, "s2")
    s1 = PostgresSession(on1, sharded)
    await s1.add_items([user("x")])
    token = s1.consistency_token
    assert token is not None and token.startswith("s1:")
    # a token of s1 handed to a session on s2 cannot make its reads staler: it is ignored
    s2 = PostgresSession(on2, sharded, consistency_token=token)
    assert await s2.get_items() == []
    assert sharded.token_for(on2) is None
    merged = sharded.newest_token(token, "s2:0/10", "s2:0/20")
    assert merged == f"{token}+s2:0/20"
    with pytest.raises(ValueError, match="sharded consistency token"):
        PostgresSession(on1, sharded, consistency_token="0/10")


async def test_misconfigured_shards_are_refused_at_open_naming_the_shard(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    a, b = two
    # two shards that are one cluster (a primary and its replica)
    same = {
        "s1": RouterConfig(hosts=[a.primary.dsn], schema=shard_schema),
        "s2": RouterConfig(hosts=[a.replicas[0].dsn], schema=shard_schema),
    }
    with pytest.raises(ShardError, match="'s2': is the same cluster as shard 's1'"):
        async with ShardedRouter(same, buckets=64):
            pass
    # the names swapped in the configuration
    with pytest.raises(ShardError, match="'s1': the cluster is shard 's2' of its set-up, not 's1'"):
        async with ShardedRouter(configs((b, a), shard_schema), buckets=64):
            pass
    # another bucket count
    with pytest.raises(ShardError, match="set up with 64 buckets, the router expects 1024"):
        async with ShardedRouter(configs(two, shard_schema)):
            pass
    # a shard missing from the configuration: its buckets are owned by none
    with pytest.raises(DirectoryError, match="owned by none of the shards s1"):
        async with ShardedRouter(configs((a,), shard_schema, ("s1",)), buckets=64):
            pass
    # an unreachable shard
    down = {
        **configs(two, shard_schema),
        "s3": RouterConfig(
            hosts=["postgresql://x:secret@127.0.0.1:9/db"], schema=shard_schema, connect_timeout=1
        ),
    }
    with pytest.raises(ShardError, match="'s3': cannot be opened") as unreachable:
        async with ShardedRouter(down, buckets=64):
            pass
    assert "secret" not in str(unreachable.value)
    # two shards claiming one bucket
    owned_by_s1 = next(b for b, o in enumerate(sharded.directory.owners) if o == "s1")  # type: ignore[union-attr]
    b.primary.execute(
        f'INSERT INTO "{shard_schema}".shard_buckets (bucket, epoch) VALUES (%s, 1)',
        (owned_by_s1,),
    )
    with pytest.raises(DirectoryError, match=f"buckets {owned_by_s1} are claimed by two shards"):
        async with ShardedRouter(configs(two, shard_schema), buckets=64):
            pass


async def test_before_the_set_up_a_write_says_to_migrate(
    two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    async with ShardedRouter(configs(two, shard_schema), buckets=64) as r:
        assert r.directory is None
        with pytest.raises(DirectoryError, match="run `pgsessions migrate`"):
            await PostgresSession("early", r).add_items([user("x")])
        await migrate(r)
        await PostgresSession("early", r).add_items([user("x")])


def test_sync_code_through_start_and_run_sync(
    two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    with ShardedRouter.start(configs(two, shard_schema), buckets=64) as r:
        r.run_sync(migrate(r))
        s = PostgresSession("sync-1", r)
        r.run_sync(s.add_items([user("from sync code")]))
        assert [i["content"] for i in r.run_sync(s.get_items())] == ["from sync code"]
    assert r.closed


async def test_a_primary_down_in_one_shard_leaves_the_other_writing(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    a, b = cluster_factory(replicas=1), cluster_factory(replicas=1)
    cfg = configs((a, b), "pgsessions")
    async with ShardedRouter(cfg, buckets=64) as r:
        await migrate(r)
        on1 = [sid_on(r, "s1", "one") for _ in range(3)]
        on2 = [sid_on(r, "s2", "two") for _ in range(5)]
        errors: list[str] = []
        written: dict[str, int] = {sid: 0 for sid in on2}
        stop = False

        async def writer(sid: str) -> None:
            s = PostgresSession(sid, r)
            while not stop:
                try:
                    await s.add_items([user(f"{sid}-{written[sid]}")])
                    written[sid] += 1
                except Exception as exc:  # every error of the healthy shard counts
                    errors.append(repr(exc))
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(writer(sid)) for sid in on2]
        await asyncio.to_thread(a.stop_node, a.primary, "immediate")
        down_at = time.monotonic()
        before = sum(written.values())
        # s1 waits for a primary meanwhile; s2 goes on
        pending = asyncio.create_task(PostgresSession(on1[0], r).add_items([user("waits")]))
        assert await asyncio.to_thread(poll, lambda: sum(written.values()) > before + 100, 20)
        # the directory can still be read meanwhile (s1's part from its replica)
        refreshed = await asyncio.wait_for(r.refresh(), 10)
        assert refreshed is not None and refreshed.counts() == {"s1": 32, "s2": 32}
        await asyncio.to_thread(a.promote, a.replicas[0])
        await asyncio.wait_for(pending, 20)
        stop = True
        await asyncio.gather(*tasks)
        assert errors == []
        for sid in on1:
            await PostgresSession(sid, r).add_items([user("after failover")])
        print(
            f"\ns2 writes while s1 was down: {sum(written.values()) - before} in "
            f"{time.monotonic() - down_at:.1f}s, 0 errors"
        )
        for sid, n in written.items():
            got = await PostgresSession(sid, r).get_items()
            assert len(got) == n


async def test_migrations_apply_by_name_across_a_gap_in_numbering(
    two: tuple[LocalCluster, LocalCluster], shard_schema: str, tmp_path: Path
) -> None:
    """A later-numbered migration applied before earlier ones arrive (0011 before 0009 and
    0010; the ones after 0011 need 0010): versions are applied by name, the earlier ones when
    they arrive."""
    shipped = [m for m in load_migrations() if m.version <= "0011"]
    assert "0011" in {m.version for m in shipped}
    late = {"0009", "0010"}
    for mig in shipped:
        if mig.version not in late:
            (tmp_path / f"{mig.version}_{mig.name}.sql").write_text(mig.sql)
    cfg = configs(two, shard_schema)["s1"]
    async with SessionRouter(cfg) as r:
        assert "0011" in await migrate(r, migrations=tmp_path)
        for mig in shipped:
            if mig.version in late:
                (tmp_path / f"{mig.version}_{mig.name}.sql").write_text(mig.sql)
        assert await migrate(r, migrations=tmp_path) == ["0009", "0010"]
        assert await migrate(r, migrations=tmp_path) == []


def pgsessions_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``pgsessions ARGS...`` in a subprocess, with this test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "pgsessions", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


async def test_cluster_up_shards_prints_the_environment_of_a_sharded_router(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    d = cluster_state_dir("pgs-shards-")
    up = cluster_cli(
        "up", "--shards", "2", "--replicas", "1", "--dir", str(d), "--json", timeout=180
    )
    assert up.returncode == 0, up.stderr
    try:
        info = json.loads(up.stdout)
        assert sorted(info["shards"]) == ["s1", "s2"]
        monkeypatch.setenv("PGSESSIONS_SHARDS", info["env"]["PGSESSIONS_SHARDS"])
        monkeypatch.setenv("PGSESSIONS_BUCKETS", "16")
        migrated = await asyncio.to_thread(pgsessions_cli, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        latest = load_migrations()[-1].version
        assert f"shard 's1': at version {latest}, 8 of 16 buckets" in migrated.stdout
        router = ShardedRouter.from_env(check_interval=0.1)
        assert [c.config.name for c in router.clusters()] == ["s1", "s2"]
        async with router:
            assert router.stats()["buckets"] == {"s1": 8, "s2": 8}
            for shard in router.clusters():  # what a move by logical replication needs
                async with shard.primary_connection() as conn:
                    cur = await conn.execute("SHOW wal_level")
                    assert await cur.fetchone() == ("logical",)
            s = PostgresSession("from-env", router)
            await s.add_items([user("hi")])
            assert len(await s.get_items()) == 1
        status = cluster_cli("status", "--dir", str(d), "--json", timeout=60)
        rows = json.loads(status.stdout)
        assert {n: sorted(r["role"] for r in rows[n]) for n in rows} == {
            "s1": ["primary", "replica"],
            "s2": ["primary", "replica"],
        }
        # the shards can move buckets (wal_level = logical): `pgsessions shard move`
        moved = await asyncio.to_thread(pgsessions_cli, "shard", "move", "0-1", "--to", "s2")
        assert moved.returncode == 0, moved.stderr
        assert ": flipped" in moved.stdout and "moved buckets 0-1 s1 -> s2" in moved.stdout
        shown = await asyncio.to_thread(pgsessions_cli, "shard", "status", "--json")
        assert shown.returncode == 0, shown.stderr
        state = json.loads(shown.stdout)
        assert state["ranges"][:2] == [
            {"first": 0, "last": 1, "owner": "s2", "epoch": 2},
            {"first": 2, "last": 7, "owner": "s1", "epoch": 1},
        ]
        assert state["in_progress"] == [] and state["leftovers"] == []
        shown = await asyncio.to_thread(pgsessions_cli, "shard", "status")
        assert "       0-1  s2  epoch 2" in shown.stdout, shown.stdout
        assert "moves in progress: none" in shown.stdout and "leftovers: none" in shown.stdout
        even = await asyncio.to_thread(pgsessions_cli, "shard", "rebalance", "--json")
        assert even.returncode == 0, even.stderr
        done = [json.loads(line) for line in even.stdout.splitlines()]
        assert [(d["buckets"], d["target"]) for d in done if d["event"] == "moved"] == [
            ([14, 15], "s1")
        ]
        text = cluster_cli("up", "--shards", "2", "--replicas", "1", "--dir", str(d)).stdout
        assert "already running" in text and "export PGSESSIONS_SHARDS=" in text
    finally:
        down = cluster_cli("down", "--dir", str(d), timeout=60)
    assert down.returncode == 0, down.stderr
    assert processes_under(d) == []
    assert not d.exists()


async def test_operations_over_every_shard(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    """Usage totals are exact across shards, an export holds every shard's conversations and
    an import writes each to its owner; prune runs on every shard."""
    sids = [f"ops-{i}" for i in range(12)]
    for n, sid in enumerate(sids):
        s = PostgresSession(sid, sharded)
        await s.add_items([user(sid)])
        await s.store_run_usage(run_result(10 + n))
    now = datetime.now(UTC)
    report = await usage_report(
        sharded, since=now - timedelta(hours=1), until=now + timedelta(hours=1)
    )
    (by_model,) = report.reports["by_model"]
    assert by_model["turns"] == 12 and by_model["sessions"] == 12
    assert by_model["total_tokens"] == sum(11 + n for n in range(12))
    lines = [line async for line in export_lines(sharded)]
    assert len(lines) > 12
    other = f"{shard_schema}_b"
    try:
        async with ShardedRouter(configs(two, other), buckets=64) as target:
            await migrate(target)
            summary = await import_records(target, read_export(lines))
            assert summary.imported == 12 and not summary.errors
            a, b = two
            for sid in sids:
                owner, elsewhere = (a, b) if target._place(sid).shard == "s1" else (b, a)
                assert messages_on(owner, other, sid) == 1
                assert messages_on(elsewhere, other, sid) == 0
            pruned = await prune(target, older_than=timedelta(days=1))
            assert pruned.conversations_deleted == 0 and pruned.transactions >= 0
    finally:
        for c in two:
            drop_schema(c, other)


async def test_the_fence_and_the_callers_setup_share_the_statements_transaction(
    sharded: ShardedRouter,
) -> None:
    setup = ("SELECT set_config('pgsessions.probe', %s, true)", ("set",))
    probe = "SELECT current_setting('pgsessions.probe', true)"
    assert await sharded.execute_read("probe", "k-1", probe, setup=setup) == [("set",)]
    rows, token = await sharded.execute_write("probe", "k-1", probe, setup=[setup])
    assert rows == [("set",)] and token.startswith(f"{sharded._place('k-1').shard}:")
    with pytest.raises(TypeError, match="one conversation at a time"):
        await sharded.execute_write("probe", None, probe)


async def test_every_write_is_fenced_in_its_own_statement(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    a, b = two
    sid = sid_on(sharded, "s2")
    s = PostgresSession(sid, sharded)
    await s.add_items([user("one"), assistant("two")])
    assert (await s.pop_item() or {}).get("content") == "two"
    await s.update_metadata({"k": "v"})
    assert await s.get_metadata() == {"k": "v"}
    await s.clear_session()
    assert await s.get_items() == []
    # taken away from s2 under the router: each kind of write is refused there and redirected
    bucket = bucket_of(sid, 64)
    hand_over(b, a, shard_schema, bucket, 3)
    before = sharded.redirects
    await s.update_metadata({"k": "moved"})
    assert sharded.redirects == before + 1 and sharded._place(sid).shard == "s1"
    await s.add_items([user("on s1")])
    assert messages_on(a, shard_schema, sid) == 1 and messages_on(b, shard_schema, sid) == 0


async def test_metrics_and_health_answer_for_each_shard(sharded: ShardedRouter) -> None:
    registry = CollectorRegistry()
    instrument(sharded, registry)
    for sid in (sid_on(sharded, "s1"), sid_on(sharded, "s2")):
        await PostgresSession(sid, sharded).add_items([user("x")])
    text = generate_latest(registry).decode()
    for shard in ("s1", "s2"):
        assert any(
            line.startswith("pgsessions_routed_total")
            and f'router="{shard}",shard="{shard}"' in line
            and 'reason="write"' in line
            for line in text.splitlines()
        ), shard
        # every series of a shard carries shard=<name>, the snapshot's gauges too
        assert f'pgsessions_primary_known{{router="{shard}",shard="{shard}"}} 1.0' in text
    lines = [x for x in text.splitlines() if x.startswith("pgsessions_")]
    assert lines and all('shard="s' in x for x in lines)
    status, body = Endpoint(sharded, registry).health()
    assert status == 200 and sorted(json.loads(body)["routers"]) == ["s1", "s2"]
    assert {n: h["shard"] for n, h in json.loads(body)["routers"].items()} == {
        "s1": "s1",
        "s2": "s2",
    }
    uninstrument(sharded, registry)
    assert 'router="s1"' not in generate_latest(registry).decode()


async def test_an_application_role_runs_the_fence_and_reads_the_directory(
    two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    """Migrated by an owner role with grant_to: the app role (EXECUTE on routines, SELECT on
    the session tables, pg_monitor) reads the directory, writes fenced and is redirected."""
    tag = uuid.uuid4().hex[:8]
    owner, app = f"t_owner_{tag}", f"t_app_{tag}"
    for c in two:
        for role in (owner, app):
            c.primary.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        c.primary.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(DBNAME), sql.Identifier(owner)
            )
        )
        c.primary.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(app)))

    def as_role(role: str) -> dict[str, RouterConfig]:
        return {
            n: RouterConfig(
                hosts=[make_conninfo(d, user=role) for d in c.dsns()],
                schema=shard_schema,
                check_interval=0.1,
                read_from_replicas=role == app,  # the owner has no pg_monitor
            )
            for n, c in zip(("s1", "s2"), two, strict=True)
        }

    try:
        async with ShardedRouter(as_role(owner), buckets=64) as r:
            await migrate(r, grant_to=app)
        async with ShardedRouter(
            as_role(app), buckets=64, check_reads=True, directory_interval=3600
        ) as r:
            sid = sid_on(r, "s1")
            s = PostgresSession(sid, r)
            await s.add_items([user("as the app")])
            bucket = bucket_of(sid, 64)
            a, b = two
            hand_over(a, b, shard_schema, bucket, 2)
            await s.add_items([user("moved")])
            assert r.redirects == 1 and messages_on(b, shard_schema, sid) == 1
            assert [i["content"] for i in await s.get_items()] == ["moved"]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                async with r.cluster_for(sid).primary_connection() as conn:
                    await conn.execute(
                        f'UPDATE "{shard_schema}".shard_buckets SET epoch = 9 WHERE bucket = %s',
                        (bucket,),
                    )
    finally:
        for c in two:
            drop_schema(c, shard_schema)
            for role in (app, owner):
                c.primary.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
                c.primary.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_writes_in_flight_across_a_flip_land_once_each(
    sharded: ShardedRouter, two: tuple[LocalCluster, LocalCluster], shard_schema: str
) -> None:
    """Writers keep adding to sessions of one bucket while its ownership flips from s1 to
    s2 (the old owner lets go, then the new one takes it): no error, and every acknowledged
    item is stored exactly once, on s1 before the flip and on s2 after it."""
    a, b = two
    first = sid_on(sharded, "s1")
    bucket = bucket_of(first, 64)
    same_bucket = (f"flip-{i}" for i in range(20_000))
    sids = [first, *[sid for sid in same_bucket if bucket_of(sid, 64) == bucket][:3]]
    acked: list[str] = []
    errors: list[str] = []
    stop = False

    async def writer(sid: str) -> None:
        s = PostgresSession(sid, sharded)
        n = 0
        while not stop:
            text = f"{sid}/{n}"
            try:
                await s.add_items([user(text)])
                acked.append(text)
            except Exception as exc:
                errors.append(repr(exc))
            n += 1

    tasks = [asyncio.create_task(writer(sid)) for sid in sids]
    assert await apoll(lambda: _at_least(acked, 40), 20)
    qs = f'"{shard_schema}"'
    await asyncio.to_thread(
        a.primary.execute, f"DELETE FROM {qs}.shard_buckets WHERE bucket = %s", (bucket,)
    )
    await asyncio.to_thread(
        b.primary.execute,
        f"INSERT INTO {qs}.shard_buckets (bucket, epoch) VALUES (%s, 2)",
        (bucket,),
    )
    n_flip = len(acked)
    assert await apoll(lambda: _at_least(acked, n_flip + 40), 20)
    stop = True
    await asyncio.gather(*tasks)
    assert errors == []
    assert sharded.redirects >= 1
    stored: list[str] = []
    for c in two:
        rows = c.primary.execute(
            f"SELECT item->>'content' FROM {qs}.messages WHERE session_id = ANY(%s)", (sids,)
        )
        stored += [r[0] for r in rows]
    assert sorted(stored) == sorted(acked)  # once each, none lost, none doubled
    on_s2 = {r[0] for r in b.primary.execute(f"SELECT item->>'content' FROM {qs}.messages")}
    assert len(on_s2) >= 40 and on_s2 <= set(acked[n_flip - len(sids) :])


async def _at_least(items: list[str], n: int) -> bool:
    return len(items) >= n


async def test_calls_from_another_event_loop_are_served(sharded: ShardedRouter) -> None:
    sids = [sid_on(sharded, "s1"), sid_on(sharded, "s2")]

    def in_a_thread() -> list[int]:
        async def run() -> list[int]:
            out = []
            for sid in sids:
                s = PostgresSession(sid, sharded)
                await s.add_items([user("from another loop")])
                out.append(len(await s.get_items()))
            return out

        return asyncio.run(run())

    assert await asyncio.to_thread(in_a_thread) == [1, 1]
    for sid in sids:  # and the owner loop sees them, read-your-writes kept per shard
        assert len(await PostgresSession(sid, sharded).get_items()) == 1
