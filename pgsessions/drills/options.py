"""What ``pgsessions drill`` was asked to do (shared by the runner and every scenario)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from .scenarios import SCENARIOS


@dataclass
class DrillOptions:
    """What ``pgsessions drill`` was asked to do."""

    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    sync: bool = False
    sessions: int = 24
    warmup: float = 2.0
    hold: float = 2.5
    after: float = 1.5
    hosts: list[str] = field(default_factory=list)
    trigger: str | None = None
    schema: str = "pgsessions_drill"
    keep_cluster: bool = False
    fsync: bool = True
    break_router: str | None = None
    #: local shards (``--shards N``): one cluster each behind a ShardedRouter; the
    #: scenario's fault hits the first shard
    shards: int = 1
    check_interval: float = 0.2
    failover_timeout: float = 20.0
    recover_timeout: float = 45.0
    #: Patroni scenarios (``--patroni``) and the Patroni cluster's timing
    patroni: bool = False
    patroni_ttl: int = 10
    patroni_loop_wait: int = 2
    #: the router also reads Patroni's REST API (RouterConfig.patroni)
    patroni_rest: bool = False
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))
