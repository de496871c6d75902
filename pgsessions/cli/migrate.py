"""`pgsessions migrate`: create or upgrade the schema."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .common import add_hosts_arguments, run_on_hosts, shards_given


def add_migrate_command(subparsers: Any) -> None:
    """Add ``migrate [--hosts DSN ... | --local] [--schema NAME] [--grant-to ROLE]``."""
    p = subparsers.add_parser(
        "migrate",
        help="create or upgrade the pgsessions schema (idempotent)",
        description="Apply the pending schema migrations on the primary, each once, under an "
        "advisory lock. Hosts: --hosts, else PGSESSIONS_HOSTS, else every shard of "
        "PGSESSIONS_SHARDS (a fresh sharded set-up gets its buckets spread), "
        "else (only with --local) the local cluster.",
    )
    add_hosts_arguments(p)
    p.add_argument(
        "--schema", default=None, help="schema name (default PGSESSIONS_SCHEMA or pgsessions)"
    )
    p.add_argument(
        "--grant-to",
        default=None,
        metavar="ROLE",
        help="also grant ROLE what the application needs and nothing more: USAGE on the "
        "schema, EXECUTE on its functions, SELECT on the tables sessions read",
    )
    p.add_argument(
        "--tenant-isolation",
        choices=("on", "off"),
        default=None,
        help="turn row-level security per tenant on (enabled and forced on conversations, "
        "messages and usage_logs) or off; default: leave it as it is",
    )
    p.set_defaults(func=run_migrate_command)


def run_migrate_command(args: argparse.Namespace) -> int:
    isolation = None if args.tenant_isolation is None else args.tenant_isolation == "on"
    if shards_given(args.hosts, local=args.local):
        return asyncio.run(_migrate_shards(args.schema, args.grant_to, isolation))
    return run_on_hosts(
        "migrate", args, lambda hosts: _migrate(hosts, args.schema, args.grant_to, isolation)
    )


async def _migrate(
    hosts: list[str] | str, schema: str | None, grant_to: str | None, isolation: bool | None
) -> int:
    import psycopg

    from ..errors import TenantError
    from ..router import RouterConfig, RouterError, SessionRouter
    from ..sessions.schema import applied_migrations, migrate
    from ..sessions.tenants import tenant_isolation

    # migrating reads nothing from replicas: the owner role needs no pg_monitor for it
    overrides: dict[str, object] = {"hosts": hosts, "read_from_replicas": False}
    if schema:
        overrides["schema"] = schema
    try:
        config = RouterConfig.from_env(**overrides)
        async with SessionRouter(config) as router:
            applied = await migrate(router, grant_to=grant_to, tenant_isolation=isolation)
            current = await applied_migrations(router)
            isolated = await tenant_isolation(router)
    except (ValueError, RouterError, TenantError, psycopg.Error) as exc:
        print(f"pgsessions migrate: {exc}", file=sys.stderr)
        return 1
    done = ", ".join(applied) if applied else "nothing to apply"
    print(
        f"schema {config.schema!r}: {done}; at version {current[-1] if current else '-'};"
        f" tenant isolation {'on' if isolated else 'off'}"
    )
    if grant_to:
        print(f"granted {grant_to!r} usage, execute and select on schema {config.schema!r}")
    return 0


async def _migrate_shards(schema: str | None, grant_to: str | None, isolation: bool | None) -> int:
    """`pgsessions migrate` on every shard of ``PGSESSIONS_SHARDS``."""
    import psycopg

    from ..errors import TenantError
    from ..router import RouterError, ShardedRouter
    from ..sessions.schema import applied_migrations, migrate
    from ..sessions.tenants import tenant_isolation

    overrides: dict[str, object] = {"read_from_replicas": False}
    if schema:
        overrides["schema"] = schema
    try:
        router = ShardedRouter.from_env(**overrides)
        async with router:
            applied = await migrate(router, grant_to=grant_to, tenant_isolation=isolation)
            lines = []
            buckets = router.stats()["buckets"]
            for name, shard in router.shards.items():
                current = await applied_migrations(shard)
                isolated = await tenant_isolation(shard)
                lines.append(
                    f"shard {name!r}: at version {current[-1] if current else '-'}, "
                    f"{buckets[name]} of {router.buckets} buckets, "
                    f"tenant isolation {'on' if isolated else 'off'}"
                )
    except (ValueError, RouterError, TenantError, psycopg.Error) as exc:
        print(f"pgsessions migrate: {exc}", file=sys.stderr)
        return 1
    done = ", ".join(applied) if applied else "nothing to apply"
    print(f"schema {router.config.schema!r} on {len(lines)} shards: {done}")
    for line in lines:
        print(line)
    return 0
