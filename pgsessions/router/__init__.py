"""WHERE a statement runs: topology, pools, health monitor, replica choice, tokens, failover."""

from ..errors import (
    BucketMovedError,
    DirectoryError,
    MissingPrivilegeError,
    NoEligibleReplicaError,
    NoPrimaryError,
    OverloadedError,
    PreparedStatementsError,
    RouterClosedError,
    RouterError,
    ShardError,
    SplitBrainError,
)
from .config import RouterConfig
from .counters import RouterObserver
from .protocol import RouteKey, Router
from .session_router import SessionRouter
from .sharded import ShardedRouter
from .topology import HostState, Topology

__all__ = [
    "BucketMovedError",
    "DirectoryError",
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
    "ShardError",
    "ShardedRouter",
    "SplitBrainError",
    "Topology",
]
