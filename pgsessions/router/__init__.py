"""WHERE a statement runs: topology, pools, health monitor, replica choice, tokens, failover."""

from ..errors import (
    MissingPrivilegeError,
    NoEligibleReplicaError,
    NoPrimaryError,
    OverloadedError,
    PreparedStatementsError,
    RouterClosedError,
    RouterError,
    SplitBrainError,
)
from .config import RouterConfig
from .counters import RouterObserver
from .protocol import RouteKey, Router
from .session_router import SessionRouter
from .topology import HostState, Topology

__all__ = [
    "HostState",
    "MissingPrivilegeError",
    "NoEligibleReplicaError",
    "NoPrimaryError",
    "OverloadedError",
    "PreparedStatementsError",
    "RouteKey",
    "Router",
    "RouterClosedError",
    "RouterConfig",
    "RouterError",
    "RouterObserver",
    "SessionRouter",
    "SplitBrainError",
    "Topology",
]
