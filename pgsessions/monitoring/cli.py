"""`pgsessions serve-metrics`: a router over the cluster, with /metrics and /healthz served."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..hostargs import NoHostsError, add_hosts_arguments, command_hosts


def add_serve_metrics_command(subparsers: Any) -> None:
    """Add ``serve-metrics [--hosts DSN ... | --local] [--host 127.0.0.1] [--port 9464]``."""
    p = subparsers.add_parser(
        "serve-metrics",
        help="serve Prometheus /metrics and /healthz for a router over the cluster",
        description="Open a router over the cluster and serve /metrics and /healthz until "
        "interrupted. Hosts: --hosts, else PGSESSIONS_HOSTS, "
        "else (only with --local) the local cluster.",
    )
    add_hosts_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9464, help="port to listen on (default 9464)")
    p.add_argument("--name", default="default", help="router name label (default 'default')")
    p.set_defaults(func=run_serve_metrics)


def run_serve_metrics(args: argparse.Namespace) -> int:
    try:
        with command_hosts("serve-metrics", args.hosts, local=args.local) as hosts:
            return asyncio.run(_serve(hosts, args.host, args.port, args.name))
    except NoHostsError as exc:
        print(exc, file=sys.stderr)
        return 2


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
