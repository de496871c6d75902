"""Tenant isolation: the errors, the per-transaction setting, and turning row-level security
on or off (migration 0006 holds the column, the policies and the SQL functions)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import errors, sql

from ..errors import TenantConflictError, TenantError

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from ..router.protocol import Router

#: the tables whose rows belong to a tenant under row-level security (stored operation
#: results are scoped by the ops view over tenant_ops instead, migration 0009)
TENANT_TABLES = ("conversations", "messages", "usage_logs", "branches")
#: the tenant tables every schema since migration 0006 has (branches come with 0010)
_BASE_TABLES = TENANT_TABLES[:3]


@contextmanager
def tenant_errors(session_id: str | None, tenant: str | None) -> Iterator[None]:
    """Turn the database's tenant refusals into :class:`TenantError` and
    :class:`TenantConflictError`; any other error passes through."""
    try:
        yield
    except (errors.InsufficientPrivilege, errors.ObjectNotInPrerequisiteState) as exc:
        text = str(exc)
        if session_id is not None and "row-level security policy (USING expression)" in text:
            # ON CONFLICT met a conversation row this tenant may not see: another tenant's
            raise TenantConflictError(session_id, tenant) from exc
        if text.startswith("pgsessions: "):
            hint = exc.diag.message_hint
            raise TenantError(f"{text.splitlines()[0]}" + (f". {hint}" if hint else "")) from exc
        raise


def isolation_statements(
    schema: str, on: bool, tables: Sequence[str] = TENANT_TABLES
) -> list[sql.Composed]:
    """ALTER TABLE statements that enable and force (or disable and unforce) row-level
    security on the tenant tables of ``schema`` (``tables``: those that exist)."""
    action = "ENABLE ROW LEVEL SECURITY, FORCE" if on else "DISABLE ROW LEVEL SECURITY, NO FORCE"
    return [
        sql.SQL("ALTER TABLE {}.{} " + action + " ROW LEVEL SECURITY").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        for table in tables
    ]


async def existing_tables(
    conn: AsyncConnection[Any], schema: str, names: Sequence[str] = TENANT_TABLES
) -> list[str]:
    """Which of ``names`` are tables of ``schema`` (a schema migrated only part of the way
    lacks the later ones), in the order of ``names``."""
    cur = await conn.execute(
        "SELECT c.relname::text FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname = ANY(%s)",
        (schema, list(names)),
    )
    found = {row[0] for row in await cur.fetchall()}
    return [name for name in names if name in found]


#: per tenant table: RLS enabled and forced, its policy exists, its owner bypasses RLS
_STATE_SQL = (
    "SELECT c.relname::text, c.relrowsecurity AND c.relforcerowsecurity,"
    " EXISTS (SELECT 1 FROM pg_catalog.pg_policy p"
    " WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation'),"
    " CASE WHEN r.rolsuper OR r.rolbypassrls THEN r.rolname::text END"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner"
    " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname = ANY(%s)"
)


@dataclass(frozen=True)
class IsolationState:
    """Tenant isolation in one schema, as the catalog has it."""

    #: row-level security enabled and forced on every tenant table
    on: bool
    #: every tenant table has its policy (migration 0006 applied)
    ready: bool
    #: owners of tenant tables that would bypass the policies (superuser, BYPASSRLS)
    bypassing: tuple[str, ...]


async def isolation_state(conn: AsyncConnection[Any], schema: str) -> IsolationState:
    """Read :class:`IsolationState` of ``schema`` on ``conn``."""
    cur = await conn.execute(_STATE_SQL, (schema, list(TENANT_TABLES)))
    rows = await cur.fetchall()
    complete = set(_BASE_TABLES) <= {row[0] for row in rows}
    return IsolationState(
        on=complete and all(row[1] for row in rows),
        ready=complete and all(row[2] for row in rows),
        bypassing=tuple(sorted({row[3] for row in rows if row[3] is not None})),
    )


async def tenant_isolation(router: Router) -> bool:
    """Whether tenant isolation is on in the router's schema (read on the primary)."""
    async with router.primary_connection() as conn:
        state = await isolation_state(conn, router.config.schema)
    return state.on
