"""`pgsessions status` on a sharded set-up: each shard's hosts, buckets and sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..router.lsn import format_lsn
from ..router.sharded import ShardedRouter
from ..router.topology import Topology
from .status import COLUMNS, align, headline, host_cells, host_json


@dataclass(frozen=True)
class ShardState:
    """One shard as ``status`` shows it."""

    name: str
    topology: Topology
    buckets: int
    #: conversations stored on the shard (None: it could not be counted)
    sessions: int | None
    failovers: int


@dataclass(frozen=True)
class ShardReport:
    """Every shard of a sharded router, in the order of their names."""

    shards: list[ShardState]
    total_buckets: int

    @property
    def healthy(self) -> bool:
        """Every shard has a primary and none a split brain."""
        return all(s.topology.primary and not s.topology.split_brain for s in self.shards)

    def format(self) -> str:
        """One line per shard, then the host table with a shard column."""
        lines = [
            f"shard {s.name}: {s.buckets} of {self.total_buckets} buckets, "
            f"{'-' if s.sessions is None else s.sessions} sessions, {headline(s.topology)}"
            for s in self.shards
        ]
        rows = [["shard", *(title for _, title in COLUMNS)]]
        rows += [[s.name, *host_cells(h)] for s in self.shards for h in s.topology.hosts]
        return "\n".join([*lines, *align(rows)])

    def as_json(self) -> dict[str, Any]:
        """``shards`` by name (buckets, sessions, primary, ...) and ``hosts`` with a shard."""
        return {
            "buckets": self.total_buckets,
            "sessions": sum(s.sessions or 0 for s in self.shards),
            "shards": {
                s.name: {
                    "buckets": s.buckets,
                    "sessions": s.sessions,
                    "primary": s.topology.primary,
                    "primary_lsn": (
                        format_lsn(s.topology.primary_lsn) if s.topology.primary_lsn else None
                    ),
                    "split_brain": list(s.topology.split_brain),
                    "failovers": s.failovers,
                }
                for s in self.shards
            },
            "hosts": [
                {"shard": s.name, **host_json(h)} for s in self.shards for h in s.topology.hosts
            ],
        }


async def shard_report(router: ShardedRouter) -> ShardReport:
    """Each shard's topology, buckets (from the directory) and stored conversations."""
    count = sql.SQL("SELECT count(*) FROM {}.conversations").format(
        sql.Identifier(router.config.schema)
    )
    buckets = router.stats()["buckets"]
    out = []
    for name, shard in router.shards.items():
        try:
            rows = await shard.execute_read("status_sessions", None, count)
            sessions: int | None = int(rows[0][0])
        except psycopg.Error:  # not migrated yet, or no server to read on
            sessions = None
        out.append(
            ShardState(
                name,
                shard.topology(),
                buckets.get(name, 0),
                sessions,
                shard.stats().get("failovers", 0),
            )
        )
    return ShardReport(out, router.buckets)
