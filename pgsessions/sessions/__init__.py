"""What is stored: schema and migrations, PostgresSession, usage logs, listing."""

from .listing import SessionInfo, SessionPage, list_sessions
from .schema import Migration, applied_migrations, load_migrations, migrate
from .session import PostgresSession

__all__ = [
    "Migration",
    "PostgresSession",
    "SessionInfo",
    "SessionPage",
    "applied_migrations",
    "list_sessions",
    "load_migrations",
    "migrate",
]
