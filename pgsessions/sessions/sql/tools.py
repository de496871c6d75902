"""The statements the tools around the library read with (the drills' ledger check, the
demo's summary): by session-id prefix, on the primary."""

from __future__ import annotations

from functools import lru_cache

from .fragments import quote_ident


@lru_cache(maxsize=16)
def drill_items_sql(schema: str) -> str:
    """(session id, item text) of every stored item of sessions LIKE %s, in seq order."""
    return (
        "SELECT session_id, coalesce(item->>'content', item->'content'->0->>'text')"
        f" FROM {quote_ident(schema)}.messages WHERE session_id LIKE %s"
        " ORDER BY session_id, seq"
    )


@lru_cache(maxsize=16)
def usage_totals_sql(schema: str) -> str:
    """Runs, requests and tokens summed over the usage rows of sessions LIKE %s."""
    return (
        "SELECT count(*), coalesce(sum(requests), 0), coalesce(sum(input_tokens), 0),"
        " coalesce(sum(output_tokens), 0), coalesce(sum(total_tokens), 0)"
        f" FROM {quote_ident(schema)}.usage_logs WHERE session_id LIKE %s"
    )
