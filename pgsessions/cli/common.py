"""Which servers a production command (migrate, status, serve-metrics, ...) talks to.

`--hosts`, else `PGSESSIONS_HOSTS`, else every shard of `PGSESSIONS_SHARDS` (a
ShardedRouter), else the local cluster only when asked with `--local`: a deploy job with an
unset variable must fail, never act on a throwaway cluster. The local cluster
(pgsessions.devcluster) is imported only when `--local` is given.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..router.protocol import Router


class NoHostsError(ValueError):
    """No `--hosts`, no `PGSESSIONS_HOSTS` and no `--local`."""

    def __init__(self, command: str) -> None:
        self.command = command
        super().__init__(
            "no servers given: pass --hosts DSN ..., or set "
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


def shards_given(
    hosts: Sequence[str] | None, *, local: bool = False, env: Mapping[str, str] | None = None
) -> bool:
    """Whether a command runs on the shards of ``PGSESSIONS_SHARDS``: set, with no
    ``--hosts``, no ``PGSESSIONS_HOSTS`` and no ``--local`` (which name one cluster and
    win)."""
    env = os.environ if env is None else env
    if hosts or local or env.get("PGSESSIONS_HOSTS", "").strip():
        return False
    return bool(env.get("PGSESSIONS_SHARDS", "").strip())


def given_hosts(hosts: Sequence[str] | None) -> list[str] | None:
    """``--hosts``, else ``PGSESSIONS_HOSTS``, split into DSNs; None when neither is set."""
    from ..router.dsn import split_hosts

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
    from ..devcluster.local import hosts_or_local_cluster

    with hosts_or_local_cluster(None, keep=keep) as found:
        yield found


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def print_status_table(
    rows: list[dict[str, Any]],
    cols: tuple[str, ...] = ("node", "port", "role", "streaming", "lag_bytes", "lag_seconds"),
) -> None:
    """``rows`` as an aligned table of ``cols`` (the local cluster's by default)."""
    table = [list(cols)] + [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def fail(command: str, exc: BaseException, code: int = 2) -> int:
    """Say what went wrong as ``pgsessions COMMAND: ...`` on stderr; return ``code``."""
    print(f"pgsessions {command}: {exc}", file=sys.stderr)
    return code


def run_on_hosts(
    command: str,
    args: Any,
    work: Callable[[list[str]], Coroutine[Any, Any, int]],
    *,
    errors: tuple[type[BaseException], ...] = (),
    keep: bool = False,
) -> int:
    """The command's servers (``--hosts``, ``PGSESSIONS_HOSTS``, or the local cluster with
    ``--local``), then ``work(hosts)`` run to its exit code.

    No servers given, bad input (ValueError) or one of ``errors``: the message and exit
    code 2; a router or database error ``work`` lets through: the message and exit code 1.
    ``keep``: leave a local cluster this call started running.
    """
    import psycopg

    from ..errors import RouterError

    bad_input: tuple[type[BaseException], ...] = (ValueError, *errors)  # NoHostsError too
    try:
        with command_hosts(command, args.hosts, local=args.local, keep=keep) as hosts:
            return asyncio.run(work(hosts))
    except bad_input as exc:
        return fail(command, exc)
    except (RouterError, psycopg.Error) as exc:
        return fail(command, exc, 1)


@asynccontextmanager
async def open_router(
    hosts: list[str] | None, schema: str | None = None, **overrides: object
) -> AsyncIterator[Router]:
    """An open SessionRouter over ``hosts``, or (``hosts`` None) a ShardedRouter over
    ``PGSESSIONS_SHARDS``; settings from the environment, ``schema`` and ``overrides``."""
    from ..router import RouterConfig, SessionRouter, ShardedRouter

    if schema:
        overrides["schema"] = schema
    router: SessionRouter | ShardedRouter
    if hosts is None:
        router = ShardedRouter.from_env(**overrides)
    else:
        router = SessionRouter(RouterConfig.from_env(**{**overrides, "hosts": hosts}))
    async with router:
        yield router


def run_on_router(
    command: str,
    args: Any,
    work: Callable[[Router], Coroutine[Any, Any, int]],
    *,
    schema: str | None = None,
    errors: tuple[type[BaseException], ...] = (),
    keep: bool = False,
    **overrides: object,
) -> int:
    """``work(router)`` on the command's servers (see :func:`run_on_hosts`): one cluster's
    SessionRouter, or a ShardedRouter when :func:`shards_given`. Errors and exit codes as
    :func:`run_on_hosts`."""

    async def on(hosts: list[str] | None) -> int:
        async with open_router(hosts, schema, **overrides) as router:
            return await work(router)

    if not shards_given(args.hosts, local=args.local):
        return run_on_hosts(command, args, on, errors=errors, keep=keep)
    import psycopg

    from ..errors import RouterError

    bad_input: tuple[type[BaseException], ...] = (ValueError, *errors)
    try:
        return asyncio.run(on(None))
    except bad_input as exc:
        return fail(command, exc)
    except (RouterError, psycopg.Error) as exc:
        return fail(command, exc, 1)
