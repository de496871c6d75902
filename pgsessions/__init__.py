"""pgsessions: a replicated PostgreSQL session store for OpenAI Agents SDK agents.

The public names load on first use (PEP 562), so that `pgsessions --help`, the local cluster
and the CLI do not pay for importing the Agents SDK (about 2 s) until a session is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from .router import (
        MissingPrivilegeError,
        NoEligibleReplicaError,
        NoPrimaryError,
        OverloadedError,
        PreparedStatementsError,
        RouterClosedError,
        RouterConfig,
        RouterError,
        SessionRouter,
        SplitBrainError,
    )
    from .sessions import (
        Migration,
        PostgresSession,
        SessionInfo,
        SessionPage,
        TenantConflictError,
        TenantError,
        list_sessions,
        migrate,
    )

_WHERE = {
    "MissingPrivilegeError": ".router",
    "NoEligibleReplicaError": ".router",
    "NoPrimaryError": ".router",
    "OverloadedError": ".router",
    "PreparedStatementsError": ".router",
    "RouterClosedError": ".router",
    "RouterError": ".router",
    "RouterConfig": ".router",
    "SessionRouter": ".router",
    "SplitBrainError": ".router",
    "Migration": ".sessions",
    "PostgresSession": ".sessions",
    "SessionInfo": ".sessions",
    "SessionPage": ".sessions",
    "TenantConflictError": ".sessions",
    "TenantError": ".sessions",
    "list_sessions": ".sessions",
    "migrate": ".sessions",
}

__all__ = [
    "Migration",
    "MissingPrivilegeError",
    "NoEligibleReplicaError",
    "NoPrimaryError",
    "OverloadedError",
    "PostgresSession",
    "PreparedStatementsError",
    "RouterClosedError",
    "RouterConfig",
    "RouterError",
    "SessionInfo",
    "SessionPage",
    "SessionRouter",
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
