"""Tenant isolation: the errors, the per-transaction setting, and turning row-level security
on or off (migration 0006 holds the column, the policies and the SQL functions)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import errors, sql

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from ..router import SessionRouter

#: the tables whose rows belong to a tenant (ops holds no tenant data the app role can read)
TENANT_TABLES = ("conversations", "messages", "usage_logs", "branches")


class TenantError(Exception):
    """Tenant isolation refused the call, and nothing was written: a tenant was given but the
    schema does not enforce isolation (off, or bypassed by a superuser or BYPASSRLS role),
    isolation is on and no tenant was given, or ``resolve_tenant`` answered a tenant other
    than the session's. When the database refused, its error is the cause."""


class TenantConflictError(TenantError):
    """The session id already belongs to another tenant. Session ids are unique across
    tenants; nothing of the other tenant's session was read, changed or returned, and
    nothing was written."""

    def __init__(self, session_id: str, tenant: str | None) -> None:
        self.session_id = session_id
        self.tenant = tenant
        super().__init__(
            f"session id {session_id!r} belongs to another tenant than {tenant!r} (session ids "
            "are unique across tenants): nothing was written"
        )


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


def isolation_statements(schema: str, on: bool) -> list[sql.Composed]:
    """ALTER TABLE statements that enable and force (or disable and unforce) row-level
    security on the tenant tables of ``schema``."""
    action = "ENABLE ROW LEVEL SECURITY, FORCE" if on else "DISABLE ROW LEVEL SECURITY, NO FORCE"
    return [
        sql.SQL("ALTER TABLE {}.{} " + action + " ROW LEVEL SECURITY").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        for table in TENANT_TABLES
    ]


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
    complete = len(rows) == len(TENANT_TABLES)
    return IsolationState(
        on=complete and all(row[1] for row in rows),
        ready=complete and all(row[2] for row in rows),
        bypassing=tuple(sorted({row[3] for row in rows if row[3] is not None})),
    )


async def tenant_isolation(router: SessionRouter) -> bool:
    """Whether tenant isolation is on in the router's schema (read on the primary)."""
    async with router.primary_connection() as conn:
        state = await isolation_state(conn, router.config.schema)
    return state.on
