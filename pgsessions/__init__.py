"""pgsessions: a replicated PostgreSQL session store for OpenAI Agents SDK agents.

The public names load on first use (PEP 562), so that `pgsessions --help`, the local cluster
and the CLI do not pay for importing the Agents SDK (about 2 s) until a session is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from .errors import (
        BucketMovedError,
        DirectoryError,
        ExportFormatError,
        MissingPrivilegeError,
        NoEligibleReplicaError,
        NoPrimaryError,
        OverloadedError,
        PreparedStatementsError,
        RouterClosedError,
        RouterError,
        ShardError,
        SplitBrainError,
        TenantConflictError,
        TenantError,
    )
    from .router import RouteKey, Router, RouterConfig, SessionRouter, ShardedRouter
    from .sessions import (
        Migration,
        PostgresSession,
        SessionInfo,
        SessionPage,
        list_sessions,
        migrate,
    )

_WHERE = {
    "BucketMovedError": ".errors",
    "DirectoryError": ".errors",
    "ExportFormatError": ".errors",
    "MissingPrivilegeError": ".errors",
    "NoEligibleReplicaError": ".errors",
    "NoPrimaryError": ".errors",
    "OverloadedError": ".errors",
    "PreparedStatementsError": ".errors",
    "RouteKey": ".router",
    "Router": ".router",
    "RouterClosedError": ".errors",
    "RouterError": ".errors",
    "RouterConfig": ".router",
    "SessionRouter": ".router",
    "ShardError": ".errors",
    "ShardedRouter": ".router",
    "SplitBrainError": ".errors",
    "Migration": ".sessions",
    "PostgresSession": ".sessions",
    "SessionInfo": ".sessions",
    "SessionPage": ".sessions",
    "TenantConflictError": ".errors",
    "TenantError": ".errors",
    "list_sessions": ".sessions",
    "migrate": ".sessions",
}

__all__ = [
    "BucketMovedError",
    "DirectoryError",
    "ExportFormatError",
    "Migration",
    "MissingPrivilegeError",
    "NoEligibleReplicaError",
    "NoPrimaryError",
    "OverloadedError",
    "PostgresSession",
    "PreparedStatementsError",
    "RouteKey",
    "Router",
    "RouterClosedError",
    "RouterConfig",
    "RouterError",
    "SessionInfo",
    "SessionPage",
    "SessionRouter",
    "ShardError",
    "ShardedRouter",
    "SplitBrainError",
    "TenantConflictError",
    "TenantError",
    "list_sessions",
    "migrate",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pgsessions' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
