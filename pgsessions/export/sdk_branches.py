"""AdvancedSQLiteSession's branches as a pgsessions record.

The SDK keeps one ``message_structure`` row per (branch, message): a branch made from a
turn repeats the structure rows of its parent's prefix, pointing at the same messages. Here
each branch becomes the parent it shares the longest prefix of messages with plus its own
items (migration 0010), so a shared message is stored once. Branches are placed in the order
the SDK created them (their first structure row); ids the SDK reserves
(``branch_reservations``) but no longer holds come along as tombstones. The SDK keeps the
current branch in the session object, not in the file: the imported conversation is on
``main``.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

from ..sessions.items import encode_items
from .records import BranchRecord, ConversationRecord, ItemRecord, UsageRecord


def _utc_text(value: Any) -> str | None:
    return None if value is None else f"{value}+00"


def has_structure(tables: set[str]) -> bool:
    """Whether an SQLite file holds AdvancedSQLiteSession's structure table."""
    return "message_structure" in tables


def structure_rows(
    conn: sqlite3.Connection, messages_table: str, sid: str
) -> list[tuple[str, int, Any, Any]]:
    """(branch, message id, message_data, created_at) in the SDK's order of each branch."""
    return conn.execute(
        f"SELECT s.branch_id, s.message_id, m.message_data, m.created_at"
        f" FROM message_structure s JOIN {messages_table} m ON m.id = s.message_id"
        " WHERE s.session_id = ? ORDER BY s.sequence_number",
        (sid,),
    ).fetchall()


def reserved_ids(conn: sqlite3.Connection, sid: str, tables: set[str]) -> list[str]:
    if "branch_reservations" not in tables:
        return []
    rows = conn.execute(
        "SELECT branch_id FROM branch_reservations WHERE session_id = ? ORDER BY branch_id",
        (sid,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def branched_record(
    session_id: str,
    created_at: Any,
    updated_at: Any,
    rows: list[tuple[str, int, Any, Any]],
    usage: list[UsageRecord],
    reserved: list[str],
) -> tuple[ConversationRecord, int]:
    """A record with every branch of ``rows`` (see :func:`structure_rows`); also the number
    of messages skipped (not valid JSON, as the SDK's get_items skips them)."""
    order: list[str] = []
    ids: dict[str, list[int]] = {}
    data: dict[int, tuple[Any, Any]] = {}
    for branch, message_id, message_data, stamp in rows:
        if branch not in ids:
            order.append(branch)
            ids[branch] = []
        ids[branch].append(int(message_id))
        data[int(message_id)] = (message_data, stamp)
    parsed: dict[int, Any] = {}
    for message_id, (message_data, _stamp) in data.items():
        try:
            parsed[message_id] = json.loads(message_data)
        except (json.JSONDecodeError, TypeError):
            continue
    skipped = len(data) - len(parsed)
    order.sort(key=lambda b: b != "main")  # main first, the others in creation order
    rec = ConversationRecord(
        session_id=session_id,
        created_at=_utc_text(created_at),
        updated_at=_utc_text(updated_at),
    )
    views: dict[str, list[tuple[int, int]]] = {"main": []}  # branch -> [(message id, seq)]
    anc: dict[str, tuple[list[str], list[int]]] = {"main": ([], [])}
    next_seq = 1
    for branch in order:
        wanted = [m for m in ids[branch] if m in parsed]
        parent, shared = "main", 0
        if branch != "main":
            for placed in views:
                n = _common([m for m, _ in views[placed]], wanted)
                if n > shared:
                    parent, shared = placed, n
        prefix = views[parent][:shared]
        own = wanted[shared:]
        try:
            batch = encode_items([parsed[m] for m in own])
        except (TypeError, ValueError) as exc:
            rec.error = f"cannot store an item of branch {branch!r}: {exc}"
            return rec, skipped
        seqs = list(range(next_seq, next_seq + len(own)))
        next_seq += len(own)
        for m, seq, text, role, kind in zip(
            own, seqs, batch.items, batch.roles, batch.types, strict=True
        ):
            stamp = _utc_text(data[m][1])
            rec.items.append(ItemRecord(seq, text, role, kind, stamp, branch=branch))
        views[branch] = prefix + list(zip(own, seqs, strict=True))
        if branch == "main":
            continue
        bound = prefix[-1][1] if prefix else 0
        parent_anc, parent_upto = anc[parent]
        anc[branch] = ([parent, *parent_anc], [bound, *(min(u, bound) for u in parent_upto)])
        users = sum(1 for m, _ in prefix if isinstance(parsed[m], dict) and _is_user(parsed[m]))
        rec.branches.append(
            BranchRecord(
                branch_id=branch,
                parent_id=parent,
                from_turn=users + 1,
                anc=anc[branch][0],
                upto=anc[branch][1],
                created_at=_utc_text(data[ids[branch][0]][1]) if ids[branch] else None,
            )
        )
    gone = datetime.now(UTC).isoformat()
    for branch in reserved:
        if branch != "main" and branch not in anc:
            rec.branches.append(BranchRecord(branch, "main", 0, [], [], None, deleted_at=gone))
    rec.items.sort(key=lambda it: it.seq)
    rec.next_seq = next_seq
    rec.usage = [u for u in usage if u.branch in views]
    return rec, skipped


def _is_user(item: dict[str, Any]) -> bool:
    return item.get("role") == "user"
