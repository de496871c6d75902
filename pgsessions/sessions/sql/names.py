"""Quoting the schema's name into statements."""

from __future__ import annotations

from psycopg import sql


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return sql.Identifier(name).as_string(None)
