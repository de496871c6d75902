"""Conversations by last activity: an index-backed predicate on ``updated_at``.

Migration 0007 indexes the per-minute ``active_at`` column (a stored ``date_bin('1 minute',
updated_at, ...)``) instead of ``updated_at``, so that appends update the row HOT. A
predicate on ``updated_at`` gets a redundant, indexable one on ``active_at``:
``updated_at < t`` implies ``active_at < t``, and ``updated_at >= t`` implies
``active_at >= t - 1 minute``.
"""

from __future__ import annotations


def updated_before(alias: str, param: str) -> str:
    """``{alias}.updated_at < %({param})s``, index-backed."""
    return f"{alias}.updated_at < %({param})s AND {alias}.active_at < %({param})s"


def updated_since(alias: str, param: str) -> str:
    """``{alias}.updated_at >= %({param})s``, index-backed."""
    return (
        f"{alias}.updated_at >= %({param})s"
        f" AND {alias}.active_at >= %({param})s - interval '1 minute'"
    )
