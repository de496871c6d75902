"""Read-your-writes across a bucket move, on real clusters: the target shard has two
replicas, one of them behind the flip. A session's token names the old owner, so after the
move only the router's own view of the move keeps its reads from the replica behind."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from pgsessions import PostgresSession, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.router import RouterConfig, ShardedRouter
from pgsessions.router.placement import bucket_of
from pgsessions.shards import move_buckets
from tests.conftest import drop_schema
from tests.helpers import apoll, user
from tests.lab.test_shard_move import _drop_move_objects

BUCKETS = 16


@pytest.fixture(scope="module")
def two() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    logical = {"wal_level": "logical"}
    a = LocalCluster(replicas=0, fsync=False, settings=logical)
    b = LocalCluster(replicas=2, fsync=False, sync=False, settings=logical)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def schema(two: tuple[LocalCluster, LocalCluster]) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    for c in two:
        _drop_move_objects(c)
    for c in two:
        drop_schema(c, name)


def configs(two: tuple[LocalCluster, LocalCluster], schema: str) -> dict[str, RouterConfig]:
    return {
        n: RouterConfig(hosts=c.dsns(), schema=schema, failover_timeout=30, catch_up_wait=0.2)
        for n, c in zip(("s1", "s2"), two, strict=True)
    }


@pytest.fixture
async def mover(
    two: tuple[LocalCluster, LocalCluster], schema: str
) -> AsyncIterator[ShardedRouter]:
    async with ShardedRouter(configs(two, schema), buckets=BUCKETS) as r:
        await migrate(r)
        yield r


async def test_a_session_reads_its_moved_writes_though_the_new_owners_replica_is_behind(
    mover: ShardedRouter, two: tuple[LocalCluster, LocalCluster], schema: str
) -> None:
    _, b = two
    behind = b.replicas[0]
    d = mover.directory
    assert d is not None
    bucket = next(x for x in range(BUCKETS) if d.owners[x] == "s1")
    sid = next(f"rw-{i}" for i in range(100_000) if bucket_of(f"rw-{i}", BUCKETS) == bucket)
    # a router whose monitors last looked at the shards when it opened (a minute between
    # checks): nothing but its view of the move tells it that s2 holds newer rows
    slow = {n: dataclasses.replace(c, check_interval=60.0) for n, c in configs(two, schema).items()}
    async with ShardedRouter(slow, buckets=BUCKETS) as app:
        s = PostgresSession(sid, app)
        await s.add_items([user("before the move")])
        assert s.consistency_token is not None and s.consistency_token.startswith("s1:")
        b.pause_replay(behind)
        try:
            await move_buckets(mover, [bucket], to="s2")

            async def flipped() -> bool:
                # the directory is read where reads go: the replica behind still shows the
                # bucket owned by none, the other one shows the flip
                await app.refresh()
                return app.directory is not None and app.directory.owners[bucket] == "s2"

            assert await apoll(flipped, within=10.0)
            # the move's rows are on s2's primary, not on the replica behind
            assert behind.execute(f'SELECT count(*) FROM "{schema}".messages')[0][0] == 0
            # each read may be planned on either replica: 20 of them, none stale
            for _ in range(20):
                assert [i["content"] for i in await s.get_items()] == ["before the move"]
        finally:
            b.resume_replay(behind)
