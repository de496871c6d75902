"""What is stored: schema and migrations, PostgresSession, usage logs, listing.

`PostgresSession` loads on first use (PEP 562): it imports the Agents SDK, which the
`pgsessions migrate` command and the schema helpers do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import TenantConflictError, TenantError
from .listing import SessionInfo, SessionPage, list_sessions
from .schema import Migration, applied_migrations, load_migrations, migrate
from .tenants import tenant_isolation

if TYPE_CHECKING:
    from .session import PostgresSession

__all__ = [
    "Migration",
    "PostgresSession",
    "SessionInfo",
    "SessionPage",
    "TenantConflictError",
    "TenantError",
    "applied_migrations",
    "list_sessions",
    "load_migrations",
    "migrate",
    "tenant_isolation",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresSession":
        from .session import PostgresSession

        return PostgresSession
    raise AttributeError(f"module 'pgsessions.sessions' has no attribute {name!r}")
