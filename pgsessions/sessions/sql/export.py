"""The statements of export and import (JSON Lines): one conversation read as ordered
lines, the keyset listing of session ids, and the writes of an import."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .fragments import quote_ident


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


def list_sql(schema: str, with_metadata: bool, owned: bool = False) -> str:
    """Session ids after %s [containing the jsonb %s] [in the buckets %s], up to %s."""
    s = quote_ident(schema)
    where = " AND metadata @> %s::jsonb" if with_metadata else ""
    if owned:
        where += " AND bucket = ANY(%s::integer[])"
    return (
        f"SELECT session_id FROM {s}.conversations WHERE session_id > %s{where}"
        " ORDER BY session_id LIMIT %s"
    )


@dataclass(frozen=True)
class ImportStatements:
    """The statements of an import (export/load.py), one conversation at a time."""

    lock: str
    insert_conversation: str
    delete_conversation: str
    insert_items: str
    insert_usage: str
    insert_branch: str
    delete_branches: str


@lru_cache(maxsize=16)
def import_sql(schema: str) -> ImportStatements:
    s = quote_ident(schema)
    return ImportStatements(
        # (metadata and branches equal, items digest, usage equal) of the existing
        # conversation, locked; items of branch main as seq:item, others as branch/seq:item
        lock=(
            "SELECT c.metadata = %(meta)s::jsonb AND c.current_branch = %(current)s"
            " AND (SELECT coalesce(json_agg(json_build_array(b.branch_id, b.parent_id,"
            " b.from_turn, b.anc, b.upto, b.deleted_at IS NULL)"
            " ORDER BY b.branch_id COLLATE \"C\"), '[]') FROM"
            f" {s}.branches b WHERE b.session_id = c.session_id)::jsonb = %(branches)s::jsonb,"
            " (SELECT coalesce(md5(string_agg(CASE WHEN m.branch_id = 'main' THEN ''"
            " ELSE m.branch_id || '/' END || m.seq::text || ':' || m.item::text, E'\\n'"
            " ORDER BY m.branch_id <> 'main', m.branch_id COLLATE \"C\", m.seq)), '')"
            f" FROM {s}.messages m WHERE m.session_id = c.session_id),"
            " (SELECT coalesce(json_agg(json_build_array(u.user_turn_number, u.model,"
            " u.requests, u.input_tokens, u.output_tokens, u.total_tokens,"
            " u.input_tokens_details, u.output_tokens_details, u.branch_id)"
            " ORDER BY u.branch_id COLLATE \"C\", u.user_turn_number), '[]')"
            f" FROM {s}.usage_logs u"
            " WHERE u.session_id = c.session_id)::jsonb = %(usage)s::jsonb"
            f" FROM {s}.conversations c WHERE c.session_id = %(sid)s FOR UPDATE OF c"
        ),
        insert_conversation=(
            f"INSERT INTO {s}.conversations (session_id, created_at, updated_at, metadata,"
            " next_seq, item_count, user_turns, current_branch)"
            " VALUES (%s, coalesce(%s::timestamptz, now()), coalesce(%s::timestamptz, now()),"
            " %s::jsonb, %s, %s, %s, %s) ON CONFLICT (session_id, bucket) DO NOTHING RETURNING 1"
        ),
        delete_conversation=f"DELETE FROM {s}.conversations WHERE session_id = %s",
        insert_items=(
            f"INSERT INTO {s}.messages (session_id, seq, item, role, type, created_at, branch_id)"
            " SELECT %s, t.seq, t.item::json, t.role, t.type, coalesce(t.created_at, now()),"
            " t.branch FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[],"
            " %s::text[]::timestamptz[], %s::text[]) AS t(seq, item, role, type, created_at,"
            " branch)"
        ),
        insert_usage=(
            f"INSERT INTO {s}.usage_logs (session_id, user_turn_number, model, requests,"
            " input_tokens, output_tokens, total_tokens, input_tokens_details,"
            " output_tokens_details, created_at, branch_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb,"
            " coalesce(%s::timestamptz, now()), %s)"
        ),
        # a tombstone left by an earlier clear or delete of the same id gives way to the record
        insert_branch=(
            f"INSERT INTO {s}.branches AS b (session_id, branch_id, parent_id, from_turn, anc,"
            " upto, created_at, deleted_at)"
            " VALUES (%s, %s, %s, %s, %s::text[], %s::bigint[], coalesce(%s::timestamptz, now()),"
            " %s::timestamptz) ON CONFLICT (session_id, branch_id, bucket) DO UPDATE SET"
            " parent_id = excluded.parent_id, from_turn = excluded.from_turn,"
            " anc = excluded.anc, upto = excluded.upto, created_at = excluded.created_at,"
            " deleted_at = excluded.deleted_at"
        ),
        delete_branches=f"DELETE FROM {s}.branches WHERE session_id = %s",
    )
