"""The bucket of every row (migration 0012): computed in SQL exactly as in Python, stored with
every row of a conversation in every table, part of each primary key (the replica identity
that a publication's row filter on the bucket needs), recomputed when a set-up is made with
another bucket count, and what logical replication of a few buckets copies."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.export import export_lines, import_records, read_export
from pgsessions.router.placement import DEFAULT_BUCKETS, bucket_of
from pgsessions.sessions import load_migrations
from pgsessions.sessions.schema import quote_ident
from tests.helpers import apoll, assistant, run_result, user

#: every table that holds a conversation's rows
BUCKET_TABLES = ("conversations", "messages", "usage_logs", "branches", "tenant_ops")


def _ids(n: int, seed: int = 12) -> list[str]:
    """Fixed and random session ids: empty, ASCII, accents, CJK, emoji, long, any plane
    (no NUL and no surrogates: PostgreSQL text holds neither)."""
    rng = random.Random(seed)
    fixed = [
        "",
        "a",
        "conv-42",
        "é",
        "e\u0301",
        "日本語のセッション",
        "🙂" * 10,
        "x" * 3000,
        "\u00a0",
        "tenant/42:thread 7",
        "\U0010fffd",
    ]
    out = list(fixed)
    while len(out) < n:
        chars = []
        for _ in range(rng.randrange(1, 40)):
            cp = rng.choice(
                (
                    rng.randrange(0x20, 0x7F),
                    rng.randrange(0xA0, 0xD800),
                    rng.randrange(0xE000, 0x110000),
                )
            )
            chars.append(chr(cp))
        out.append("".join(chars))
    return out


async def rows(router: SessionRouter, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with router.primary_connection() as conn:
        cur = await conn.execute(query.replace("{s}", quote_ident(router.config.schema)), params)
        return await cur.fetchall() if cur.description is not None else []


async def fill(router: SessionRouter, sid: str) -> PostgresSession:
    """A conversation with rows in every table: items, usage, a branch, metadata, a pop."""
    s = PostgresSession(sid, router, metadata={"team": "red"})
    await s.add_items([user("question"), assistant("answer")])
    await s.store_run_usage(run_result(10))
    await s.create_branch_from_turn(1, "other")
    await s.add_items([user("on the branch")])
    await s.switch_to_branch("main")
    await s.update_metadata({"more": 1})
    await s.add_items([user("again")])
    await s.pop_item()
    return s


async def wrong_buckets(router: SessionRouter, buckets: int) -> dict[str, int]:
    """Per table: rows whose bucket is not bucket_of(session_id, buckets), and all rows."""
    out: dict[str, int] = {}
    for table in BUCKET_TABLES:
        got = await rows(router, f"SELECT session_id, bucket FROM {{s}}.{table}")
        assert got, table
        out[table] = sum(1 for sid, b in got if b != bucket_of(sid, buckets))
    return out


async def test_sql_bucket_of_equals_placement(router: SessionRouter) -> None:
    await migrate(router)
    ids = _ids(3000)
    counts = [1, 2, 3, 7, 16, 1000, DEFAULT_BUCKETS, 4096, 65536, 2**31 - 1]
    got = await rows(
        router,
        "SELECT i, n, {s}.bucket_of(i, n) FROM unnest(%s::text[]) AS i, unnest(%s::integer[]) AS n",
        ids,
        counts,
    )
    assert len(got) == len(ids) * len(counts)
    wrong = [(i, n, b) for i, n, b in got if b != bucket_of(i, n)]
    assert wrong == []
    for bad in (0, -3):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="buckets must be"):
            await rows(router, "SELECT {s}.bucket_of('x', %s)", bad)
    # the empty id, as in Python; NULL gives NULL
    assert await rows(router, "SELECT {s}.bucket_of('', 1024), {s}.bucket_of(NULL, 1024)") == [
        (bucket_of("", 1024), None)
    ]


@pytest.mark.owner_sql
async def test_every_row_of_a_conversation_carries_its_bucket(router: SessionRouter) -> None:
    await migrate(router)
    for sid in ("conv-1", "ünïcødé-2", "🙂"):
        await fill(router, sid)
    assert await wrong_buckets(router, DEFAULT_BUCKETS) == dict.fromkeys(BUCKET_TABLES, 0)
    # the bucket is the last column of each primary key (the default replica identity)
    keys = await rows(
        router,
        "SELECT c.relname::text, array_agg(a.attname::text ORDER BY k.ord)"
        " FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid"
        " CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(att, ord)"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.att"
        " WHERE x.indisprimary AND c.relnamespace = %s::regnamespace"
        " AND c.relname = ANY(%s) GROUP BY 1",
        router.config.schema,
        list(BUCKET_TABLES),
    )
    assert {t: cols[-1] for t, cols in keys} == dict.fromkeys(BUCKET_TABLES, "bucket")
    identity = await rows(
        router,
        "SELECT relname::text, relreplident FROM pg_class"
        " WHERE relnamespace = %s::regnamespace AND relname = ANY(%s)",
        router.config.schema,
        list(BUCKET_TABLES),
    )
    assert {r for _, r in identity} == {"d"}
    # a bucket's conversations are one index range
    plan = await rows(
        router,
        "EXPLAIN (COSTS OFF) SELECT session_id FROM {s}.conversations WHERE bucket = 3"
        " ORDER BY session_id",
    )
    assert "conversations_bucket_idx" in "\n".join(r[0] for r in plan)


@pytest.mark.owner_sql
async def test_the_upgrade_fills_the_rows_already_there(router: SessionRouter) -> None:
    before = [m for m in load_migrations() if m.version < "0012"]
    await migrate(router, migrations=before)
    s = await fill(router, "before-0012")
    items = await s.get_items()
    assert (await migrate(router))[:1] == ["0012"]  # and any later migration
    assert await wrong_buckets(router, DEFAULT_BUCKETS) == dict.fromkeys(BUCKET_TABLES, 0)
    assert await s.get_items() == items
    await s.add_items([user("after")])
    assert await s.get_items() == [*items, user("after")]


@pytest.mark.owner_sql
async def test_a_set_up_with_another_bucket_count_recomputes_the_rows(
    router: SessionRouter,
) -> None:
    await migrate(router)
    for sid in ("r-1", "r-2", "r-3", "日本"):
        await fill(router, sid)
    await rows(router, "INSERT INTO {s}.shard_identity (name, buckets) VALUES ('s1', 16)")
    assert await wrong_buckets(router, 16) == dict.fromkeys(BUCKET_TABLES, 0)
    # new rows follow the set-up's count
    await fill(router, "r-new")
    assert await wrong_buckets(router, 16) == dict.fromkeys(BUCKET_TABLES, 0)
    assert await rows(router, "SELECT {s}.bucket_count()") == [(16,)]


@pytest.mark.owner_sql
async def test_a_set_up_with_the_default_count_changes_no_row(router: SessionRouter) -> None:
    await migrate(router)
    await fill(router, "d-1")
    before = await rows(router, "SELECT xmin::text FROM {s}.conversations")
    await rows(router, "INSERT INTO {s}.shard_identity (name, buckets) VALUES ('s1', 1024)")
    assert await rows(router, "SELECT xmin::text FROM {s}.conversations") == before


@pytest.mark.owner_sql
async def test_an_export_carries_no_bucket_and_an_import_computes_it(
    router: SessionRouter,
) -> None:
    """The bucket is derived, not exported: an import into a set-up with another bucket
    count stores the rows with the buckets of that count, and the export is the same."""
    await migrate(router)
    for sid in ("e-1", "e-2", "ë-3"):
        await fill(router, sid)
    lines = [line async for line in export_lines(router)]
    assert not any('"bucket"' in line for line in lines)
    for sid in ("e-1", "e-2", "ë-3"):
        await PostgresSession(sid, router).clear_session()
    await rows(router, "INSERT INTO {s}.shard_identity (name, buckets) VALUES ('s1', 64)")
    summary = await import_records(router, read_export(lines))
    assert summary.ok and summary.imported == 3
    wrong = await wrong_buckets(router, 64)
    assert wrong == dict.fromkeys(BUCKET_TABLES, 0)
    again = [line async for line in export_lines(router)]
    assert again[1:] == lines[1:]


def _publish_and_write(dsn: str, schema: str, buckets: list[int], sids: list[str]) -> None:
    """A publication filtered on buckets, then updates and deletes on every table."""
    s = sql.Identifier(schema)
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = sql.SQL(", ").join(
            sql.SQL("{}.{} WHERE (bucket = ANY ({}))").format(
                s, sql.Identifier(t), sql.Literal(buckets)
            )
            for t in BUCKET_TABLES
        )
        conn.execute(sql.SQL("CREATE PUBLICATION pgs_move FOR TABLE {}").format(tables))
        for sid in sids:
            conn.execute(
                sql.SQL(
                    "UPDATE {}.conversations SET metadata = metadata WHERE session_id = %s"
                ).format(s),
                (sid,),
            )
            for t in BUCKET_TABLES[1:]:
                conn.execute(
                    sql.SQL(
                        "UPDATE {}.{} SET created_at = created_at WHERE session_id = %s"
                    ).format(s, sql.Identifier(t)),
                    (sid,),
                )
            conn.execute(
                sql.SQL("DELETE FROM {}.usage_logs WHERE session_id = %s").format(s), (sid,)
            )


@pytest.mark.owner_sql
async def test_a_publication_filtered_on_buckets_copies_those_buckets(
    cluster_factory: Callable[..., LocalCluster],
) -> None:
    source = cluster_factory(replicas=0, settings={"wal_level": "logical"})
    target = cluster_factory(replicas=0)
    schema = "bucket_move"
    sids = [f"conv-{i}" for i in range(40)]
    moving = sorted({bucket_of(sid) for sid in sids[:5]})
    async with (
        SessionRouter(RouterConfig(hosts=source.dsns(), schema=schema)) as src,
        SessionRouter(RouterConfig(hosts=target.dsns(), schema=schema)) as dst,
    ):
        await migrate(src)
        await migrate(dst)
        for sid in sids:
            await fill(src, sid)
        # the filter's column is in every table's replica identity: updates and deletes of
        # published rows go on (without it PostgreSQL refuses them)
        await asyncio.to_thread(_publish_and_write, source.primary.dsn, schema, moving, sids)
        with psycopg.connect(source.primary.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE no_bucket_key (id int PRIMARY KEY, bucket int)")
            conn.execute("INSERT INTO no_bucket_key VALUES (1, 1)")
            conn.execute("CREATE PUBLICATION pgs_bad FOR TABLE no_bucket_key WHERE (bucket = 1)")
            with pytest.raises(psycopg.errors.InvalidColumnReference, match="replica identity"):
                conn.execute("UPDATE no_bucket_key SET bucket = 1")
        with psycopg.connect(target.primary.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE SUBSCRIPTION pgs_move CONNECTION {} PUBLICATION pgs_move").format(
                    sql.Literal(source.primary.dsn)
                )
            )
        expect = [s for s in sids if bucket_of(s) in moving]
        assert len(expect) >= 5

        async def copied() -> bool:
            got = await rows(dst, "SELECT session_id FROM {s}.conversations ORDER BY 1")
            return [r[0] for r in got] == sorted(expect)

        assert await apoll(copied, within=30)
        # later writes of those buckets stream, others do not
        await PostgresSession(expect[0], src).add_items([user("streamed")])
        await PostgresSession(sids[-1], src).add_items([user("stays")])
        await PostgresSession(expect[1], src).clear_session()

        async def streamed() -> bool:
            got = await rows(
                dst,
                "SELECT count(*) FILTER (WHERE session_id = %s),"
                " count(*) FILTER (WHERE session_id = %s) FROM {s}.messages",
                expect[0],
                expect[1],
            )
            want = await rows(
                src, "SELECT count(*) FROM {s}.messages WHERE session_id = %s", expect[0]
            )
            return got == [(want[0][0], 0)]

        assert await apoll(streamed, within=30)
        for table in BUCKET_TABLES:
            got = await rows(dst, f"SELECT DISTINCT bucket FROM {{s}}.{table}")
            assert {b for (b,) in got} <= set(moving), table
        with psycopg.connect(target.primary.dsn, autocommit=True) as conn:
            conn.execute("DROP SUBSCRIPTION pgs_move")
