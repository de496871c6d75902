"""The statements of retention: which conversations expired, and their deletes in batches."""

from __future__ import annotations

from functools import lru_cache

from .fragments import quote_ident, updated_before


@lru_cache(maxsize=16)
def prune_sql(schema: str) -> dict[str, str]:
    """The statements of ``pgsessions prune`` (retention/prune.py), by name."""
    s = quote_ident(schema)
    expired = updated_before("c", "cutoff")
    return {
        "candidates": (
            f"SELECT c.session_id FROM {s}.conversations c WHERE {expired}"
            " AND c.session_id > %(after)s ORDER BY c.session_id LIMIT %(batch)s"
        ),
        "items": (
            f"DELETE FROM {s}.messages WHERE session_id = %(sid)s AND seq IN ("
            f"SELECT seq FROM {s}.messages WHERE session_id = %(sid)s"
            " AND created_at < %(cutoff)s ORDER BY seq LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
        ),
        "lock_expired": (
            f"SELECT 1 FROM {s}.conversations c WHERE c.session_id = %(sid)s AND {expired}"
            " FOR UPDATE SKIP LOCKED"
        ),
        # explicit deletes before the row's (not the cascade): their counts exclude rows
        # another pruner deleted meanwhile (they wait for it, then skip those rows)
        "rest_items": f"DELETE FROM {s}.messages WHERE session_id = %(sid)s",
        "all_usage": f"DELETE FROM {s}.usage_logs WHERE session_id = %(sid)s",
        "delete": f"DELETE FROM {s}.conversations WHERE session_id = %(sid)s",
        "lock_live": (f"SELECT 1 FROM {s}.conversations WHERE session_id = %(sid)s FOR UPDATE"),
        "old_usage": (
            f"DELETE FROM {s}.usage_logs WHERE session_id = %(sid)s AND created_at < %(cutoff)s"
        ),
        "recount": (
            f"UPDATE {s}.conversations c SET"
            f" item_count = (SELECT count(*) FROM {s}.messages m"
            " WHERE m.session_id = c.session_id),"
            f" user_turns = (SELECT count(*) FROM {s}.messages m"
            " WHERE m.session_id = c.session_id AND m.role = 'user')"
            " WHERE c.session_id = %(sid)s"
        ),
        "ops": f"SELECT {s}.prune_ops(%s::interval, %s)",
        # a conversation deleted for good frees its branch ids (a live one keeps them)
        "tombstones": (
            f"DELETE FROM {s}.branches b USING (SELECT d.session_id, d.branch_id"
            f" FROM {s}.branches d WHERE d.deleted_at < %(cutoff)s AND NOT EXISTS ("
            f"SELECT 1 FROM {s}.conversations c WHERE c.session_id = d.session_id)"
            " LIMIT %(batch)s FOR UPDATE SKIP LOCKED) old"
            " WHERE b.session_id = old.session_id AND b.branch_id = old.branch_id"
        ),
    }
