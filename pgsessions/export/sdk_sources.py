"""Conversations stored by the Agents SDK's own backends, as import records.

- ``SQLiteSession``: tables ``agent_sessions`` and ``agent_messages`` (``message_data`` is
  ``json.dumps(item)``, ordered by ``id``).
- ``AdvancedSQLiteSession`` (the same file with ``message_structure``): every branch, with
  its ``turn_usage`` rows, a shared prefix stored once (see :mod:`.sdk_branches`).
- ``SQLAlchemySession``: the same two tables in any database SQLAlchemy reaches, ordered by
  ``(created_at, id)`` as the SDK reads them.

Items are parsed and re-encoded as PostgresSession stores them (same values; role and type
extracted). Rows that are not valid JSON are skipped, as the SDK's ``get_items`` skips them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from ..sessions.items import encode_items
from ..sessions.limits import check_text
from .records import ConversationRecord, ItemRecord, UsageRecord
from .sdk_branches import branched_record, has_structure, reserved_ids, structure_rows


def _utc_text(value: Any) -> str | None:
    """A naive UTC timestamp (SQLite text or datetime) as timestamptz text."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat() if value.tzinfo else value.isoformat() + "+00:00"
    return f"{value}+00"


def build_record(
    session_id: str,
    created_at: Any,
    updated_at: Any,
    rows: list[tuple[Any, Any]],
    usage: list[UsageRecord] | None = None,
) -> tuple[ConversationRecord, int]:
    """A record from ``(message_data, created_at)`` rows in order; also the rows skipped."""
    parsed: list[Any] = []
    stamps: list[str | None] = []
    skipped = 0
    too_deep: str | None = None
    for data, stamp in rows:
        try:
            if isinstance(data, str) and too_deep is None:
                check_text(f"item {len(parsed)}", data)  # before json recurses that deep
            parsed.append(json.loads(data))
        except (json.JSONDecodeError, TypeError):
            skipped += 1
            continue
        except ValueError as exc:
            too_deep = str(exc)
            continue
        stamps.append(_utc_text(stamp))
    rec = ConversationRecord(
        session_id=session_id,
        created_at=_utc_text(created_at),
        updated_at=_utc_text(updated_at),
        usage=usage or [],
    )
    if too_deep is not None:
        rec.error = f"cannot store an item: {too_deep}"
        return rec, skipped
    try:
        batch = encode_items(parsed)
    except (TypeError, ValueError) as exc:
        rec.error = f"cannot store an item: {exc}"
        return rec, skipped
    rec.items = [
        ItemRecord(seq=i + 1, item=text, role=role, type=kind, created_at=stamp)
        for i, (text, role, kind, stamp) in enumerate(
            zip(batch.items, batch.roles, batch.types, stamps, strict=True)
        )
    ]
    return rec, skipped


class SourceStats:
    """Rows a source skipped (not valid JSON), for the import report."""

    def __init__(self) -> None:
        self.skipped_rows = 0


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sqlite_records(
    path: str | Path,
    *,
    sessions_table: str = "agent_sessions",
    messages_table: str = "agent_messages",
    stats: SourceStats | None = None,
) -> Iterator[ConversationRecord]:
    """The conversations of an SQLiteSession database file (opened read-only)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no SQLite database at {file}")
    conn = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
    st, mt = _quote(sessions_table), _quote(messages_table)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for name in (sessions_table, messages_table):
            if name not in tables:
                raise ValueError(f"{file} has no table {name!r} (not an SQLiteSession database?)")
        has_usage = "turn_usage" in tables
        sessions = conn.execute(
            f"SELECT session_id, created_at, updated_at FROM {st} ORDER BY session_id"
        ).fetchall()
        for sid, created, updated in sessions:
            usage = _sqlite_usage(conn, sid) if has_usage else []
            structure = structure_rows(conn, mt, sid) if has_structure(tables) else []
            if structure:
                reserved = reserved_ids(conn, sid, tables)
                rec, skipped = branched_record(
                    str(sid), created, updated, structure, usage, reserved
                )
            else:
                rows = conn.execute(
                    f"SELECT message_data, created_at FROM {mt} WHERE session_id = ? ORDER BY id",
                    (sid,),
                ).fetchall()
                main = [u for u in usage if u.branch == "main"]
                rec, skipped = build_record(str(sid), created, updated, rows, main)
            if stats is not None:
                stats.skipped_rows += skipped
            yield rec
    finally:
        conn.close()


def _sqlite_usage(conn: sqlite3.Connection, sid: str) -> list[UsageRecord]:
    rows = conn.execute(
        "SELECT user_turn_number, requests, input_tokens, output_tokens, total_tokens,"
        " input_tokens_details, output_tokens_details, created_at, branch_id FROM turn_usage"
        " WHERE session_id = ? ORDER BY branch_id, user_turn_number",
        (sid,),
    ).fetchall()
    return [
        UsageRecord(
            user_turn_number=int(turn),
            model=None,
            requests=int(req or 0),
            input_tokens=int(inp or 0),
            output_tokens=int(out or 0),
            total_tokens=int(tot or 0),
            input_tokens_details=in_d,
            output_tokens_details=out_d,
            created_at=_utc_text(stamp),
            branch=str(branch),
        )
        for turn, req, inp, out, tot, in_d, out_d, stamp, branch in rows
    ]


SQLALCHEMY_MISSING = (
    "--from-sqlalchemy needs SQLAlchemy and the URL's async driver (as SQLAlchemySession "
    "does): pip install 'openai-agents[sqlalchemy]' plus e.g. asyncpg or aiosqlite"
)


def safe_url(url: str) -> str:
    """``url`` with any password hidden (for messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(the given URL)"


async def sqlalchemy_records(
    url: str,
    *,
    sessions_table: str = "agent_sessions",
    messages_table: str = "agent_messages",
    stats: SourceStats | None = None,
    page: int = 500,
) -> AsyncIterator[ConversationRecord]:
    """The conversations of SQLAlchemySession tables behind an async SQLAlchemy ``url``
    (e.g. ``postgresql+asyncpg://...`` or ``sqlite+aiosqlite:///file.db``)."""
    try:
        from sqlalchemy import column, select, table
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError:
        raise RuntimeError(SQLALCHEMY_MISSING) from None
    sessions = table(
        sessions_table, column("session_id"), column("created_at"), column("updated_at")
    )
    messages = table(
        messages_table,
        column("id"),
        column("session_id"),
        column("message_data"),
        column("created_at"),
    )
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            after = ""
            while True:
                result = await conn.execute(
                    select(sessions.c.session_id, sessions.c.created_at, sessions.c.updated_at)
                    .where(sessions.c.session_id > after)
                    .order_by(sessions.c.session_id)
                    .limit(page)
                )
                chunk = result.all()
                for sid, created, updated in chunk:
                    rows = (
                        await conn.execute(
                            select(messages.c.message_data, messages.c.created_at)
                            .where(messages.c.session_id == sid)
                            .order_by(messages.c.created_at, messages.c.id)
                        )
                    ).all()
                    rec, skipped = build_record(
                        str(sid), created, updated, [(r[0], r[1]) for r in rows]
                    )
                    if stats is not None:
                        stats.skipped_rows += skipped
                    yield rec
                if len(chunk) < page:
                    return
                after = chunk[-1][0]
    finally:
        await engine.dispose()
