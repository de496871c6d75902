"""list_sessions: keyset pages of conversations, most recently updated first."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..router.protocol import owned_buckets
from ..router.settings import INT64_MAX, count
from .ids import check_tenant
from .items import decode, encode_metadata
from .schema import migrate_hint
from .sql.session import list_sessions_sql, statements
from .tenants import tenant_errors

if TYPE_CHECKING:
    from ..router.protocol import Router


@dataclass(frozen=True)
class SessionInfo:
    """One conversation as listed: its id, times, number of items and metadata."""

    session_id: str
    created_at: datetime
    updated_at: datetime
    item_count: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SessionPage:
    """A page of :func:`list_sessions`. Iterating it yields the :class:`SessionInfo` rows.

    ``next_cursor`` is None on the last page; otherwise pass it as ``after=`` for the next.
    """

    sessions: list[SessionInfo] = field(default_factory=list)
    next_cursor: str | None = None

    def __iter__(self) -> Iterator[SessionInfo]:
        return iter(self.sessions)

    def __len__(self) -> int:
        return len(self.sessions)


def _encode_cursor(info: SessionInfo) -> str:
    raw = json.dumps([info.updated_at.isoformat(), info.session_id], ensure_ascii=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _order(row: tuple[Any, ...]) -> tuple[datetime, str]:
    # the listing's order: updated_at, then session_id (both descending)
    return row[2], row[0]


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, session_id = json.loads(raw)
        when = datetime.fromisoformat(stamp)
        if not isinstance(session_id, str) or when.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"not a list_sessions cursor: {cursor!r}") from None
    return when, session_id


async def list_sessions(
    router: Router,
    *,
    limit: int = 50,
    after: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    consistency_token: str | None = None,
    tenant: str | None = None,
) -> SessionPage:
    """One page of conversations, most recently updated first (ties by session id).

    ``after`` is the ``next_cursor`` of the previous page. ``metadata`` keeps only the
    conversations whose metadata contains it (jsonb ``@>``). Keyset pagination: each page
    costs the same however deep; a conversation updated while you page moves to the front,
    so it may be skipped or seen twice. The page may be read on a replica, as fresh as the
    router's last check; pass a session's ``consistency_token`` to see at least its writes.
    ``tenant`` lists that tenant's conversations (tenant isolation must be on, as for
    ``PostgresSession(tenant=...)``); without it, the conversations stored without a tenant.
    Over several clusters, each is asked for its next page and the pages are merged: the
    cursor is one for all of them.
    """
    count(1, INT64_MAX - 1).check("limit", limit)  # limit + 1 rows are asked for
    if tenant is not None:
        check_tenant(tenant)
    params: list[Any] = [tenant or ""]
    if after is not None:
        when, last_id = _decode_cursor(after)
        params += [when, when, last_id]
    if metadata is not None:
        params.append(encode_metadata(metadata))
    query = list_sessions_sql(
        router.config.schema, after=after is not None, metadata=metadata is not None
    )
    setup = None if tenant is None else (statements(router.config.schema).set_tenant, (tenant,))
    owned_query = list_sessions_sql(
        router.config.schema, after=after is not None, metadata=metadata is not None, owned=True
    )

    async def page_of(cluster: Router) -> list[tuple[Any, ...]]:
        # over shards, a shard lists only the buckets it owns (not a move's leftovers)
        owned = owned_buckets(router, cluster)
        q, p = (query, [*params, limit + 1])
        if owned is not None:
            q, p = owned_query, [*params, owned, limit + 1]
        return await cluster.execute_read(
            "list_sessions", None, q, p, token=consistency_token, setup=setup
        )

    with migrate_hint(router.config.schema), tenant_errors(None, tenant):
        clusters = router.clusters()
        if len(clusters) == 1:
            rows = await page_of(clusters[0])
        else:
            # each cluster's next page after the cursor, merged in the one global order
            pages = await asyncio.gather(*(page_of(c) for c in clusters))
            rows = sorted((r for p in pages for r in p), key=_order, reverse=True)
    infos = [
        SessionInfo(
            session_id=sid,
            created_at=created,
            updated_at=updated,
            item_count=int(count),
            metadata=decode(meta),
        )
        for sid, created, updated, count, meta in rows[:limit]
    ]
    next_cursor = _encode_cursor(infos[-1]) if len(rows) > limit else None
    return SessionPage(infos, next_cursor)
