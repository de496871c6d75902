"""Export: conversations read through the router (replicas when caught up) as export lines.

Each conversation is read by one statement, so it is one consistent snapshot even while
sessions keep writing; the lines are built by PostgreSQL (``json_build_object`` embeds a
``json`` value's stored text unchanged).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..sessions.items import encode_metadata
from ..sessions.schema import migrate_hint, quote_ident
from .records import header_line

if TYPE_CHECKING:
    from ..router.protocol import Router

#: conversations listed per statement when exporting many
PAGE = 500


@lru_cache(maxsize=16)
def conversation_sql(schema: str) -> str:
    """One conversation as ordered (kind, n, line) rows: the conversation (with its tenant,
    migration 0006, and current branch, 0010), items, usage, branches (tombstones too)."""
    s = quote_ident(schema)
    return (
        "SELECT 0 AS k, 0::bigint AS n, json_build_object("
        "'kind', 'conversation', 'session_id', c.session_id, 'tenant', c.tenant,"
        " 'created_at', c.created_at,"
        " 'updated_at', c.updated_at, 'metadata', c.metadata, 'next_seq', c.next_seq,"
        " 'item_count', c.item_count, 'user_turns', c.user_turns,"
        f" 'items', (SELECT count(*) FROM {s}.messages m WHERE m.session_id = c.session_id),"
        f" 'usage_rows', (SELECT count(*) FROM {s}.usage_logs u"
        " WHERE u.session_id = c.session_id), 'current_branch', c.current_branch,"
        f" 'branches', (SELECT count(*) FROM {s}.branches b"
        " WHERE b.session_id = c.session_id))::text"
        f" FROM {s}.conversations c WHERE c.session_id = %(sid)s"
        " UNION ALL"
        " SELECT 1, m.seq, json_build_object("
        "'kind', 'item', 'session_id', m.session_id, 'seq', m.seq, 'role', m.role,"
        " 'type', m.type, 'branch', m.branch_id, 'created_at', m.created_at, 'item', m.item)::text"
        f" FROM {s}.messages m WHERE m.session_id = %(sid)s"
        " UNION ALL"
        " SELECT 2, u.user_turn_number, json_build_object("
        "'kind', 'usage', 'session_id', u.session_id, 'branch', u.branch_id,"
        " 'user_turn_number', u.user_turn_number,"
        " 'model', u.model, 'requests', u.requests, 'input_tokens', u.input_tokens,"
        " 'output_tokens', u.output_tokens, 'total_tokens', u.total_tokens,"
        " 'input_tokens_details', u.input_tokens_details,"
        " 'output_tokens_details', u.output_tokens_details, 'created_at', u.created_at)::text"
        f" FROM {s}.usage_logs u WHERE u.session_id = %(sid)s"
        " UNION ALL"
        " SELECT 3, 0, json_build_object("
        "'kind', 'branch', 'session_id', b.session_id, 'branch_id', b.branch_id,"
        " 'parent_id', b.parent_id, 'from_turn', b.from_turn, 'anc', b.anc, 'upto', b.upto,"
        " 'created_at', b.created_at, 'deleted_at', b.deleted_at)::text"
        f" FROM {s}.branches b WHERE b.session_id = %(sid)s"
        # the line breaks ties: one seq in two branches (a row copied when popped)
        " ORDER BY 1, 2, 3"
    )


def _list_sql(schema: str, with_metadata: bool) -> str:
    s = quote_ident(schema)
    where = " AND metadata @> %s::jsonb" if with_metadata else ""
    return (
        f"SELECT session_id FROM {s}.conversations WHERE session_id > %s{where}"
        " ORDER BY session_id LIMIT %s"
    )


async def session_ids(
    router: Router, *, metadata: Mapping[str, Any] | None = None, page: int = PAGE
) -> AsyncIterator[str]:
    """Every session id (or those whose metadata contains ``metadata``), cluster by cluster,
    in id order, in keyset pages of ``page``."""
    meta = encode_metadata(metadata)
    query = _list_sql(router.config.schema, meta is not None)
    for cluster in router.clusters():
        after = ""
        while True:
            params: list[Any] = [after] + ([meta] if meta is not None else []) + [page]
            with migrate_hint(router.config.schema):
                rows = await cluster.execute_read("export_list", None, query, params)
            for (sid,) in rows:
                yield sid
            if len(rows) < page:
                break
            after = rows[-1][0]


async def conversation_lines(router: Router, session_id: str) -> list[str]:
    """The export lines of one conversation (empty when it does not exist)."""
    query = conversation_sql(router.config.schema)
    with migrate_hint(router.config.schema):
        rows = await router.execute_read("export", session_id, query, {"sid": session_id})
    # a json column may hold insignificant raw newlines (never inside a string: PostgreSQL
    # refuses unescaped control characters there); one record must stay one line
    return [_one_line(r[2]) for r in rows]


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


async def export_lines(
    router: Router,
    *,
    session_ids_: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> AsyncIterator[str]:
    """The export: a header line, then each conversation's lines (no trailing newlines).

    ``session_ids_`` exports those sessions (unknown ones are skipped); otherwise every
    conversation, or those whose metadata contains ``metadata``.
    """
    yield header_line(router.config.schema, datetime.now(UTC).isoformat())
    if session_ids_ is not None:
        for sid in session_ids_:
            for line in await conversation_lines(router, sid):
                yield line
        return
    async for sid in session_ids(router, metadata=metadata):
        for line in await conversation_lines(router, sid):
            yield line
