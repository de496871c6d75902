"""Migrations: packaged SQL files, applied once each, concurrently safe, upgradable."""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgsessions import PostgresSession, RouterConfig, SessionRouter, list_sessions, migrate
from pgsessions.cli import COMMANDS
from pgsessions.cli.migrate import add_migrate_command
from pgsessions.sessions import Migration, applied_migrations, load_migrations
from pgsessions.sessions.schema import quote_ident

PACKAGED = Path(__file__).parent.parent.parent / "pgsessions" / "sessions" / "migrations"


async def scalar(router: SessionRouter, query: str, *params: Any) -> Any:
    async with router.primary_connection() as conn:
        cur = await conn.execute(query.replace("{s}", quote_ident(router.config.schema)), params)
        row = await cur.fetchone()
        return None if row is None else row[0]


def test_packaged_migrations_load_in_order() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations][:1] == ["0001"]
    assert [m.version for m in migrations] == sorted(m.version for m in migrations)
    assert all("{schema}" in m.sql for m in migrations)
    assert migrations[0].render('we"ird').count('"we""ird".conversations') >= 1


def test_duplicate_versions_are_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0001_b.sql").write_text("SELECT 2")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.raises(ValueError, match="duplicate"):
        load_migrations(tmp_path)


async def test_migrate_is_idempotent(router: SessionRouter) -> None:
    assert await applied_migrations(router) == []
    first = await migrate(router)
    assert first == [m.version for m in load_migrations()]
    assert await migrate(router) == []
    assert await applied_migrations(router) == first
    for table in ("conversations", "messages", "usage_logs", "schema_migrations", "ops"):
        assert await scalar(router, f"SELECT to_regclass('{{s}}.{table}') IS NOT NULL")


async def test_an_unmigrated_schema_says_to_migrate(router: SessionRouter) -> None:
    """Never migrated (no schema at all), then only half there (no functions yet)."""
    s = PostgresSession("nobody-migrated", router)
    missing = (psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedTable)
    calls = (s.get_items(), s.add_items([{"role": "user", "content": "hi"}]), list_sessions(router))
    for call in calls:
        with pytest.raises(missing) as info:
            await call
        assert "run `pgsessions migrate`" in "\n".join(info.value.__notes__)
    async with router.primary_connection() as conn:
        await conn.execute(f"CREATE SCHEMA {quote_ident(router.config.schema)}")
    # get_items reads through a function of migration 0010
    with pytest.raises((psycopg.errors.UndefinedTable, psycopg.errors.UndefinedFunction)) as info:
        await s.get_items()
    assert "run `pgsessions migrate`" in "\n".join(info.value.__notes__)


async def test_ten_servers_migrating_at_once_apply_each_version_once(
    router_config: RouterConfig,
) -> None:
    # a non-idempotent step: applied twice it would insert two rows
    extra = [
        Migration("9002", "counter", "CREATE TABLE {schema}.counter (n int)"),
        Migration("9003", "count_once", "INSERT INTO {schema}.counter VALUES (1)"),
    ]
    migrations = load_migrations() + extra
    routers = [SessionRouter(router_config) for _ in range(10)]
    await asyncio.gather(*(r.open() for r in routers))
    try:
        results = await asyncio.gather(*(migrate(r, migrations=migrations) for r in routers))
    finally:
        await asyncio.gather(*(r.close() for r in routers))
    applied = sorted(v for result in results for v in result)
    assert applied == sorted(m.version for m in migrations)
    async with SessionRouter(router_config) as r:
        assert await scalar(r, "SELECT count(*) FROM {s}.counter") == 1
        assert await scalar(r, "SELECT count(*) FROM {s}.schema_migrations") == len(migrations)


async def test_a_newer_version_migrates_an_older_schema(
    router: SessionRouter, tmp_path: Path
) -> None:
    # the "old package": only the initial migration
    old = [m for m in load_migrations() if m.version == "0001"]
    assert await migrate(router, migrations=old) == ["0001"]
    s = PostgresSession("before-upgrade", router)
    # this version's add_items needs a later migration: the error says what to do
    with pytest.raises(psycopg.errors.UndefinedFunction) as info:
        await s.add_items([{"role": "user", "content": "new code, old schema"}])
    assert "pgsessions migrate" in "\n".join(getattr(info.value, "__notes__", []))
    # what the old package wrote: its add_items function, which 0001 created
    async with router.primary_connection() as conn:
        await conn.execute(
            "SELECT {s}.add_items(%s, gen_random_uuid(), %s::text[]::json[], %s, %s, NULL)".replace(
                "{s}", quote_ident(router.config.schema)
            ),
            ("before-upgrade", ['{"role": "user", "content": "old"}'], ["user"], ["message"]),
        )
    # the "new package": a directory with the shipped files plus a later one
    for f in PACKAGED.glob("*.sql"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "9001_region.sql").write_text(
        "ALTER TABLE {schema}.conversations ADD COLUMN region text NOT NULL DEFAULT 'none';\n"
        "CREATE INDEX conversations_region_idx ON {schema}.conversations (region);\n"
    )
    newer = await migrate(router, migrations=tmp_path)
    assert newer[-1] == "9001"
    assert "0001" not in newer
    assert await scalar(router, "SELECT region FROM {s}.conversations") == "none"
    assert await s.get_items() == [{"role": "user", "content": "old"}]
    await s.add_items([{"role": "assistant", "content": "new"}])
    assert len(await s.get_items()) == 2
    assert await migrate(router, migrations=tmp_path) == []


async def test_a_failing_migration_rolls_back_and_keeps_earlier_ones(
    router: SessionRouter,
) -> None:
    migrations = [
        *load_migrations(),
        Migration("9002", "fine", "CREATE TABLE {schema}.fine (x int)"),
        Migration("9003", "broken", "CREATE TABLE {schema}.half (x int); SELECT no_such_fn()"),
        Migration("9004", "later", "CREATE TABLE {schema}.later (x int)"),
    ]
    with pytest.raises(psycopg.errors.UndefinedFunction):
        await migrate(router, migrations=migrations)
    applied = await applied_migrations(router)
    assert applied[-1] == "9002"
    assert await scalar(router, "SELECT to_regclass('{s}.half')") is None
    assert await scalar(router, "SELECT to_regclass('{s}.later')") is None
    fixed = [*migrations[:-2], Migration("9003", "broken", "SELECT 1"), migrations[-1]]
    assert await migrate(router, migrations=fixed) == ["9003", "9004"]


async def test_migrate_command(router_config: RouterConfig) -> None:
    """`pgsessions migrate --hosts ... --schema ...` (the sub-command, run in a thread)."""
    assert any(add is add_migrate_command for _, add in COMMANDS)
    parser = argparse.ArgumentParser()
    add_migrate_command(parser.add_subparsers())
    args = parser.parse_args(
        ["migrate", "--hosts", *router_config.host_list, "--schema", router_config.schema]
    )
    assert await asyncio.to_thread(args.func, args) == 0
    assert await asyncio.to_thread(args.func, args) == 0  # again: nothing to apply
    async with SessionRouter(router_config) as r:
        assert await applied_migrations(r) == [m.version for m in load_migrations()]
    bad = parser.parse_args(["migrate", "--hosts", "host=/nonexistent port=1 connect_timeout=1"])
    assert await asyncio.to_thread(bad.func, bad) == 1
