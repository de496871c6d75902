"""The statements sessions/ sends, rendered once per schema name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import LiteralString

from .schema import quote_ident


@dataclass(frozen=True)
class Statements:
    get_items: LiteralString
    add_items: LiteralString
    pop_item: LiteralString
    clear_session: LiteralString
    update_metadata: LiteralString
    get_metadata: LiteralString
    store_usage: LiteralString
    session_usage: LiteralString
    turn_usage_one: LiteralString
    turn_usage_all: LiteralString


@lru_cache(maxsize=64)
def statements(schema: str) -> Statements:
    """The statements for tables in ``schema`` (quoted safely)."""
    s = quote_ident(schema)

    def q(text: str) -> LiteralString:
        return text.replace("{s}", s)

    return Statements(
        # one row: the latest N items (LIMIT NULL = all) in order, as one JSON array text
        get_items=q(
            "SELECT json_agg(t.item ORDER BY t.seq)::text FROM ("
            "SELECT seq, item FROM {s}.messages WHERE session_id = %s"
            " ORDER BY seq DESC LIMIT %s) t"
        ),
        # a procedure that commits: one row (applied, token); see migration 0003
        add_items=q(
            "CALL {s}.add_items_committed("
            "%s, %s, %b::text[]::json[], %b::text[], %b::text[], %s::jsonb)"
        ),
        pop_item=q("SELECT {s}.pop_item(%s, %s)::text"),
        clear_session=q("SELECT {s}.clear_session(%s)"),
        update_metadata=q(
            "INSERT INTO {s}.conversations AS c (session_id, metadata) VALUES (%s, %s::jsonb)"
            " ON CONFLICT (session_id) DO UPDATE SET"
            " metadata = CASE WHEN %s THEN excluded.metadata"
            " ELSE c.metadata || excluded.metadata END,"
            " updated_at = now()"
            " RETURNING c.metadata::text"
        ),
        get_metadata=q("SELECT metadata::text FROM {s}.conversations WHERE session_id = %s"),
        # the current user turn is the number of role 'user' items stored; no turn, no row
        store_usage=q(
            "INSERT INTO {s}.usage_logs AS u (session_id, user_turn_number, model, requests,"
            " input_tokens, output_tokens, total_tokens, input_tokens_details,"
            " output_tokens_details)"
            " SELECT c.session_id, c.user_turns, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb"
            " FROM {s}.conversations c WHERE c.session_id = %s AND c.user_turns > 0"
            " ON CONFLICT (session_id, user_turn_number) DO UPDATE SET"
            " model = excluded.model, requests = excluded.requests,"
            " input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,"
            " total_tokens = excluded.total_tokens,"
            " input_tokens_details = excluded.input_tokens_details,"
            " output_tokens_details = excluded.output_tokens_details, created_at = now()"
            " RETURNING u.user_turn_number"
        ),
        session_usage=q(
            "SELECT sum(requests)::bigint, sum(input_tokens)::bigint, sum(output_tokens)::bigint,"
            " sum(total_tokens)::bigint, count(*) FROM {s}.usage_logs WHERE session_id = %s"
        ),
        turn_usage_one=q(
            "SELECT requests, input_tokens, output_tokens, total_tokens,"
            " input_tokens_details, output_tokens_details"
            " FROM {s}.usage_logs WHERE session_id = %s AND user_turn_number = %s"
        ),
        turn_usage_all=q(
            "SELECT user_turn_number, requests, input_tokens, output_tokens, total_tokens,"
            " input_tokens_details, output_tokens_details"
            " FROM {s}.usage_logs WHERE session_id = %s ORDER BY user_turn_number"
        ),
    )
