"""messages has no foreign key to conversations (migration 0014): deleting a conversation
deletes its messages (the conversation_gone trigger), a concurrent add never leaves a message
without its conversation, and the item counts stay equal to the rows."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.sessions.schema import quote_ident
from tests.helpers import assistant, run_result, user
from tests.integration.test_sessions_buckets import rows

ORPHANS = (
    "SELECT count(*) FROM {s}.messages m WHERE NOT EXISTS (SELECT 1 FROM {s}.conversations c"
    " WHERE c.session_id = m.session_id AND c.bucket = m.bucket)"
)
# conversations whose counter is not their rows' count on the main branch (no branches here)
MISCOUNTED = (
    "SELECT c.session_id, c.item_count, (SELECT count(*) FROM {s}.messages m"
    " WHERE m.session_id = c.session_id) FROM {s}.conversations c"
    " WHERE c.item_count <> (SELECT count(*) FROM {s}.messages m"
    " WHERE m.session_id = c.session_id)"
)


@pytest.mark.owner_sql
async def test_deleting_a_conversation_row_deletes_its_messages(router: SessionRouter) -> None:
    await migrate(router)
    keys = await rows(
        router,
        "SELECT conname::text FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'f'",
        f"{quote_ident(router.config.schema)}.messages",
    )
    assert keys == []
    gone, kept = PostgresSession("del-gone", router), PostgresSession("del-kept", router)
    for s in (gone, kept):
        await s.add_items([user("q"), assistant("a")])
        await s.store_run_usage(run_result(5))
    await gone.create_branch_from_turn(1, "side")
    await gone.add_items([user("on the side")])
    # a plain DELETE, as retention and an import that replaces a conversation run it
    await rows(router, "DELETE FROM {s}.conversations WHERE session_id = %s", "del-gone")
    counts = await rows(
        router,
        "SELECT (SELECT count(*) FROM {s}.messages WHERE session_id = %s),"
        " (SELECT count(*) FROM {s}.usage_logs WHERE session_id = %s),"
        " (SELECT count(*) FROM {s}.branches WHERE session_id = %s AND deleted_at IS NULL)",
        "del-gone",
        "del-gone",
        "del-gone",
    )
    assert counts == [(0, 0, 0)]
    assert await gone.get_items() == []
    assert len(await kept.get_items()) == 2
    assert await rows(router, ORPHANS) == [(0,)]


@pytest.mark.owner_sql
async def test_adds_racing_clears_leave_no_message_without_its_conversation(
    router: SessionRouter,
) -> None:
    await migrate(router)
    sessions = [PostgresSession(f"race-{i}", router) for i in range(8)]

    async def writer(s: PostgresSession, n: int) -> None:
        for k in range(n):
            await s.add_items([user(f"u{k}"), assistant(f"a{k}")])

    async def clearer(s: PostgresSession, n: int) -> None:
        for _ in range(n):
            await s.clear_session()
            await asyncio.sleep(0)

    # two writers and a clearer per session, all at once: adds coalesce into batches
    # while clears delete the conversations those batches update
    await asyncio.gather(
        *(writer(s, 30) for s in sessions),
        *(writer(s, 30) for s in sessions),
        *(clearer(s, 20) for s in sessions),
    )
    assert await rows(router, ORPHANS) == [(0,)]
    assert await rows(router, MISCOUNTED) == []
    for s in sessions:
        roles = [cast(dict[str, Any], item)["role"] for item in await s.get_items()]
        # what survived the last clear is whole adds, each in its order
        assert roles == ["user", "assistant"] * (len(roles) // 2)
