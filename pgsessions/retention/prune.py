"""Deleting expired conversations in small transactions, safe to run on many servers at once.

A conversation is expired when its last write (``updated_at``) is older than the cutoff:
the same rule a session's ``ttl`` applies when reading, so what prune deletes was already
invisible to sessions whose TTL is at most ``older_than``. For each expired conversation:

1. its items older than the cutoff are deleted ``item_batch`` at a time, each batch its own
   short transaction (``FOR UPDATE SKIP LOCKED``: rows another pruner holds are skipped);
2. then, in one short transaction, the conversation row is locked (``SKIP LOCKED``) and
   deleted if it is still expired, with its usage rows and any items left. A
   conversation written again meanwhile stays, with only its new items, and its counters
   recomputed under its row lock.

Then the branch tombstones (migration 0010) of conversations that are gone, deleted before
the cutoff, and old operation ids (``prune_ops``) are pruned in batches. Every statement runs with a
short ``lock_timeout``: prune waits for no writer; what it cannot lock now, the next run does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors

from ..router.execution import Setup
from ..router.fencing import is_moved, owner_and_fence, run_fence
from ..router.settings import INT32_MAX, count
from ..sessions.schema import migrate_hint
from ..sessions.sql.retention import prune_sql

if TYPE_CHECKING:
    from ..router.protocol import Router


@dataclass
class PruneSummary:
    """What one prune run removed (only what this run removed, not another server's)."""

    cutoff: str = ""
    conversations_deleted: int = 0
    conversations_kept_written_again: int = 0
    conversations_skipped_locked: int = 0
    #: over shards: found on a shard that does not own its bucket (left for the owner)
    conversations_skipped_not_owned: int = 0
    items_deleted: int = 0
    usage_rows_deleted: int = 0
    op_ids_deleted: int = 0
    branch_tombstones_deleted: int = 0
    transactions: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def prune(
    router: Router,
    *,
    older_than: timedelta,
    batch: int = 100,
    item_batch: int = 1000,
    ops_older_than: timedelta = timedelta(hours=1),
    lock_timeout: float = 2.0,
    progress: Callable[[PruneSummary], None] | None = None,
) -> PruneSummary:
    """Delete conversations idle longer than ``older_than`` and operation ids older than
    ``ops_older_than``, in small transactions on the primary (see the module)."""
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be > 0, got {older_than}")
    if ops_older_than < timedelta(hours=1):
        raise ValueError(
            "ops_older_than must be at least 1 hour: a write may be retried that long "
            "(RouterConfig.failover_timeout), and its operation id must still be there"
        )
    count(1, INT32_MAX).check("batch", batch)
    count(1, INT32_MAX).check("item_batch", item_batch)
    t0 = time.monotonic()
    summary = PruneSummary()
    for cluster in router.clusters():  # each cluster prunes its own conversations
        await _prune_cluster(
            router,
            cluster,
            summary,
            older_than,
            batch,
            item_batch,
            ops_older_than,
            lock_timeout,
            progress,
        )
    summary.seconds = round(time.monotonic() - t0, 3)
    return summary


async def _prune_cluster(
    top: Router,
    router: Router,
    summary: PruneSummary,
    older_than: timedelta,
    batch: int,
    item_batch: int,
    ops_older_than: timedelta,
    lock_timeout: float,
    progress: Callable[[PruneSummary], None] | None,
) -> None:
    """:func:`prune` on one cluster, adding to ``summary``."""
    with migrate_hint(router.config.schema):
        sql = prune_sql(router.config.schema)
        async with router.primary_connection() as conn:
            await conn.execute(f"SET lock_timeout = {int(lock_timeout * 1000)}")
            cur = await conn.execute("SELECT now() - %s::interval", (older_than,))
            row = await cur.fetchone()
            assert row is not None
            cutoff: datetime = row[0]
            summary.cutoff = summary.cutoff or cutoff.isoformat()
            after = ""
            while True:
                cur = await conn.execute(
                    sql["candidates"], {"cutoff": cutoff, "after": after, "batch": batch}
                )
                ids = [r[0] for r in await cur.fetchall()]
                summary.transactions += 1
                for sid in ids:
                    owner, fence = owner_and_fence(top, sid)
                    if owner is not router:  # over shards: the bucket lives elsewhere now
                        summary.conversations_skipped_not_owned += 1
                    else:
                        await _prune_one(conn, sql, sid, cutoff, item_batch, summary, fence)
                    if progress is not None:
                        progress(summary)
                if len(ids) < batch:
                    break
                after = ids[-1]
            while True:
                cur = await conn.execute(sql["tombstones"], {"cutoff": cutoff, "batch": item_batch})
                summary.branch_tombstones_deleted += cur.rowcount
                summary.transactions += 1
                if cur.rowcount < item_batch:
                    break
            while True:
                cur = await conn.execute(sql["ops"], (ops_older_than, item_batch))
                row = await cur.fetchone()
                n = int(row[0]) if row and row[0] is not None else 0
                summary.op_ids_deleted += n
                summary.transactions += 1
                if n < item_batch:
                    break


async def _prune_one(
    conn: psycopg.AsyncConnection[Any],
    sql: dict[str, str],
    sid: str,
    cutoff: datetime,
    item_batch: int,
    summary: PruneSummary,
    fence: Setup | None = None,
) -> None:
    """Prune one conversation; over shards each transaction runs ``fence`` first."""
    params = {"sid": sid, "cutoff": cutoff, "batch": item_batch}
    removed = 0
    try:
        while True:
            async with conn.transaction():
                await run_fence(conn, fence)
                cur = await conn.execute(sql["items"], params)
            summary.transactions += 1
            removed += cur.rowcount
            if cur.rowcount < item_batch:
                break
        async with conn.transaction():
            summary.transactions += 1
            await run_fence(conn, fence)
            cur = await conn.execute(sql["lock_expired"], params)
            row = await cur.fetchone()
            if row is None:
                # locked by a writer or another pruner: wait (up to lock_timeout), then look
                cur = await conn.execute(sql["lock_live"], params)
                if await cur.fetchone() is None:
                    summary.items_deleted += removed
                    return  # gone: another pruner (or a clear) deleted it
                cur = await conn.execute(sql["lock_expired"], params)
                row = await cur.fetchone()
            if row is not None:
                rest = await conn.execute(sql["rest_items"], params)
                usage = await conn.execute(sql["all_usage"], params)
                await conn.execute(sql["delete"], params)
                summary.conversations_deleted += 1
                summary.items_deleted += removed + rest.rowcount
                summary.usage_rows_deleted += usage.rowcount
                return
            # written again since it was picked: keep it, with only its new items
            summary.items_deleted += removed
            summary.conversations_kept_written_again += 1
            cur = await conn.execute(sql["old_usage"], params)
            summary.usage_rows_deleted += cur.rowcount
            await conn.execute(sql["recount"], params)
    except errors.LockNotAvailable:
        summary.items_deleted += removed  # committed before the transaction that timed out
        summary.conversations_skipped_locked += 1
    except psycopg.Error as exc:
        if not is_moved(exc):
            raise
        summary.items_deleted += removed  # the bucket moved away meanwhile: left to its owner
        summary.conversations_skipped_not_owned += 1
