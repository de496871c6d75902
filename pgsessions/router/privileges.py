"""The privileges the router checks at open: its role must see replication status.

PostgreSQL shows ``pg_stat_wal_receiver.status`` only to roles with the privileges of
``pg_read_all_stats`` (``pg_monitor`` includes it; superusers have it). Without it the health
monitor never sees a replica streaming, no replica is ever eligible, and every read silently
goes to the primary: :meth:`SessionRouter.open` refuses to start that way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import LiteralString

import psycopg
from psycopg import sql

from ..errors import MissingPrivilegeError
from .config import RouterConfig
from .hosts import Host

#: USAGE: the role has the privileges of pg_read_all_stats (directly, inherited through
#: other roles, or as a superuser); a NOINHERIT membership does not count, as for a query
PRIVILEGE_SQL: LiteralString = (
    "SELECT current_user::text, pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')"
)


def missing_pg_monitor(answers: Mapping[str, tuple[str, bool]]) -> MissingPrivilegeError | None:
    """The error for the hosts whose role (``host -> (role, has the privileges)``) cannot see
    replication status, or None when every role can."""
    lacking: dict[str, list[str]] = {}
    for host, (role, ok) in answers.items():
        if not ok:
            lacking.setdefault(role, []).append(host)
    if not lacking:
        return None
    roles = sorted(lacking)
    where = "; ".join(f"role {r!r} on {', '.join(sorted(lacking[r]))}" for r in roles)
    grants = " ".join(
        sql.SQL("GRANT pg_monitor TO {};").format(sql.Identifier(r)).as_string(None) for r in roles
    )
    return MissingPrivilegeError(
        f"the router's health monitor needs pg_monitor ({where} lacks it): without it "
        "PostgreSQL hides pg_stat_wal_receiver.status, so no replica would ever serve a "
        f"read. As a superuser, run: {grants}",
        roles,
    )


async def require_pg_monitor(config: RouterConfig, hosts: Sequence[Host]) -> None:
    """Raise :class:`MissingPrivilegeError` when the role of a host that answered the last
    check cannot see replication status. Nothing to check when the router never reads from
    replicas (``read_from_replicas=False``, or a single host)."""
    if not config.read_from_replicas or len(hosts) < 2:
        return
    up = [h for h in hosts if h.up]

    async def ask(h: Host) -> tuple[str, bool] | None:
        try:
            row = await h.prober.fetch_one(PRIVILEGE_SQL)
        except psycopg.Error:
            return None  # the host went away since the check: the monitor will see it
        if row is None or not isinstance(row[0], str):
            return None
        return row[0], bool(row[1])

    tasks = [asyncio.ensure_future(ask(h)) for h in up]
    try:
        answers = await asyncio.gather(*tasks)
    except BaseException:
        # a cancelled gather does not wait for its children: an open() cancelled here must
        # not leave a probe running after it returns
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    error = missing_pg_monitor(
        {h.label: a for h, a in zip(up, answers, strict=True) if a is not None}
    )
    if error is not None:
        raise error
