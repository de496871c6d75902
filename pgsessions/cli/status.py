"""`pgsessions status [--hosts ...] [--watch] [--json]`: the router's view of the cluster.

One line per host: role, up, eligible, lag bytes and seconds, requests in flight and pool
size/available/waiting. Hosts come from ``--hosts``, else ``PGSESSIONS_HOSTS``, else the
local cluster (``pgsessions cluster up``), started if needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from ..errors import RouterError
from ..router.config import RouterConfig
from ..router.lsn import format_lsn
from ..router.session_router import SessionRouter
from ..router.settings import flag, positive
from ..router.topology import HostState, Topology
from .common import add_hosts_arguments, run_on_hosts

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


def format_table(topology: Topology) -> str:
    """The topology as an aligned text table (one line per host)."""
    rows = [[title for _, title in COLUMNS]]
    for h in topology.hosts:
        rows.append([_cell(key, getattr(h, key)) for key, _ in COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    head = f"primary: {topology.primary or 'none'}"
    if topology.primary_lsn is not None:
        head += f" at {format_lsn(topology.primary_lsn)}"
    if topology.split_brain:
        head += f"  SPLIT BRAIN: {', '.join(topology.split_brain)} writable, writes refused"
    return "\n".join([head, *lines])


def as_json(topology: Topology, stats: dict[str, Any]) -> dict[str, Any]:
    def host(h: HostState) -> dict[str, Any]:
        d = {key: getattr(h, key) for key, _ in COLUMNS}
        for k in ("replay_lsn",):
            d[k] = format_lsn(d[k]) if d[k] is not None else None
        d["receive_lsn"] = format_lsn(h.receive_lsn) if h.receive_lsn is not None else None
        return d

    return {
        "primary": topology.primary,
        "primary_lsn": format_lsn(topology.primary_lsn) if topology.primary_lsn else None,
        "split_brain": list(topology.split_brain),
        "checked_at": topology.checked_at,
        "hosts": [host(h) for h in topology.hosts],
        "failovers": stats.get("failovers", 0),
    }


async def _status(args: argparse.Namespace, hosts: list[str]) -> int:
    config = RouterConfig.from_env(hosts=hosts, name="status")
    async with SessionRouter(config) as router:
        while True:
            topo = router.topology()
            if args.json:
                print(json.dumps(as_json(topo, router.stats()), indent=None if args.watch else 2))
            else:
                if args.watch:
                    print("\x1b[2J\x1b[H", end="")
                    print(time.strftime("%H:%M:%S"), end="  ")
                print(format_table(topo))
            sys.stdout.flush()
            if not args.watch:
                return 0 if topo.primary and not topo.split_brain else 1
            await asyncio.sleep(max(0.1, args.interval))


def run_status_command(args: argparse.Namespace) -> int:
    try:
        # a local cluster started just for this (--local) is left running: its status is the point
        return run_on_hosts(
            "status", args, lambda hosts: _status(args, hosts), errors=(RouterError,), keep=True
        )
    except KeyboardInterrupt:  # --watch runs until interrupted: Ctrl-C is the normal end
        return 0
