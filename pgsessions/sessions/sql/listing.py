"""The statement of list_sessions (sessions/listing.py): a keyset page of conversations."""

from __future__ import annotations

from functools import lru_cache

from .names import quote_ident

#: migration 0007's active_at of a timestamp parameter
_ACTIVE_AT = "date_bin('1 minute', %s::timestamptz, timestamptz '2000-01-01 00:00:00+00')"


@lru_cache(maxsize=64)
def list_sessions_sql(schema: str, *, after: bool, metadata: bool) -> str:
    """One page, most recently updated first. Parameters in order: the tenant ('' for
    none); with ``after`` the cursor's updated_at twice and its session id; with
    ``metadata`` the jsonb it must contain; the row limit."""
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
    return (
        f"SELECT session_id, created_at, updated_at, item_count, metadata::text"
        f" FROM {s}.conversations"
        + " WHERE "
        + " AND ".join(where)
        # the order of updated_at, read off the index on active_at minute by minute
        + " ORDER BY active_at DESC, updated_at DESC, session_id DESC LIMIT %s"
    )
