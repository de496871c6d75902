"""Many agent servers, one conversation: each server has its own router; replicas paused on
purpose. A read through any router sees every write committed before that router's last
check, and every write of its own session; outside tokens are validated and capped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from pgsessions import PostgresSession, migrate
from pgsessions.devcluster import LocalCluster, Node
from pgsessions.router import SessionRouter
from pgsessions.router.lsn import parse_lsn
from tests.integration.test_router import fast_config, wait_until

USER = {"role": "user", "content": "what is the weather?"}
REPLY = {"role": "assistant", "content": "sunny"}


@pytest.fixture
async def routers(cluster: LocalCluster, schema: str) -> AsyncIterator[list[SessionRouter]]:
    """Three servers' routers (a, b, c) on the shared cluster, schema migrated."""
    rs = [SessionRouter(fast_config(cluster.dsns(), schema, name=n)) for n in "abc"]
    for r in rs:
        await r.open()
    try:
        await migrate(rs[0])
        await asyncio.to_thread(cluster.wait_caught_up)
        yield rs
    finally:
        for r in rs:
            await r.close()


@pytest.fixture
def pause(cluster: LocalCluster) -> Iterator[Any]:
    """pause() stops replay on every replica; resumed at test end whatever happens."""
    paused: list[Node] = []

    def pause() -> None:
        for r in cluster.replicas:
            cluster.pause_replay(r)
            paused.append(r)

    try:
        yield pause
    finally:
        for r in paused:
            cluster.resume_replay(r)


async def checked_past(router: SessionRouter, token: str | None) -> None:
    """Wait until ``router``'s monitor has seen the primary at or past ``token``."""
    assert token is not None
    lsn = parse_lsn(token)
    await wait_until(lambda: (router.topology().primary_lsn or 0) >= lsn, 10, "a check")


async def replicas_replayed(router: SessionRouter, token: str | None) -> None:
    assert token is not None
    lsn = parse_lsn(token)
    await wait_until(
        lambda: all((h.replay_lsn or 0) >= lsn for h in router.topology().replicas()),
        10,
        "the replicas to replay the token",
    )


async def test_server_b_sees_server_a_reply_after_one_check(
    cluster: LocalCluster, routers: list[SessionRouter], pause: Any
) -> None:
    """B writes the user's turn, A the reply, replicas paused in between: one check later
    B sees both, with or without limit, through its old or a new session object, and so
    does C, which never saw the session."""
    a, b, c = routers
    sid = f"conv-{uuid.uuid4().hex[:8]}"
    on_b = PostgresSession(sid, b)
    await on_b.add_items([USER])  # B now holds a token for the session
    await replicas_replayed(b, on_b.consistency_token)
    await asyncio.to_thread(pause)  # the replicas have the user turn, never the reply
    on_a = PostgresSession(sid, a)
    await on_a.add_items([REPLY])
    for r in (b, c):
        await checked_past(r, on_a.consistency_token)

    for session in (on_b, PostgresSession(sid, b), PostgresSession(sid, c)):
        assert await session.get_items() == [USER, REPLY], session
        assert await session.get_items(limit=1) == [REPLY], session
    for node in cluster.replicas:  # the replicas really lack the reply
        rows = node.execute(
            f'SELECT count(*) FROM "{b.config.schema}".messages WHERE session_id = %s', (sid,)
        )
        assert rows[0][0] == 1
    # and every one of those reads was served where the reply is: the primary
    assert not b.stats()["reads"].get("replica"), b.stats()["reads"]


async def test_a_token_never_lowers_the_bar_for_other_sessions_writes(
    routers: list[SessionRouter], pause: Any
) -> None:
    """A session whose token is old reads a conversation row written by another server
    (metadata) at least as fresh as a token-less read."""
    a, b, _ = routers
    sid = f"meta-{uuid.uuid4().hex[:8]}"
    on_b = PostgresSession(sid, b)
    await on_b.add_items([USER])
    await replicas_replayed(b, on_b.consistency_token)
    await asyncio.to_thread(pause)
    on_a = PostgresSession(sid, a)
    await on_a.update_metadata({"owner": "server-a"})
    await checked_past(b, on_a.consistency_token)
    assert await on_b.get_metadata() == {"owner": "server-a"}


async def test_outside_tokens_are_validated(routers: list[SessionRouter]) -> None:
    a = routers[0]
    for bad in ("", "nonsense", "0x10/0", "-1/0", "1/2/3", "100000000/0", "1 /0"):
        with pytest.raises(ValueError, match="not a PostgreSQL LSN") as info:
            PostgresSession("s", a, consistency_token=bad)
        assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="not a PostgreSQL LSN"):
        await a.execute_read("probe", None, "SELECT 1", token="zz")
    PostgresSession("s", a, consistency_token="FFFFFFFF/FFFFFFFF")  # the largest LSN


async def test_a_token_beyond_the_primary_is_capped_not_pinned(
    routers: list[SessionRouter],
) -> None:
    """A forged token (or one from a lost timeline) costs one primary read, is counted, and
    then no longer pins the session to the primary."""
    a, b, _ = routers
    sid = f"forged-{uuid.uuid4().hex[:8]}"
    writer = PostgresSession(sid, a)
    await writer.add_items([USER, REPLY])
    await replicas_replayed(b, writer.consistency_token)
    await checked_past(b, writer.consistency_token)

    forged = PostgresSession(sid, b, consistency_token="FFFF/FFFFFFFF")
    assert await forged.get_items() == [USER, REPLY]
    assert b.stats()["tokens_capped"] == 1
    on_primary = b.stats()["reads"].get("primary", {})
    n_primary = sum(on_primary.values())
    assert n_primary >= 1
    # the cap is the primary's position at that read: once the replicas are seen past it,
    # a read needs no catch-up wait (which a loaded machine can let time out to the primary)
    async with b.primary_connection() as conn:
        row = await (await conn.execute("SELECT pg_current_wal_flush_lsn()::text")).fetchone()
    assert row is not None
    await replicas_replayed(b, row[0])
    await checked_past(b, row[0])
    for _ in range(5):
        assert await forged.get_items() == [USER, REPLY]
        assert await PostgresSession(sid, b, consistency_token="FFFF/FFFFFFFF").get_items()
    assert sum(b.stats()["reads"].get("primary", {}).values()) == n_primary
    assert b.stats()["tokens_capped"] == 1
