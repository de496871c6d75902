"""pgsessions: a replicated PostgreSQL session store for OpenAI Agents SDK agents."""

from .router import NoPrimaryError, RouterConfig, SessionRouter, SplitBrainError

__all__ = [
    "NoPrimaryError",
    "RouterConfig",
    "SessionRouter",
    "SplitBrainError",
]
