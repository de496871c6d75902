"""Fencing for writes made on a primary connection of one's own (import, prune).

Over one cluster there is nothing to fence. Over shards, such a write goes to the owner of
the conversation's bucket and runs that shard's fence first in its transaction, as session
writes do: a shard that no longer owns the bucket refuses it (SQLSTATE ``PGS01``) and it
wrote nothing.
"""

from __future__ import annotations

from typing import Any, cast

import psycopg

from ..errors import MOVED_SQLSTATE
from .execution import Setup
from .protocol import Router
from .sharded import ShardedRouter


def owner_and_fence(router: Router, session_id: str) -> tuple[Router, Setup | None]:
    """The cluster that takes ``session_id``'s writes and the fence they run first (None
    over one cluster)."""
    if isinstance(router, ShardedRouter):
        return router.admin_fence(session_id)
    return router.cluster_for(session_id), None


async def run_fence(conn: psycopg.AsyncConnection[Any], fence: Setup | None) -> None:
    """Run ``fence`` on ``conn`` (inside the caller's transaction); nothing when None."""
    if fence is not None:
        query, params = fence
        await conn.execute(cast(str, query), params)


def is_moved(exc: BaseException) -> bool:
    """Whether ``exc`` is a shard's refusal of a bucket it does not own at that epoch."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate == MOVED_SQLSTATE


async def refresh(router: Router) -> None:
    """Read a sharded router's directory again (after a refusal); nothing otherwise."""
    if isinstance(router, ShardedRouter):
        await router.refresh()
