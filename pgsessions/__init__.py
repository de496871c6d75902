"""pgsessions: a replicated PostgreSQL session store for OpenAI Agents SDK agents."""

from .router import NoPrimaryError, RouterConfig, SessionRouter, SplitBrainError
from .sessions import (
    Migration,
    PostgresSession,
    SessionInfo,
    SessionPage,
    list_sessions,
    migrate,
)

__all__ = [
    "Migration",
    "NoPrimaryError",
    "PostgresSession",
    "RouterConfig",
    "SessionInfo",
    "SessionPage",
    "SessionRouter",
    "SplitBrainError",
    "list_sessions",
    "migrate",
]
