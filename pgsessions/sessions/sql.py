"""The statements sessions/ sends, rendered once per schema name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import LiteralString

from .schema import quote_ident


@dataclass(frozen=True)
class Statements:
    get_items: LiteralString
    get_items_ttl: LiteralString
    add_items: LiteralString
    pop_item: LiteralString
    clear_session: LiteralString
    update_metadata: LiteralString
    get_metadata: LiteralString
    store_usage: LiteralString
    session_usage: LiteralString
    turn_usage_one: LiteralString
    turn_usage_all: LiteralString
    compaction_snapshot: LiteralString
    compaction_prefix: LiteralString
    replace_suffix: LiteralString
    set_tenant: LiteralString
    #: each write statement -> the same with its session id passed through the shard's
    #: fence: ``fenced(%s::integer, %s::bigint, %s)`` (bucket and epoch first; migration
    #: 0011), for a router that fences writes (Router.execute_write's ``fenced_query``)
    fenced: dict[str, LiteralString]


@lru_cache(maxsize=64)
def statements(schema: str) -> Statements:
    """The statements for tables in ``schema`` (quoted safely)."""
    s = quote_ident(schema)

    def q(text: str) -> LiteralString:
        return text.replace("{s}", s)

    writes = {
        # every write statement's first argument is the session id
        "add_items": q(
            "CALL {s}.add_items_checked_committed("
            "%s, %s, %b::text[]::json[], %b::text[], %b::text[], %s::jsonb, %s)"
        ),
        # every write below takes a client operation id (migrations 0001 and 0004)
        "pop_item": q("SELECT {s}.pop_item(%s, %s)::text"),
        "clear_session": q("SELECT {s}.clear_session(%s, %s)"),
        "update_metadata": q("SELECT {s}.update_metadata(%s, %s, %s::jsonb, %s::boolean)::text"),
        # the current user turn is the number of role 'user' items stored; no turn, no row
        "store_usage": q(
            "SELECT {s}.store_usage(%s, %s, %s, %s::integer, %s::bigint, %s::bigint, %s::bigint,"
            " %s::jsonb, %s::jsonb)"
        ),
        "replace_suffix": q(
            "SELECT {s}.replace_suffix(%s, %s, %s::timestamptz, %s::bigint[], %s::bigint,"
            " %b::text[]::json[], %b::text[], %b::text[])"
        ),
    }
    fence = q("({s}.fenced(%s::integer, %s::bigint, %s)")
    return Statements(
        # one row: the latest N items (LIMIT NULL = all) in order, their JSON texts joined
        # by commas (the caller adds the brackets; NULL when there are none), then the
        # server's replay position once they are read (NULL on a primary), from which the
        # router learns how far a replica is (execute_read(replay_column=True)).
        # string_agg, not json_agg(...)::text: json has no cast to text, so that cast runs
        # the whole array through json's output and text's input, two more copies of it
        # (about a quarter of the statement's server CPU at 50 items of 1 KB)
        get_items=q(
            "SELECT string_agg(t.item::text, ',' ORDER BY t.seq), pg_last_wal_replay_lsn()::text"
            " FROM ("
            "SELECT seq, item FROM {s}.messages WHERE session_id = %s"
            " ORDER BY seq DESC LIMIT %s) t"
        ),
        # get_items with a time-to-live (%s interval first; the same columns): the latest N
        # rows, without those before the newest idle gap longer than the TTL (counting the gap
        # up to now), so an expired conversation reads as empty and one written again shows
        # only the new items
        get_items_ttl=q(
            "SELECT string_agg(v.item::text, ',' ORDER BY v.seq), pg_last_wal_replay_lsn()::text"
            " FROM ("
            "SELECT l.seq, l.item, bool_or(l.gap) OVER (ORDER BY l.seq DESC"
            " ROWS UNBOUNDED PRECEDING) AS gone FROM ("
            "SELECT r.seq, r.item, lag(r.created_at, 1, now()) OVER (ORDER BY r.seq DESC)"
            " - r.created_at > %s::interval AS gap FROM ("
            "SELECT seq, item, created_at FROM {s}.messages WHERE session_id = %s"
            " ORDER BY seq DESC LIMIT %s) r) l) v WHERE NOT v.gone"
        ),
        # a procedure that commits: one row (applied, token); the last parameter is true on
        # a retry (it looks the operation id up first); see migrations 0003 and 0007
        add_items=writes["add_items"],
        pop_item=writes["pop_item"],
        clear_session=writes["clear_session"],
        update_metadata=writes["update_metadata"],
        get_metadata=q("SELECT metadata::text FROM {s}.conversations WHERE session_id = %s"),
        store_usage=writes["store_usage"],
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
        # the conversation's identity (created_at) and its latest N rows as [[seq, item], ...]
        compaction_snapshot=q(
            "SELECT c.created_at, (SELECT json_agg(json_build_array(t.seq, t.item)"
            " ORDER BY t.seq)::text FROM (SELECT seq, item FROM {s}.messages"
            " WHERE session_id = c.session_id ORDER BY seq DESC LIMIT %s) t)"
            " FROM {s}.conversations c WHERE c.session_id = %s"
        ),
        # the oldest rows after seq %s and before seq %s, as [[seq, item], ...]
        compaction_prefix=q(
            "SELECT json_agg(json_build_array(t.seq, t.item) ORDER BY t.seq)::text FROM ("
            "SELECT seq, item FROM {s}.messages WHERE session_id = %s AND seq > %s"
            " AND seq < %s ORDER BY seq LIMIT %s) t"
        ),
        replace_suffix=writes["replace_suffix"],
        # the router's setup statement: the tenant for this transaction only (migration 0006)
        set_tenant=q("SELECT {s}.set_tenant(%s)"),
        fenced={w: _fence_first(w, fence) for w in writes.values()},
    )


def _fence_first(statement: LiteralString, fence: LiteralString) -> LiteralString:
    """``statement`` with its first argument (the session id) passed through ``fence``."""
    head, sep, tail = statement.partition("(%s")
    assert sep, statement
    return head + fence + tail
