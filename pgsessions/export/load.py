"""Import: conversation records written to the primary, one transaction per conversation.

Idempotent: a conversation that does not exist is created exactly as recorded (same seqs,
times, metadata, items and usage rows); one that exists with the same items, metadata and
usage is left untouched ("unchanged"); one that exists with different content is a conflict,
left untouched unless ``replace=True`` (then it is replaced whole, in one transaction).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import psycopg

from ..router.execution import Setup
from ..router.fencing import is_moved, owner_and_fence, refresh, run_fence
from ..sessions.items import utf8_safe
from ..sessions.limits import MAX_ITEM_BYTES, check_text
from ..sessions.schema import migrate_hint
from ..sessions.sql.export import ImportStatements, import_sql
from .records import ConversationRecord

if TYPE_CHECKING:
    from ..router.protocol import Router

Outcome = Literal["imported", "unchanged", "replaced", "conflict", "error"]
#: items sent per INSERT statement (a large conversation takes several, in one transaction)
CHUNK = 1000
#: directory reads an import makes for a conversation whose bucket moved under it
_MOVED_ATTEMPTS = 3


@dataclass
class ImportSummary:
    """What an import did, conversation by conversation (counts and bounded examples)."""

    imported: int = 0
    unchanged: int = 0
    replaced: int = 0
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    items: int = 0
    usage_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "unchanged": self.unchanged,
            "replaced": self.replaced,
            "conflicts": len(self.conflicts),
            "conflicting_sessions": self.conflicts[:20],
            "errors": self.errors[:20],
            "items_written": self.items,
            "usage_rows_written": self.usage_rows,
        }


def items_digest(rec: ConversationRecord) -> str:
    """md5 of ``seq:item`` lines (``branch/seq:item`` outside main), as the lock statement
    computes it in SQL ('' when none)."""
    if not rec.items:
        return ""
    ordered = sorted(
        rec.items, key=lambda it: (it.branch != "main", it.branch.encode("utf-8"), it.seq)
    )
    text = "\n".join(
        f"{'' if it.branch == 'main' else it.branch + '/'}{it.seq}:{it.item}" for it in ordered
    )
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def usage_json(rec: ConversationRecord) -> str:
    """The usage rows as the JSON array the lock statement compares (details kept raw)."""
    rows = []
    for u in sorted(rec.usage, key=lambda u: (u.branch.encode("utf-8"), u.user_turn_number)):
        head = json.dumps(
            [u.user_turn_number, u.model, u.requests, u.input_tokens, u.output_tokens],
            ensure_ascii=False,
        )[:-1]
        rows.append(
            f"{head},{u.total_tokens},{u.input_tokens_details or 'null'},"
            f"{u.output_tokens_details or 'null'},{json.dumps(u.branch, ensure_ascii=False)}]"
        )
    return "[" + ",".join(rows) + "]"


def branches_json(rec: ConversationRecord) -> str:
    """The branch rows as the JSON array the lock statement compares."""
    rows = [
        [b.branch_id, b.parent_id, b.from_turn, b.anc, b.upto, b.deleted_at is None]
        for b in sorted(rec.branches, key=lambda b: b.branch_id.encode("utf-8"))
    ]
    return json.dumps(rows, ensure_ascii=False)


def check_session_id(session_id: str) -> None:
    """The rule PostgresSession applies: non-empty, no U+0000, no lone surrogates."""
    if not session_id or "\x00" in session_id or not utf8_safe(session_id):
        raise ValueError(f"invalid session id {session_id!r}")


def check_limits(rec: ConversationRecord) -> None:
    """ValueError when a JSON text of ``rec`` is past what a session accepts (nested deeper
    than MAX_DEPTH, an item larger than MAX_ITEM_BYTES): checked before any write."""
    check_text("metadata", rec.metadata)
    for it in rec.items:
        check_text(f"item seq {it.seq}", it.item)
        # at most 4 bytes of UTF-8 per character: most items need no encoding to tell
        if len(it.item) > MAX_ITEM_BYTES // 4 and len(it.item.encode("utf-8")) > MAX_ITEM_BYTES:
            raise ValueError(f"item seq {it.seq} is larger than {MAX_ITEM_BYTES} bytes of JSON")
    for u in rec.usage:
        for name, text in (
            ("input_tokens_details", u.input_tokens_details),
            ("output_tokens_details", u.output_tokens_details),
        ):
            if text is not None:
                check_text(f"usage turn {u.user_turn_number} {name}", text)


async def _write(
    conn: psycopg.AsyncConnection[Any], sql: ImportStatements, rec: ConversationRecord
) -> bool:
    """Insert the conversation and everything in it; False when it already exists."""
    cur = await conn.execute(
        sql.insert_conversation,
        (
            rec.session_id,
            rec.created_at,
            rec.updated_at,
            rec.metadata,
            rec.next_seq,
            len(rec.items),
            rec.user_turns,
            rec.current_branch,
        ),
    )
    if await cur.fetchone() is None:
        return False
    for b in rec.branches:
        await conn.execute(
            sql.insert_branch,
            (
                rec.session_id,
                b.branch_id,
                b.parent_id,
                b.from_turn,
                b.anc,
                b.upto,
                b.created_at,
                b.deleted_at,
            ),
        )
    for i in range(0, len(rec.items), CHUNK):
        part = rec.items[i : i + CHUNK]
        await conn.execute(
            sql.insert_items,
            (
                rec.session_id,
                [it.seq for it in part],
                [it.item for it in part],
                [it.role for it in part],
                [it.type for it in part],
                [it.created_at for it in part],
                [it.branch for it in part],
            ),
        )
    for u in rec.usage:
        await conn.execute(
            sql.insert_usage,
            (
                rec.session_id,
                u.user_turn_number,
                u.model,
                u.requests,
                u.input_tokens,
                u.output_tokens,
                u.total_tokens,
                u.input_tokens_details,
                u.output_tokens_details,
                u.created_at,
                u.branch,
            ),
        )
    return True


async def _import_one(
    conn: psycopg.AsyncConnection[Any],
    sql: ImportStatements,
    rec: ConversationRecord,
    replace: bool,
    fence: Setup | None = None,
) -> Outcome:
    async with conn.transaction():
        await run_fence(conn, fence)  # over shards: refused unless the owner (nothing written)
        if rec.tenant:
            # the tables' tenant columns default to this setting (migration 0006), and with
            # isolation on the policies check it
            await conn.execute("SELECT set_config('pgsessions.tenant', %s, true)", (rec.tenant,))
        if await _write(conn, sql, rec):
            return "imported"
        cur = await conn.execute(
            sql.lock,
            {
                "meta": rec.metadata,
                "usage": usage_json(rec),
                "sid": rec.session_id,
                "current": rec.current_branch,
                "branches": branches_json(rec),
            },
        )
        row = await cur.fetchone()
        if row is None:  # deleted between the insert attempt and the lock: try once more
            return "imported" if await _write(conn, sql, rec) else "conflict"
        same_meta, digest, same_usage = row
        if same_meta and digest == items_digest(rec) and same_usage:
            return "unchanged"
        if not replace:
            return "conflict"
        await conn.execute(sql.delete_conversation, (rec.session_id,))
        await conn.execute(sql.delete_branches, (rec.session_id,))
        await _write(conn, sql, rec)
        return "replaced"


async def import_records(
    router: Router,
    records: AsyncIterable[ConversationRecord] | Iterable[ConversationRecord],
    *,
    replace: bool = False,
    progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Write ``records`` on the primary, each conversation all or nothing; see the module.
    Over several clusters (a ShardedRouter) each conversation goes to its owner's primary,
    fenced like a session's write: a bucket that moved meanwhile is written on its new owner
    (an error for the record if none took it after a few directory reads).

    A record the database refuses (bad JSON text, U+0000 in metadata, ...) is reported in
    ``errors`` and leaves its conversation as it was; the others are still imported. Runs
    as the schema owner (plain INSERT/DELETE), not as the application role.
    """
    summary = ImportSummary()
    sql = import_sql(router.config.schema)

    async def each() -> Any:
        if isinstance(records, AsyncIterable):
            async for rec in records:
                yield rec
        else:
            for rec in records:
                yield rec

    with migrate_hint(router.config.schema):
        async with AsyncExitStack() as stack:
            # one admin connection per cluster, opened at its first conversation
            conns: dict[int, psycopg.AsyncConnection[Any]] = {}

            async def conn_for(cluster: Router) -> psycopg.AsyncConnection[Any]:
                conn = conns.get(id(cluster))
                if conn is None:
                    conn = await stack.enter_async_context(cluster.primary_connection())
                    conns[id(cluster)] = conn
                return conn

            async def write(rec: ConversationRecord) -> Outcome:
                for attempt in range(_MOVED_ATTEMPTS):
                    owner, fence = owner_and_fence(router, rec.session_id)
                    conn = await conn_for(owner)
                    try:
                        return await _import_one(conn, sql, rec, replace, fence)
                    except psycopg.Error as exc:
                        if not is_moved(exc) or attempt == _MOVED_ATTEMPTS - 1:
                            raise
                        await refresh(router)  # the bucket moved: write it on its owner
                raise AssertionError("unreachable")

            async for rec in each():
                try:
                    if rec.error is not None:
                        raise ValueError(rec.error)
                    check_session_id(rec.session_id)
                    check_limits(rec)
                    outcome = await write(rec.checked())
                except (ValueError, psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
                    summary.errors.append(f"{rec.session_id!r}: {str(e).splitlines()[0]}")
                    outcome = "error"
                except psycopg.Error as e:
                    if not is_moved(e):
                        raise
                    summary.errors.append(f"{rec.session_id!r}: its bucket moved: {e}")
                    outcome = "error"
                if outcome in ("imported", "replaced"):
                    summary.items += len(rec.items)
                    summary.usage_rows += len(rec.usage)
                if outcome == "imported":
                    summary.imported += 1
                elif outcome == "replaced":
                    summary.replaced += 1
                elif outcome == "unchanged":
                    summary.unchanged += 1
                elif outcome == "conflict":
                    summary.conflicts.append(rec.session_id)
                if progress is not None:
                    progress(summary)
    return summary
