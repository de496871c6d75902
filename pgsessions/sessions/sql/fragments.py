"""Pieces of statements: the schema's name quoted, and the conditions on a conversation's
activity (updated_at, read off the index on its per-minute bucket active_at)."""

from __future__ import annotations

from psycopg import sql


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return sql.Identifier(name).as_string(None)


def updated_before(alias: str, param: str) -> str:
    """``{alias}.updated_at < %({param})s``, index-backed."""
    return f"{alias}.updated_at < %({param})s AND {alias}.active_at < %({param})s"


def updated_since(alias: str, param: str) -> str:
    """``{alias}.updated_at >= %({param})s``, index-backed."""
    return (
        f"{alias}.updated_at >= %({param})s"
        f" AND {alias}.active_at >= %({param})s - interval '1 minute'"
    )
