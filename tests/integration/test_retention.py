"""Retention: a TTL makes an idle conversation read as empty (per session or router default);
`pgsessions prune` deletes expired conversations in small batches while writers run, on two
"servers" at once, and prunes old operation ids."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta

import pytest

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.retention import prune
from pgsessions.sessions.schema import quote_ident
from tests.helpers import user


async def backdate(router: SessionRouter, sids: list[str], age: str) -> None:
    """Make the sessions' items and last write ``age`` old (as if idle that long)."""
    s = quote_ident(router.config.schema)
    async with router.primary_connection() as conn:
        await conn.execute(
            f"UPDATE {s}.messages SET created_at = created_at - %s::interval"
            " WHERE session_id = ANY(%s)",
            (age, sids),
        )
        await conn.execute(
            f"UPDATE {s}.conversations SET updated_at = updated_at - %s::interval"
            " WHERE session_id = ANY(%s)",
            (age, sids),
        )
        await conn.execute(
            f"UPDATE {s}.usage_logs SET created_at = created_at - %s::interval"
            " WHERE session_id = ANY(%s)",
            (age, sids),
        )


def test_ttl_is_validated(router_config: RouterConfig) -> None:
    with pytest.raises(ValueError, match="session_ttl"):
        RouterConfig(hosts=router_config.hosts, session_ttl=0)
    router = SessionRouter(router_config)
    with pytest.raises(ValueError, match=r"ttl \(seconds\) must be a finite number > 0"):
        PostgresSession("x", router, ttl=-1)
    with pytest.raises(TypeError, match="ttl must be seconds"):
        PostgresSession("x", router, ttl="1h")  # type: ignore[arg-type]
    assert PostgresSession("x", router, ttl=90).ttl == timedelta(seconds=90)


@pytest.mark.owner_sql
async def test_an_idle_conversation_reads_as_empty_then_shows_only_new_items(
    router: SessionRouter, router_config: RouterConfig
) -> None:
    await migrate(router)
    await PostgresSession("idle", router).add_items([user(f"old {i}") for i in range(4)])
    await backdate(router, ["idle"], "2 hours")
    forever = PostgresSession("idle", router)
    hour = PostgresSession("idle", router, ttl=3600)
    day = PostgresSession("idle", router, ttl=timedelta(days=1))
    assert len(await forever.get_items()) == 4
    assert await hour.get_items() == [] and await hour.get_items(limit=2) == []
    assert len(await day.get_items()) == 4
    async with SessionRouter(
        RouterConfig(hosts=router_config.hosts, schema=router_config.schema, session_ttl=3600)
    ) as default_ttl:
        assert await PostgresSession("idle", default_ttl).get_items() == []
        assert len(await PostgresSession("idle", default_ttl, ttl=86400).get_items()) == 4

    # written again: only what came after the idle gap is read, limit counts those only
    await hour.add_items([user("new 1"), user("new 2"), user("new 3")])
    assert [i["content"] for i in await hour.get_items()] == ["new 1", "new 2", "new 3"]
    assert [i["content"] for i in await hour.get_items(limit=2)] == ["new 2", "new 3"]
    assert [i["content"] for i in await hour.get_items(limit=10)] == ["new 1", "new 2", "new 3"]
    assert len(await forever.get_items()) == 7
    assert await hour._get_compaction_snapshot(5) is None  # would see expired items


@pytest.mark.owner_sql
async def test_prune_on_two_servers_while_sessions_write(
    router_config: RouterConfig, router: SessionRouter
) -> None:
    await migrate(router)
    s = quote_ident(router.config.schema)
    expired = [f"old-{i:02d}" for i in range(20)]
    revived = expired[:3]
    fresh = [f"new-{i}" for i in range(4)]
    for sid in expired:
        n = 1200 if sid == "old-05" else 3  # one big conversation: many small transactions
        await PostgresSession(sid, router).add_items([user(f"{sid} {i}") for i in range(n)])
    for sid in fresh:
        await PostgresSession(sid, router).add_items([user(f"{sid} first")])
    await backdate(router, expired, "40 days")
    async with router.primary_connection() as conn:  # operation ids from yesterday
        await conn.execute(
            f"INSERT INTO {s}.ops (session_id, op_id, created_at)"
            " SELECT 'old-ops', gen_random_uuid(), now() - interval '1 day'"
            " FROM generate_series(1, 250)"
        )

    acked: dict[str, list[str]] = {sid: [] for sid in fresh + revived}
    stop = asyncio.Event()

    async def writer(sid: str) -> None:
        session = PostgresSession(sid, router)
        n = 0
        while not stop.is_set() or n < 3:
            n += 1
            await session.add_items([user(f"{sid} w{n}")])
            acked[sid].append(f"{sid} w{n}")
            await asyncio.sleep(0.005)

    writers = [asyncio.create_task(writer(sid)) for sid in fresh + revived]
    try:
        async with SessionRouter(router_config) as other:
            summaries = await asyncio.gather(
                prune(router, older_than=timedelta(days=30), batch=4, item_batch=100),
                prune(other, older_than=timedelta(days=30), batch=4, item_batch=100),
            )
    finally:
        stop.set()
        await asyncio.gather(*writers)

    deleted = sum(x.conversations_deleted for x in summaries)
    kept = sum(x.conversations_kept_written_again for x in summaries)
    # the revived ones were written again before or after prune picked them: not expired
    # any more (kept whole), or kept with only their new items
    assert deleted == len(expired) - len(revived) and kept <= len(revived)
    assert sum(x.items_deleted for x in summaries) == 1200 + 16 * 3 + 3 * kept, summaries
    # (until migration 0007, 1% of add_items calls also prune operation ids inline)
    assert sum(x.op_ids_deleted for x in summaries) <= 250
    assert sum(x.transactions for x in summaries) > 20  # small transactions, not one
    rows = await router.execute_read(
        "t", None, f"SELECT session_id, item_count FROM {s}.conversations ORDER BY 1", ()
    )
    left = dict(rows)
    assert set(left) == set(fresh + revived)
    for sid in fresh + revived:
        expect = ([f"{sid} first"] if sid in fresh else []) + acked[sid]
        # nothing acknowledged is lost; a 30-day TTL never reads the expired items
        ttl_items = await PostgresSession(sid, router, ttl=timedelta(days=30)).get_items()
        assert [i["content"] for i in ttl_items] == expect, sid
        stored = [i["content"] for i in await PostgresSession(sid, router).get_items()]
        assert stored[len(stored) - len(expect) :] == expect
        assert left[sid] == len(stored)  # counters match what is stored
    async with router.primary_connection() as conn:
        cur = await conn.execute(f"SELECT count(*) FROM {s}.ops WHERE session_id = 'old-ops'")
        assert (await cur.fetchone()) == (0,)


@pytest.mark.owner_sql
async def test_prune_command_reports_what_it_removed(
    router: SessionRouter, cluster: LocalCluster
) -> None:
    await migrate(router)
    for sid in ("a", "b", "c"):
        await PostgresSession(sid, router).add_items([user(sid), user(sid)])
    await backdate(router, ["a", "b"], "3 days")
    s = quote_ident(router.config.schema)
    async with router.primary_connection() as conn:
        await conn.execute(
            f"INSERT INTO {s}.ops (session_id, op_id, created_at)"
            " SELECT 'x', gen_random_uuid(), now() - interval '2 hours'"
            " FROM generate_series(1, 1500)"
        )
    base = [sys.executable, "-m", "pgsessions", "prune", "--hosts", *cluster.dsns(),
            "--schema", router.config.schema]  # fmt: skip
    run = await asyncio.to_thread(
        subprocess.run, [*base, "--older-than", "2d", "--json"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert (out["conversations_deleted"], out["items_deleted"]) == (2, 4)
    assert out["op_ids_deleted"] == 1500  # two batches of prune_ops
    assert await PostgresSession("a", router).get_items() == []
    assert len(await PostgresSession("c", router).get_items()) == 2
    run = await asyncio.to_thread(
        subprocess.run, [*base, "--older-than", "2d"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "deleted 0 (0 items" in run.stdout, run.stdout + run.stderr
    run = await asyncio.to_thread(
        subprocess.run, [*base, "--older-than", "soon"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "not a duration: 'soon'" in run.stderr
