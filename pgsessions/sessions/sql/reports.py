"""The report statements. Each reads ``usage_logs`` by ``created_at`` (its index, migration
0008) or ``conversations`` by ``updated_at`` (its index, or ``active_at``'s), both bounded by
the time range;
``messages`` is only reached by its primary key, for the few sessions a report lists.

Parameters: ``%(since)s``, ``%(until)s`` (timestamptz), ``%(top)s`` (rows per ranking).
"""

from __future__ import annotations

from functools import lru_cache

from .fragments import quote_ident, updated_before, updated_since

_RANGE = "created_at >= %(since)s AND created_at < %(until)s"
_SUMS = (
    "count(*) AS turns, sum(requests)::bigint AS requests,"
    " sum(input_tokens)::bigint AS input_tokens, sum(output_tokens)::bigint AS output_tokens,"
    " sum(total_tokens)::bigint AS total_tokens"
)

_TEMPLATES = {
    # tokens and requests per UTC day
    "by_day": (
        "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, {sums},"
        " count(DISTINCT session_id) AS sessions"
        " FROM {s}.usage_logs WHERE {range} GROUP BY 1 ORDER BY 1"
    ),
    # per model, most tokens first
    "by_model": (
        "SELECT coalesce(model, '(unknown)') AS model, {sums},"
        " count(DISTINCT session_id) AS sessions"
        " FROM {s}.usage_logs WHERE {range} GROUP BY 1 ORDER BY total_tokens DESC, 1"
    ),
    # per conversation branch (migration 0010), most tokens first
    "by_branch": (
        "SELECT branch_id AS branch, {sums}, count(DISTINCT session_id) AS sessions"
        " FROM {s}.usage_logs WHERE {range} GROUP BY 1 ORDER BY total_tokens DESC, 1"
        " LIMIT %(top)s"
    ),
    # tool calls added in the range, by tool (named as AdvancedSQLiteSession.get_tool_usage
    # names them), in conversations written since the start (their messages by primary key)
    "by_tool": (
        "SELECT coalesce(t.tool, '(unnamed)') AS tool, count(*) AS calls,"
        " count(DISTINCT t.session_id) AS sessions FROM ("
        "SELECT m.session_id, CASE"
        " WHEN m.type IN ('mcp_call', 'mcp_approval_request')"
        " AND m.item->>'server_label' IS NOT NULL"
        " THEN concat_ws('.', m.item->>'server_label', nullif(m.item->>'name', ''))"
        " WHEN m.type = 'tool_search_call' THEN 'tool_search'"
        " WHEN m.type IN ('computer_call', 'file_search_call', 'web_search_call',"
        " 'code_interpreter_call', 'shell_call', 'apply_patch_call') THEN m.type"
        " WHEN m.item->>'namespace' <> '' AND m.item->>'namespace' <> m.item->>'name'"
        " THEN (m.item->>'namespace') || '.' || (m.item->>'name')"
        " ELSE m.item->>'name' END AS tool"
        " FROM (SELECT c.session_id FROM {s}.conversations c WHERE {since}) c"
        " JOIN {s}.messages m ON m.session_id = c.session_id"
        " WHERE m.created_at >= %(since)s AND m.created_at < %(until)s"
        " AND m.role IS DISTINCT FROM 'user' AND m.role IS DISTINCT FROM 'assistant'"
        " AND m.type IN ('tool_call', 'function_call', 'computer_call', 'file_search_call',"
        " 'web_search_call', 'code_interpreter_call', 'tool_search_call', 'custom_tool_call',"
        " 'mcp_call', 'mcp_approval_request', 'shell_call', 'apply_patch_call')) t"
        " GROUP BY 1 ORDER BY calls DESC, 1 LIMIT %(top)s"
    ),
    # the sessions that used the most tokens
    "by_session": (
        "SELECT session_id, {sums} FROM {s}.usage_logs WHERE {range}"
        " GROUP BY session_id ORDER BY total_tokens DESC, session_id LIMIT %(top)s"
    ),
    # the sessions with the most turns, and the items they added in the range (primary key)
    "busiest": (
        "SELECT b.session_id, b.turns, b.requests, b.total_tokens,"
        " (SELECT count(*) FROM {s}.messages m WHERE m.session_id = b.session_id"
        " AND m.created_at >= %(since)s AND m.created_at < %(until)s) AS items_added"
        " FROM (SELECT session_id, {sums} FROM {s}.usage_logs WHERE {range}"
        " GROUP BY session_id ORDER BY turns DESC, requests DESC, session_id"
        " LIMIT %(top)s) b ORDER BY b.turns DESC, b.requests DESC, b.session_id"
    ),
    # the conversations active in the range holding the most items, with their size
    "largest": (
        "SELECT c.session_id, c.item_count AS items, c.updated_at,"
        " (SELECT coalesce(sum(pg_column_size(m.item)), 0)::bigint FROM {s}.messages m"
        " WHERE m.session_id = c.session_id) AS item_bytes"
        " FROM (SELECT session_id, item_count, updated_at FROM {s}.conversations c"
        " WHERE {since} AND {until}"
        " ORDER BY item_count DESC, session_id LIMIT %(top)s) c"
        " ORDER BY c.item_count DESC, c.session_id"
    ),
}

REPORTS = tuple(_TEMPLATES)


#: over shards: only the rows of the buckets this shard owns (not a move's leftovers)
_OWNED = " AND {alias}bucket = ANY(%(owned)s::integer[])"


@lru_cache(maxsize=128)
def report_sql(name: str, schema: str, owned: bool = False) -> str:
    """The statement of report ``name`` for tables in ``schema``; with ``owned``, only the
    rows of the buckets in ``%(owned)s`` (int[])."""
    if name not in _TEMPLATES:
        raise ValueError(f"no report {name!r}: choose from {', '.join(REPORTS)}")
    return _TEMPLATES[name].format(
        s=quote_ident(schema),
        sums=_SUMS,
        range=_RANGE + (_OWNED.format(alias="") if owned else ""),
        since=updated_since("c", "since") + (_OWNED.format(alias="c.") if owned else ""),
        until=updated_before("c", "until"),
    )
