"""The statements of the migration runner (sessions/schema.py): the schema and its
``schema_migrations`` table, the lock every server takes, what is applied."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from psycopg import sql

from ..tenants import TENANT_TABLES
from .fragments import quote_ident


@dataclass(frozen=True)
class MigrationStatements:
    #: the qualified name of schema_migrations (for to_regclass)
    table: str
    lock: str
    bootstrap: str
    applied: str
    applied_in_order: str
    record: str


def migration_sql(schema: str) -> MigrationStatements:
    """The runner's statements for ``schema``."""
    return migration_sql_quoted(quote_ident(schema))


@lru_cache(maxsize=16)
def migration_sql_quoted(qs: str) -> MigrationStatements:
    """:func:`migration_sql` for a schema name already quoted."""
    return MigrationStatements(
        table=f"{qs}.schema_migrations",
        lock="SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        bootstrap=(
            # Waiting on an advisory lock takes in no catalog changes: a schema another server
            # created meanwhile could still be missing from this backend's caches (a name
            # looked up earlier, e.g. by _readable_versions, is cached as absent), and CREATE
            # SCHEMA IF NOT EXISTS would then fail with a unique violation. Locking a
            # relation does.
            "LOCK TABLE pg_catalog.pg_namespace IN ACCESS SHARE MODE;"
            f" CREATE SCHEMA IF NOT EXISTS {qs};"
            f" CREATE TABLE IF NOT EXISTS {qs}.schema_migrations ("
            " version text PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        ),
        applied=f"SELECT version FROM {qs}.schema_migrations",
        applied_in_order=f"SELECT version FROM {qs}.schema_migrations ORDER BY version",
        record=f"INSERT INTO {qs}.schema_migrations (version, name) VALUES (%s, %s)",
    )


# What an application role needs, and nothing more: writes are SECURITY DEFINER functions
# (migration 0005), reads are plain SELECTs on these tables (also on replicas: grants
# replicate). No INSERT, UPDATE, DELETE, TRUNCATE or DDL.
APP_GRANTS = (
    "GRANT USAGE ON SCHEMA {schema} TO {role}",
    "GRANT EXECUTE ON ALL ROUTINES IN SCHEMA {schema} TO {role}",
    "GRANT SELECT ON {tables} TO {role}",
    # so that servers starting as this role may call migrate(): a no-op once up to date
    "GRANT SELECT ON {schema}.schema_migrations TO {role}",
)


def app_grants(schema: str, role: str, tables: Sequence[str] = TENANT_TABLES) -> list[sql.Composed]:
    """The GRANT statements that let ``role`` run sessions on ``schema`` (``tables``: the
    session tables it reads, those that exist)."""
    names = {
        "schema": sql.Identifier(schema),
        "role": sql.Identifier(role),
        "tables": sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables),
    }
    return [sql.SQL(text).format(**names) for text in APP_GRANTS]
