"""`pgsessions status [--hosts ...] [--watch] [--json]`: the router's view of the cluster.

One line per host: role, up, eligible, lag bytes and seconds, requests in flight and pool
size/available/waiting. Hosts come from ``--hosts``, else ``PGSESSIONS_HOSTS``, else every
shard of ``PGSESSIONS_SHARDS`` (a shard column, and each shard's buckets and sessions),
else (with ``--local``) the local cluster (``pgsessions cluster up``), started if needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ..errors import RouterError
from ..router.lsn import format_lsn
from ..router.protocol import Router
from ..router.settings import flag, positive
from ..router.sharded import ShardedRouter
from ..router.topology import HostState, Topology
from .common import add_hosts_arguments, run_on_router

COLUMNS = [
    ("host", "host"),
    ("role", "role"),
    ("up", "up"),
    ("eligible", "eligible"),
    ("streaming", "streaming"),
    ("lag_bytes", "lag bytes"),
    ("lag_seconds", "lag s"),
    ("replay_lsn", "replay lsn"),
    ("in_flight", "in flight"),
    ("pool_size", "pool"),
    ("pool_available", "avail"),
    ("pool_waiting", "waiting"),
    ("error", "note"),
]


def add_status_command(sub: Any) -> None:
    """Register ``status`` on the ``pgsessions`` argparse sub-parsers."""
    p = sub.add_parser(
        "status",
        help="topology and lag table as the router sees it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_hosts_arguments(p)
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument(
        "--interval", type=flag(positive(3600.0)), default=1.0, help="seconds between refreshes"
    )
    p.add_argument("--json", action="store_true", help="print the topology as JSON")
    p.set_defaults(func=run_status_command)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "lag_seconds":
        return f"{value:.3f}"
    if key == "replay_lsn":
        return format_lsn(value)
    return str(value)


def host_cells(h: HostState) -> list[str]:
    """One host's cells of :data:`COLUMNS`."""
    return [_cell(key, getattr(h, key)) for key, _ in COLUMNS]


def align(rows: list[list[str]]) -> list[str]:
    """``rows`` as lines of left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def headline(topology: Topology) -> str:
    """``primary: HOST at LSN`` (and a split brain, if any)."""
    head = f"primary: {topology.primary or 'none'}"
    if topology.primary_lsn is not None:
        head += f" at {format_lsn(topology.primary_lsn)}"
    if topology.split_brain:
        head += f"  SPLIT BRAIN: {', '.join(topology.split_brain)} writable, writes refused"
    return head


def format_table(topology: Topology) -> str:
    """The topology as an aligned text table (one line per host)."""
    rows = [[title for _, title in COLUMNS]] + [host_cells(h) for h in topology.hosts]
    return "\n".join([headline(topology), *align(rows)])


def host_json(h: HostState) -> dict[str, Any]:
    """One host as JSON (LSNs as text)."""
    d = {key: getattr(h, key) for key, _ in COLUMNS}
    d["replay_lsn"] = format_lsn(h.replay_lsn) if h.replay_lsn is not None else None
    d["receive_lsn"] = format_lsn(h.receive_lsn) if h.receive_lsn is not None else None
    return d


def as_json(topology: Topology, stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "primary": topology.primary,
        "primary_lsn": format_lsn(topology.primary_lsn) if topology.primary_lsn else None,
        "split_brain": list(topology.split_brain),
        "checked_at": topology.checked_at,
        "hosts": [host_json(h) for h in topology.hosts],
        "failovers": stats.get("failovers", 0),
    }


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


async def _status(args: argparse.Namespace, router: Router) -> int:
    while True:
        if isinstance(router, ShardedRouter):
            report = await shard_report(router)
            data, text, ok = report.as_json(), report.format(), report.healthy
        else:
            topo = router.topology()
            data, text = as_json(topo, router.stats()), format_table(topo)
            ok = bool(topo.primary) and not topo.split_brain
        if args.json:
            print(json.dumps(data, indent=None if args.watch else 2))
        else:
            if args.watch:
                print("\x1b[2J\x1b[H", end="")
                print(time.strftime("%H:%M:%S"), end="  ")
            print(text)
        sys.stdout.flush()
        if not args.watch:
            return 0 if ok else 1
        await asyncio.sleep(max(0.1, args.interval))


def run_status_command(args: argparse.Namespace) -> int:
    try:
        # a local cluster started just for this (--local) is left running: its status is the point
        return run_on_router(
            "status",
            args,
            lambda router: _status(args, router),
            errors=(RouterError,),
            keep=True,
            name="status",
        )
    except KeyboardInterrupt:  # --watch runs until interrupted: Ctrl-C is the normal end
        return 0
