"""The statements a PostgresSession sends, rendered once per schema name."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import LiteralString

from ...router.stacked import Stacked
from .fragments import quote_ident


@dataclass(frozen=True)
class Statements:
    get_items: LiteralString
    get_items_ttl: LiteralString
    add_items: LiteralString
    add_items_in_batch: LiteralString
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
    create_branch: LiteralString
    switch_branch: LiteralString
    delete_branch: LiteralString
    list_branches: LiteralString
    branch_rows: LiteralString
    current_branch: LiteralString
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

    st = Statements(
        # one row: the latest N items (LIMIT NULL = all) in order, their JSON texts joined
        # by commas (the caller adds the brackets; NULL when there are none), then the
        # server's replay position once they are read (NULL on a primary), from which the
        # router learns how far a replica is (execute_read(replay_column=True)).
        # string_agg, not json_agg(...)::text: json has no cast to text, so that cast runs
        # the whole array through json's output and text's input, two more copies of it
        # (about a quarter of the statement's server CPU at 50 items of 1 KB)
        get_items=q(
            "SELECT string_agg(t.item::text, ',' ORDER BY t.seq), pg_last_wal_replay_lsn()::text"
            " FROM {s}.branch_items(%s, %s, %s::bigint) t"
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
            "SELECT seq, item, created_at FROM {s}.branch_items(%s, %s, %s::bigint)) r) l) v"
            " WHERE NOT v.gone"
        ),
        # a procedure that commits: one row (applied, token); the last parameter is true on
        # a retry (it looks the operation id up first); see migrations 0003 and 0007
        add_items=q(
            "CALL {s}.add_items_checked_committed("
            "%s, %s, %b::text[]::json[], %b::text[], %b::text[], %s::jsonb, %s)"
        ),
        # add_items in a transaction the router commits (the same parameters): one write of
        # a coalesced batch; the one row is (applied). Stacked: the batch's add_items go as
        # one statement over VALUES (router/stacked.py), hence the types named
        add_items_in_batch=Stacked(
            q("{s}.add_items_checked"),
            (
                "%s::text",
                "%s::uuid",
                "%b::text[]::json[]",
                "%b::text[]",
                "%b::text[]",
                "%s::jsonb",
                "%s::boolean",
            ),
        ),
        # every write below takes a client operation id (migrations 0001 and 0004)
        pop_item=q("SELECT {s}.pop_item(%s, %s)::text"),
        clear_session=q("SELECT {s}.clear_session(%s, %s)"),
        update_metadata=q("SELECT {s}.update_metadata(%s, %s, %s::jsonb, %s::boolean)::text"),
        get_metadata=q("SELECT metadata::text FROM {s}.conversations WHERE session_id = %s"),
        # the current user turn is the number of role 'user' items stored; no turn, no row
        store_usage=q(
            "SELECT {s}.store_usage(%s, %s, %s, %s::integer, %s::bigint, %s::bigint, %s::bigint,"
            " %s::jsonb, %s::jsonb)"
        ),
        # all branches when the branch (%s) is NULL, as AdvancedSQLiteSession sums them
        session_usage=q(
            "SELECT sum(requests)::bigint, sum(input_tokens)::bigint, sum(output_tokens)::bigint,"
            " sum(total_tokens)::bigint, count(*) FROM {s}.usage_logs WHERE session_id = %s"
            " AND (%s::text IS NULL OR branch_id = %s::text)"
        ),
        # one branch: the given one, or the conversation's current one (branch_of)
        turn_usage_one=q(
            "SELECT requests, input_tokens, output_tokens, total_tokens,"
            " input_tokens_details, output_tokens_details"
            " FROM {s}.usage_logs WHERE session_id = %s AND branch_id = {s}.branch_of(%s, %s)"
            " AND user_turn_number = %s"
        ),
        turn_usage_all=q(
            "SELECT user_turn_number, requests, input_tokens, output_tokens, total_tokens,"
            " input_tokens_details, output_tokens_details"
            " FROM {s}.usage_logs WHERE session_id = %s AND branch_id = {s}.branch_of(%s, %s)"
            " ORDER BY user_turn_number"
        ),
        # the conversation's identity (created_at) and its latest N rows as [[seq, item], ...]
        # (of the current branch: replace_suffix refuses to delete rows another branch shares)
        compaction_snapshot=q(
            "SELECT c.created_at, (SELECT json_agg(json_build_array(t.seq, t.item)"
            " ORDER BY t.seq)::text FROM {s}.branch_items(c.session_id, c.current_branch,"
            " %s::bigint) t) FROM {s}.conversations c WHERE c.session_id = %s"
        ),
        # the oldest rows of main after seq %s and before seq %s, as [[seq, item], ...]
        # (a pruned prefix must be main's: replace_suffix refuses one on another branch)
        compaction_prefix=q(
            "SELECT json_agg(json_build_array(t.seq, t.item) ORDER BY t.seq)::text FROM ("
            "SELECT seq, item FROM {s}.messages WHERE session_id = %s AND branch_id = 'main'"
            " AND seq > %s AND seq < %s ORDER BY seq LIMIT %s) t"
        ),
        replace_suffix=q(
            "SELECT {s}.replace_suffix(%s, %s, %s::timestamptz, %s::bigint[], %s::bigint,"
            " %b::text[]::json[], %b::text[], %b::text[])"
        ),
        # the router's setup statement: the tenant for this transaction only (migration 0006)
        set_tenant=q("SELECT {s}.set_tenant(%s)"),
        # branches (migration 0010): writes take an operation id like every other
        create_branch=q("SELECT {s}.create_branch(%s, %s, %s, %s::integer, %s)"),
        switch_branch=q("SELECT {s}.switch_branch(%s, %s, %s)"),
        delete_branch=q("SELECT {s}.delete_branch(%s, %s, %s, %s::boolean)"),
        # 'main' (the conversation's own created_at) and every live branch, oldest first:
        # id, items, user items, current, created_at as AdvancedSQLiteSession's text (UTC)
        list_branches=q(
            "SELECT b.branch_id, k.n, k.u, b.branch_id = c.current_branch,"
            " to_char(b.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"
            " FROM {s}.conversations c CROSS JOIN LATERAL ("
            "SELECT 'main'::text AS branch_id, c.created_at, 0 AS ord UNION ALL"
            " SELECT d.branch_id, d.created_at, 1 FROM {s}.branches d"
            " WHERE d.session_id = c.session_id AND d.deleted_at IS NULL) b"
            " CROSS JOIN LATERAL (SELECT count(*) AS n, count(*) FILTER (WHERE t.role = 'user')"
            " AS u FROM {s}.branch_items(c.session_id, b.branch_id, NULL) t) k"
            " WHERE c.session_id = %s ORDER BY b.created_at, b.ord, b.branch_id"
        ),
        fenced={},
        current_branch=q("SELECT {s}.branch_of(%s, NULL)"),
        # a branch's whole view as [[role, type, item, created_at], ...] in order (NULL when
        # empty); the last parameter true keeps only the user items
        branch_rows=q(
            "SELECT json_agg(json_build_array(t.role, t.type, t.item,"
            " to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'))"
            " ORDER BY t.seq)::text"
            " FROM {s}.branch_items(%s, %s, NULL) t"
            " WHERE NOT %s::boolean OR t.role = 'user'"
        ),
    )
    # every write's first argument is the session id (branch writes included)
    writes = (
        st.add_items,
        st.add_items_in_batch,
        st.pop_item,
        st.clear_session,
        st.update_metadata,
        st.store_usage,
        st.replace_suffix,
        st.create_branch,
        st.switch_branch,
        st.delete_branch,
    )
    fence = q("({s}.fenced(%s::integer, %s::bigint, %s)")
    st.fenced.update({w: _fence_first(w, fence) for w in writes})
    return st


def _fence_first(statement: LiteralString, fence: LiteralString) -> LiteralString:
    """``statement`` with its first argument (the session id) passed through ``fence``."""
    head, sep, tail = statement.partition("(%s")
    assert sep, statement
    return head + fence + tail


#: migration 0007's active_at of a timestamp parameter
_ACTIVE_AT = "date_bin('1 minute', %s::timestamptz, timestamptz '2000-01-01 00:00:00+00')"


@lru_cache(maxsize=64)
def list_sessions_sql(schema: str, *, after: bool, metadata: bool, owned: bool = False) -> str:
    """One page, most recently updated first. Parameters in order: the tenant ('' for
    none); with ``after`` the cursor's updated_at twice and its session id; with
    ``metadata`` the jsonb it must contain; with ``owned`` the buckets (int[]) this shard
    owns; the row limit."""
    s = quote_ident(schema)
    # named even where row-level security filters too: the index leads with the tenant
    where = ["tenant = %s"]
    if after:
        # active_at (indexed) is updated_at to the minute: the first condition lets the
        # index skip what the second leaves out anyway (migration 0007)
        where.append(f"active_at <= {_ACTIVE_AT}")
        where.append("(updated_at, session_id) < (%s, %s)")
    if metadata:
        where.append("metadata @> %s::jsonb")
    if owned:
        where.append("bucket = ANY(%s::integer[])")
    return (
        f"SELECT session_id, created_at, updated_at, item_count, metadata::text"
        f" FROM {s}.conversations"
        + " WHERE "
        + " AND ".join(where)
        # the order of updated_at, read off the index on active_at minute by minute
        + " ORDER BY active_at DESC, updated_at DESC, session_id DESC LIMIT %s"
    )
