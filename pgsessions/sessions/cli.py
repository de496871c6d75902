"""`pgsessions migrate`: create or upgrade the schema."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any


def add_migrate_command(subparsers: Any) -> None:
    """Add ``migrate [--hosts DSN ...] [--schema NAME]``."""
    p = subparsers.add_parser(
        "migrate",
        help="create or upgrade the pgsessions schema (idempotent)",
        description="Apply the pending schema migrations on the primary, each once, under an "
        "advisory lock. Hosts: --hosts, else PGSESSIONS_HOSTS, else the local cluster.",
    )
    p.add_argument(
        "--hosts",
        nargs="+",
        default=None,
        metavar="DSN",
        help="PostgreSQL DSNs (or one comma-separated list / multi-host URL)",
    )
    p.add_argument(
        "--schema", default=None, help="schema name (default PGSESSIONS_SCHEMA or pgsessions)"
    )
    p.set_defaults(func=run_migrate_command)


def run_migrate_command(args: argparse.Namespace) -> int:
    cluster = None
    hosts: list[str] | str
    if args.hosts:
        hosts = list(args.hosts)
    elif os.environ.get("PGSESSIONS_HOSTS"):
        hosts = os.environ["PGSESSIONS_HOSTS"]
    else:
        from ..devcluster.cli import ensure_local_cluster

        cluster, started = ensure_local_cluster()
        hosts = cluster.dsns()
        if not started:
            cluster = None  # already running: leave it so
    try:
        return asyncio.run(_migrate(hosts, args.schema))
    finally:
        if cluster is not None:
            cluster.stop()


async def _migrate(hosts: list[str] | str, schema: str | None) -> int:
    import psycopg

    from ..router import RouterConfig, RouterError, SessionRouter
    from .schema import applied_migrations, migrate

    overrides: dict[str, object] = {"hosts": hosts}
    if schema:
        overrides["schema"] = schema
    try:
        config = RouterConfig.from_env(**overrides)
        async with SessionRouter(config) as router:
            applied = await migrate(router)
            current = await applied_migrations(router)
    except (ValueError, RouterError, psycopg.Error) as exc:
        print(f"pgsessions migrate: {exc}", file=sys.stderr)
        return 1
    done = ", ".join(applied) if applied else "nothing to apply"
    print(f"schema {config.schema!r}: {done}; at version {current[-1] if current else '-'}")
    return 0
