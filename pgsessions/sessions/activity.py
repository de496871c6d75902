"""Conversations by last activity: an index-backed predicate on ``updated_at``.

Up to migration 0006 ``conversations_updated_idx`` covers ``updated_at``. A schema that has
the per-minute ``active_at`` column (a stored ``date_bin('1 minute', updated_at, ...)``,
indexed instead so that appends update the row HOT) gets the same predicate plus a
redundant, indexable one on ``active_at``: ``updated_at < t`` implies ``active_at < t``, and
``updated_at >= t`` implies ``active_at >= t - 1 minute``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .schema import quote_ident

if TYPE_CHECKING:
    from ..router import SessionRouter


async def conversation_columns(router: SessionRouter) -> set[str]:
    """The column names of the router's ``conversations`` table (empty when it is missing)."""
    table = f"{quote_ident(router.config.schema)}.conversations"
    rows = await router.execute_read(
        "schema_probe",
        None,
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attnum > 0 AND NOT attisdropped",
        (table,),
    )
    return {r[0] for r in rows}


async def has_active_at(router: SessionRouter) -> bool:
    """Whether the router's ``conversations`` table has the ``active_at`` column."""
    return "active_at" in await conversation_columns(router)


def updated_before(alias: str, param: str, active_at: bool) -> str:
    """``{alias}.updated_at < %({param})s``, index-backed on either schema version."""
    text = f"{alias}.updated_at < %({param})s"
    return f"{text} AND {alias}.active_at < %({param})s" if active_at else text


def updated_since(alias: str, param: str, active_at: bool) -> str:
    """``{alias}.updated_at >= %({param})s``, index-backed on either schema version."""
    text = f"{alias}.updated_at >= %({param})s"
    if active_at:
        text += f" AND {alias}.active_at >= %({param})s - interval '1 minute'"
    return text
