"""Export: conversations read through the router (replicas when caught up) as export lines.

Each conversation is read by one statement, so it is one consistent snapshot even while
sessions keep writing; the lines are built by PostgreSQL (``json_build_object`` embeds a
``json`` value's stored text unchanged).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..router.protocol import owned_buckets
from ..sessions.items import encode_metadata
from ..sessions.schema import migrate_hint
from ..sessions.sql.export import conversation_sql, list_sql
from .records import header_line

if TYPE_CHECKING:
    from ..router.protocol import Router

#: conversations listed per statement when exporting many
PAGE = 500


async def session_ids(
    router: Router, *, metadata: Mapping[str, Any] | None = None, page: int = PAGE
) -> AsyncIterator[str]:
    """Every session id (or those whose metadata contains ``metadata``), cluster by cluster,
    in id order, in keyset pages of ``page``."""
    meta = encode_metadata(metadata)
    for cluster in router.clusters():
        # over shards, a shard lists only the buckets it owns (not a move's leftovers)
        owned = owned_buckets(router, cluster)
        query = list_sql(router.config.schema, meta is not None, owned is not None)
        after = ""
        while True:
            params: list[Any] = [after] + ([meta] if meta is not None else [])
            params += ([owned] if owned is not None else []) + [page]
            with migrate_hint(router.config.schema):
                rows = await cluster.execute_read("export_list", None, query, params)
            for (sid,) in rows:
                yield sid
            if len(rows) < page:
                break
            after = rows[-1][0]


async def conversation_lines(router: Router, session_id: str) -> list[str]:
    """The export lines of one conversation (empty when it does not exist)."""
    query = conversation_sql(router.config.schema)
    with migrate_hint(router.config.schema):
        rows = await router.execute_read("export", session_id, query, {"sid": session_id})
    # a json column may hold insignificant raw newlines (never inside a string: PostgreSQL
    # refuses unescaped control characters there); one record must stay one line
    return [_one_line(r[2]) for r in rows]


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


async def export_lines(
    router: Router,
    *,
    session_ids_: Sequence[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> AsyncIterator[str]:
    """The export: a header line, then each conversation's lines (no trailing newlines).

    ``session_ids_`` exports those sessions (unknown ones are skipped); otherwise every
    conversation, or those whose metadata contains ``metadata``.
    """
    yield header_line(router.config.schema, datetime.now(UTC).isoformat())
    if session_ids_ is not None:
        for sid in session_ids_:
            for line in await conversation_lines(router, sid):
                yield line
        return
    async for sid in session_ids(router, metadata=metadata):
        for line in await conversation_lines(router, sid):
            yield line
