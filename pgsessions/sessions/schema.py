"""Schema migrations: ordered SQL files applied once each, under an advisory lock."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection, errors, sql

from ..errors import TenantError
from ..router.lsn import parse_lsn
from ..router.protocol import SetsUpAfterMigrate
from .sql.fragments import quote_ident
from .sql.migrations import app_grants, migration_sql, migration_sql_quoted
from .tenants import existing_tables, isolation_state, isolation_statements

if TYPE_CHECKING:
    from ..router.protocol import Router

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One schema change: ``version`` orders migrations (``"0001"``), ``sql`` may contain
    several statements and uses ``{schema}`` for the quoted schema name."""

    version: str
    name: str
    sql: str

    def render(self, schema: str) -> str:
        """The SQL with ``{schema}`` replaced by the quoted identifier."""
        return self.sql.replace("{schema}", quote_ident(schema))


def load_migrations(directory: str | Path | Traversable | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: the ones shipped in the package), in order.

    Files are named ``NNNN_name.sql``; other files are ignored.
    """
    root: Traversable | Path
    if directory is None:
        root = resources.files("pgsessions.sessions").joinpath("migrations")
    else:
        root = directory if isinstance(directory, Traversable) else Path(directory)
    found: list[Migration] = []
    for entry in root.iterdir():
        m = _FILE_RE.match(entry.name)
        if m and entry.is_file():
            found.append(Migration(m.group(1), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {root}: {versions}")
    return found


@contextmanager
def migrate_hint(schema: str) -> Iterator[None]:
    """Let PostgreSQL's "no such schema/table/function" errors say what to do: migrate."""
    try:
        yield
    except (errors.InvalidSchemaName, errors.UndefinedTable, errors.UndefinedFunction) as exc:
        exc.add_note(
            f"pgsessions: schema {schema!r} lacks tables or functions this version uses: "
            "run `pgsessions migrate` (or `await pgsessions.migrate(router)`)"
        )
        raise


async def _forced_tables(conn: AsyncConnection[Any], schema: str) -> list[str]:
    cur = await conn.execute(
        "SELECT c.relname::text FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relforcerowsecurity ORDER BY 1",
        (schema,),
    )
    return [row[0] for row in await cur.fetchall()]


def _force(schema: str, tables: Sequence[str], on: bool) -> list[sql.Composed]:
    action = sql.SQL("FORCE" if on else "NO FORCE")
    return [
        sql.SQL("ALTER TABLE {}.{} {} ROW LEVEL SECURITY").format(
            sql.Identifier(schema), sql.Identifier(table), action
        )
        for table in tables
    ]


def _lock_key(schema: str) -> str:
    return f"pgsessions.migrate:{schema}"


async def migrate(
    router: Router,
    *,
    migrations: Sequence[Migration] | str | Path | None = None,
    grant_to: str | None = None,
    tenant_isolation: bool | None = None,
) -> list[str]:
    """Bring the router's schema up to date; returns the versions this call applied.

    Safe to call from many servers at once: each migration runs in its own transaction on
    the primary under ``pg_advisory_xact_lock`` and is recorded in ``schema_migrations``,
    so it is applied exactly once. It returns once the router's reads without a consistency
    token can see the schema (at most about ten monitor check intervals). ``migrations`` (a
    list, or a directory of ``NNNN_*.sql`` files) replaces the packaged set, e.g. to test an
    upgrade. ``grant_to`` names an application role to give exactly what sessions need (see
    :data:`APP_GRANTS`): run migrations as the schema owner, the application as that role.
    ``tenant_isolation`` True turns row-level security per tenant on (enabled and forced on
    conversations, messages and usage_logs), False turns it off, None leaves it as it is;
    turning it on raises :class:`~pgsessions.errors.TenantError` (and changes
    nothing) when those tables belong to a superuser or BYPASSRLS role. A migration applied
    while isolation is on runs with the owner seeing every tenant's rows (the tables are
    unforced and forced again inside its transaction). A router over several clusters
    migrates each of them, one after the other, each under its own lock; the result lists
    the versions applied on any of them. A ShardedRouter then spreads the buckets of a
    fresh set-up evenly over its shards (epoch 1).
    """
    if migrations is None or isinstance(migrations, str | Path):
        todo = load_migrations(migrations)
    else:
        todo = sorted(migrations, key=lambda mig: mig.version)
    applied: set[str] = set()
    for cluster in router.clusters():
        applied.update(await _migrate_cluster(cluster, todo, grant_to, tenant_isolation))
    if isinstance(router, SetsUpAfterMigrate):
        await router.after_migrate()
    return sorted(applied)


async def _migrate_cluster(
    router: Router,
    todo: Sequence[Migration],
    grant_to: str | None,
    tenant_isolation: bool | None,
) -> list[str]:
    """:func:`migrate` on one cluster."""
    schema = router.config.schema
    qs = quote_ident(schema)
    q = migration_sql(schema)
    lock, bootstrap, applied_q, record_q = q.lock, q.bootstrap, q.applied, q.record
    applied: list[str] = []
    async with router.primary_connection() as conn:
        done = await _readable_versions(conn, qs)
        settled = grant_to is None and tenant_isolation is None
        if settled and done is not None and {mig.version for mig in todo} <= done:
            todo = []  # up to date: no lock, no DDL (an application role may call this)
        else:
            async with conn.transaction():
                await conn.execute(lock, (_lock_key(schema),))
                await conn.execute(bootstrap)
                done = {row[0] for row in await (await conn.execute(applied_q)).fetchall()}
        for mig in todo:
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(lock, (_lock_key(schema),))
                cur = await conn.execute(f"{applied_q} WHERE version = %s", (mig.version,))
                if await cur.fetchone() is not None:
                    continue  # another server applied it while we waited for the lock
                forced = await _forced_tables(conn, schema)
                for stmt in _force(schema, forced, False):
                    await conn.execute(stmt)
                await conn.execute(mig.render(schema))
                await conn.execute(record_q, (mig.version, mig.name))
                for stmt in _force(schema, forced, True):
                    await conn.execute(stmt)
            applied.append(mig.version)
        if grant_to is not None:
            async with conn.transaction():
                tables = await existing_tables(conn, schema)
                for stmt in app_grants(schema, grant_to, tables):
                    await conn.execute(stmt)
        if tenant_isolation is not None:
            async with conn.transaction():
                await conn.execute(lock, (_lock_key(schema),))
                state = await isolation_state(conn, schema)
                if tenant_isolation and not state.ready:
                    raise TenantError(
                        f"schema {schema!r} has no tenant policies (migration 0006): "
                        "isolation stays off"
                    )
                if tenant_isolation and state.bypassing:
                    raise TenantError(
                        f"the tables of schema {schema!r} belong to "
                        f"{', '.join(state.bypassing)}, a superuser or BYPASSRLS role: the "
                        "write functions run as that owner and would see every tenant. Migrate "
                        "as a plain owner role (docs/security.md); isolation stays off"
                    )
                tables = await existing_tables(conn, schema)
                for stmt in isolation_statements(schema, tenant_isolation, tables):
                    await conn.execute(stmt)
        cur = await conn.execute("SELECT pg_current_wal_flush_lsn()::text")
        row = await cur.fetchone()
    if row is not None:
        await _wait_until_reads_see(router, parse_lsn(row[0]))
    return applied


async def _readable_versions(conn: AsyncConnection[Any], qs: str) -> set[str] | None:
    """The applied versions, or None when ``schema_migrations`` is missing or not readable."""
    q = migration_sql_quoted(qs)
    cur = await conn.execute(
        "SELECT coalesce(has_table_privilege(to_regclass(%s), 'SELECT'), false)", (q.table,)
    )
    row = await cur.fetchone()
    if not row or not row[0]:
        return None
    cur = await conn.execute(q.applied)
    return {r[0] for r in await cur.fetchall()}


async def _wait_until_reads_see(router: Router, lsn: int) -> None:
    """Return once reads without a token can no longer land on a replica older than ``lsn``.

    Such reads need a replica that has replayed the primary position of the router monitor's
    last check; once that position is past the migrations, a fresh session never meets a
    replica without its tables. Bounded: after about ten check intervals, return anyway.
    """
    config = router.config
    if not getattr(config, "read_from_replicas", True):
        return
    loop = asyncio.get_running_loop()
    give_up = loop.time() + max(1.0, 10 * config.check_interval)
    while True:
        topology = router.topology()
        if not topology.replicas():
            return
        if topology.primary_lsn is not None and topology.primary_lsn >= lsn:
            return
        if loop.time() >= give_up:
            return
        await asyncio.sleep(min(0.02, config.check_interval / 4))


async def applied_migrations(router: Router) -> list[str]:
    """Versions recorded in ``schema_migrations`` (empty when the schema does not exist)."""
    q = migration_sql(router.config.schema)
    async with router.primary_connection() as conn:
        cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (q.table,))
        row = await cur.fetchone()
        if not row or not row[0]:
            return []
        cur = await conn.execute(q.applied_in_order)
        return [r[0] for r in await cur.fetchall()]
