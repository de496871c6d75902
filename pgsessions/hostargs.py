"""Which servers a production command (migrate, status, serve-metrics) talks to.

`--hosts`, else `PGSESSIONS_HOSTS`, else the local cluster only when asked with `--local`:
a deploy job with an unset variable must fail, never act on a throwaway cluster.
The local cluster (pgsessions.devcluster) is imported only when `--local` is given.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .router import RouterConfig


class NoHostsError(ValueError):
    """No `--hosts`, no `PGSESSIONS_HOSTS` and no `--local`."""

    def __init__(self, command: str) -> None:
        super().__init__(
            f"pgsessions {command}: no servers given: pass --hosts DSN ..., or set "
            "PGSESSIONS_HOSTS, or use --local for the local development cluster"
        )


def add_hosts_arguments(parser: Any) -> None:
    """Add ``--hosts DSN ...`` and ``--local`` to a sub-command's parser."""
    parser.add_argument(
        "--hosts",
        nargs="+",
        default=None,
        metavar="DSN",
        help="PostgreSQL DSNs (or one comma-separated list / multi-host URL); "
        "default PGSESSIONS_HOSTS",
    )
    parser.add_argument(
        "--local",
        action="store_true",
        help="without --hosts or PGSESSIONS_HOSTS: use the local cluster in .pgsessions/ "
        "(started if it is not running)",
    )


def add_schema_argument(parser: Any) -> None:
    """Add ``--schema NAME`` (default ``PGSESSIONS_SCHEMA`` or ``pgsessions``)."""
    parser.add_argument(
        "--schema", default=None, help="schema name (default PGSESSIONS_SCHEMA or pgsessions)"
    )


def command_config(hosts: list[str], schema: str | None) -> RouterConfig:
    """``RouterConfig.from_env`` for a command's hosts and ``--schema``."""
    from .router import RouterConfig

    overrides: dict[str, object] = {"hosts": hosts}
    if schema:
        overrides["schema"] = schema
    return RouterConfig.from_env(**overrides)


def given_hosts(hosts: Sequence[str] | None) -> list[str] | None:
    """``--hosts``, else ``PGSESSIONS_HOSTS``, split into DSNs; None when neither is set."""
    from .router.dsn import split_hosts

    if hosts:
        return split_hosts(list(hosts))
    env = os.environ.get("PGSESSIONS_HOSTS")
    if env:
        return split_hosts(env)
    return None


@contextmanager
def command_hosts(
    command: str, hosts: Sequence[str] | None, *, local: bool, keep: bool = False
) -> Iterator[list[str]]:
    """The DSNs for ``command``; the local cluster only when ``local`` (then stopped on exit
    if this call started it, unless ``keep``). Raises NoHostsError when nothing was given."""
    dsns = given_hosts(hosts)
    if dsns is not None:
        yield dsns
        return
    if not local:
        raise NoHostsError(command)
    from .devcluster.cli import hosts_or_local_cluster

    with hosts_or_local_cluster(None, keep=keep) as found:
        yield found
