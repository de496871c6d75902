"""`pgsessions serve-metrics`: a router over the cluster, with /metrics and /healthz served."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any


def add_serve_metrics_command(subparsers: Any) -> None:
    """Add ``serve-metrics [--hosts DSN ...] [--host 127.0.0.1] [--port 9464]``."""
    p = subparsers.add_parser(
        "serve-metrics",
        help="serve Prometheus /metrics and /healthz for a router over the cluster",
        description="Open a router over the cluster and serve /metrics and /healthz until "
        "interrupted. Hosts: --hosts, else PGSESSIONS_HOSTS, else the local cluster.",
    )
    p.add_argument(
        "--hosts",
        nargs="+",
        default=None,
        metavar="DSN",
        help="PostgreSQL DSNs (or one comma-separated list / multi-host URL)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9464, help="port to listen on (default 9464)")
    p.add_argument("--name", default="default", help="router name label (default 'default')")
    p.set_defaults(func=run_serve_metrics)


def run_serve_metrics(args: argparse.Namespace) -> int:
    from ..devcluster.cli import hosts_or_local_cluster

    with hosts_or_local_cluster(args.hosts) as hosts:
        return asyncio.run(_serve(hosts, args.host, args.port, args.name))


async def _serve(hosts: list[str] | str, host: str, port: int, name: str) -> int:
    from ..router import RouterConfig, SessionRouter
    from .server import serve

    config = RouterConfig.from_env(hosts=hosts, name=name)
    async with SessionRouter(config) as router:
        server = serve(router, host, port)
        try:
            print(f"serving {server.url}/metrics and {server.url}/healthz (Ctrl-C stops)")
            sys.stdout.flush()
            await asyncio.Event().wait()
        finally:
            server.stop()
    return 0
