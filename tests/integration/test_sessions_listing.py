"""Conversation metadata and list_sessions keyset pages."""

from __future__ import annotations

from typing import Any

import pytest

from pgsessions import PostgresSession, SessionRouter, list_sessions, migrate
from pgsessions.sessions.schema import quote_ident
from tests.helpers import user


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


async def primary_token(router: SessionRouter) -> str:
    """The primary's flush position now: reads at this token see every commit so far."""
    async with router.primary_connection() as conn:
        cur = await conn.execute("SELECT pg_current_wal_flush_lsn()::text")
        row = await cur.fetchone()
        assert row is not None
        return str(row[0])


async def all_ids(router: SessionRouter, **kwargs: Any) -> list[str]:
    ids: list[str] = []
    after = None
    while True:
        page = await list_sessions(router, after=after, **kwargs)
        ids += [info.session_id for info in page]
        if page.next_cursor is None:
            return ids
        after = page.next_cursor


async def test_metadata_is_set_on_create_only(db: SessionRouter) -> None:
    s = PostgresSession("meta", db, metadata={"tenant": "acme", "tier": 1})
    assert await s.get_metadata() is None  # nothing written yet
    await s.add_items([user("hi")])
    assert await s.get_metadata() == {"tenant": "acme", "tier": 1}
    later = PostgresSession("meta", db, metadata={"tenant": "other"})
    await later.add_items([user("again")])
    assert await later.get_metadata() == {"tenant": "acme", "tier": 1}


async def test_update_metadata_merges_or_replaces(db: SessionRouter) -> None:
    s = PostgresSession("meta-update", db)
    assert await s.update_metadata({"a": 1, "b": {"x": 1}}) == {"a": 1, "b": {"x": 1}}
    assert await s.get_items() == []  # created the conversation, no items
    assert await s.update_metadata({"b": {"y": 2}, "c": "é"}) == {
        "a": 1,
        "b": {"y": 2},
        "c": "é",
    }
    assert await s.update_metadata({"only": True}, replace=True) == {"only": True}
    assert await s.get_metadata() == {"only": True}


async def test_metadata_is_validated_before_io(db: SessionRouter) -> None:
    with pytest.raises(ValueError, match="U\\+0000"):
        PostgresSession("m", db, metadata={"k": "a\x00b"})
    with pytest.raises(ValueError, match="surrogate"):
        PostgresSession("m", db, metadata={"k": "\ud800"})
    with pytest.raises(TypeError):
        PostgresSession("m", db, metadata=["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await PostgresSession("m", db).update_metadata({"k": {1, 2}})
    assert await PostgresSession("m", db).get_metadata() is None


async def test_pages_by_most_recent_update(db: SessionRouter) -> None:
    for i in range(7):
        s = PostgresSession(f"conv-{i}", db)
        await s.add_items([user(str(j)) for j in range(i + 1)])
    token = s.consistency_token  # the last write: reads at it see all seven
    page1 = await list_sessions(db, limit=3, consistency_token=token)
    assert [s.session_id for s in page1] == ["conv-6", "conv-5", "conv-4"]
    assert [s.item_count for s in page1.sessions] == [7, 6, 5]
    assert page1.next_cursor is not None
    page2 = await list_sessions(db, limit=3, after=page1.next_cursor, consistency_token=token)
    assert [s.session_id for s in page2] == ["conv-3", "conv-2", "conv-1"]
    page3 = await list_sessions(db, limit=3, after=page2.next_cursor, consistency_token=token)
    assert [s.session_id for s in page3] == ["conv-0"]
    assert page3.next_cursor is None
    first = page1.sessions[0]
    assert first.created_at <= first.updated_at and first.metadata == {}
    # a write moves a conversation to the front; a pop updates the count
    popper = PostgresSession("conv-2", db)
    await popper.pop_item()
    top = (await list_sessions(db, limit=1, consistency_token=popper.consistency_token)).sessions[0]
    assert (top.session_id, top.item_count) == ("conv-2", 2)


@pytest.mark.owner_sql
async def test_ties_on_updated_at_page_without_loss_or_duplicates(db: SessionRouter) -> None:
    schema = quote_ident(db.config.schema)
    async with db.primary_connection() as conn:
        await conn.execute(
            f"INSERT INTO {schema}.conversations (session_id, updated_at)"
            " SELECT 'tie-' || g, '2024-01-01T00:00:00Z' FROM generate_series(1, 9) g"
        )
    ids = await all_ids(db, limit=2, consistency_token=await primary_token(db))
    assert ids == sorted((f"tie-{g}" for g in range(1, 10)), reverse=True)


async def test_filter_by_metadata_containment(db: SessionRouter) -> None:
    for i in range(6):
        meta = {"tenant": "a" if i % 2 else "b", "tags": ["x", f"t{i}"], "n": i}
        s = PostgresSession(f"m-{i}", db, metadata=meta)
        await s.add_items([user("hi")])
    t = s.consistency_token
    assert await all_ids(db, limit=2, metadata={"tenant": "a"}, consistency_token=t) == [
        "m-5",
        "m-3",
        "m-1",
    ]
    assert await all_ids(db, metadata={"tags": ["t4"]}, consistency_token=t) == ["m-4"]
    assert await all_ids(db, metadata={"tenant": "a", "n": 3}, consistency_token=t) == ["m-3"]
    assert await all_ids(db, metadata={"tenant": "nobody"}, consistency_token=t) == []
    assert len(await all_ids(db, metadata={}, consistency_token=t)) == 6


async def test_bad_arguments(db: SessionRouter) -> None:
    for bad in ("garbage", "", "W10", "WyJ4IiwgMV0"):
        with pytest.raises(ValueError, match="cursor"):
            await list_sessions(db, after=bad)
    for limit in (0, -1):
        with pytest.raises(ValueError, match="limit"):
            await list_sessions(db, limit=limit)
    page = await list_sessions(db)
    assert len(page) == 0 and page.next_cursor is None
