"""Every retried write has the outcome of one delivery, even when another server writes first.

Server A reaches the primary through a TCP proxy. The proxy swallows the reply to A's write
(the write committed; A cannot know) and at that moment stops forwarding, so A's retry is
held. Server B, a second router straight to the primary, then writes to the same
conversation; the proxy resumes and A's retry runs after B's write. Without an operation id
the retry would apply the write a second time on top of B's (clear B's item, pop it, store the
usage for B's new turn, overwrite B's metadata, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.devcluster.proxy import TcpProxy, command_complete
from tests.helpers import assistant, run_result, user

_T = TypeVar("_T")
LOST_COMMIT = command_complete("COMMIT")
LOST_CALL = command_complete("CALL")  # add_items is a procedure that commits itself


class HoldAfterDrop(TcpProxy):
    """A proxy that stops forwarding (blackhole) the moment it swallows the armed reply."""

    def __init__(self, host: str, port: int) -> None:
        self.dropped = asyncio.Event()
        self._drop_count = 0
        super().__init__(host, port)

    @property
    def drops(self) -> int:
        return self._drop_count

    @drops.setter
    def drops(self, value: int) -> None:
        self._drop_count = value
        if value:
            self.blackhole()
            self.dropped.set()


@dataclass
class Servers:
    proxy: HoldAfterDrop
    a: SessionRouter  # through the proxy
    b: SessionRouter  # straight to the primary


@asynccontextmanager
async def two_servers(cluster: LocalCluster, schema: str) -> AsyncIterator[Servers]:
    async with HoldAfterDrop("127.0.0.1", cluster.primary.port) as proxy:
        hosts_a = [proxy.dsn(), *(n.dsn for n in cluster.replicas)]
        config_a = RouterConfig(hosts=hosts_a, schema=schema, check_interval=0.1)
        config_b = RouterConfig(hosts=cluster.dsns(), schema=schema, check_interval=0.1)
        async with SessionRouter(config_b) as b, SessionRouter(config_a) as a:
            await migrate(b)
            await migrate(a)
            yield Servers(proxy, a, b)


async def lost_reply(
    servers: Servers, marker: bytes, write: Awaitable[_T], meanwhile: Awaitable[Any]
) -> _T:
    """Run ``write`` on A with its reply lost, ``meanwhile`` (on B) before A's retry."""
    before = servers.a.stats()["retries"].get("write", {}).get("connection", 0)
    servers.proxy.drop_after_reply(marker)
    task = asyncio.ensure_future(write)
    dropped = asyncio.ensure_future(servers.proxy.dropped.wait())
    await asyncio.wait({task, dropped}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    assert servers.proxy.dropped.is_set(), "the reply was never dropped"
    await meanwhile  # committed after A's original write and before its retry
    assert not task.done()
    servers.proxy.resume()
    async with asyncio.timeout(40):
        result = await task
    after = servers.a.stats()["retries"]["write"].get("connection", 0)
    assert after > before, "A did not retry"
    return result


def sessions(servers: Servers, sid: str) -> tuple[PostgresSession, PostgresSession]:
    return PostgresSession(sid, servers.a), PostgresSession(sid, servers.b)


async def history(servers: Servers, *sessions: PostgresSession) -> list[Any]:
    """The conversation as a fresh session on B sees it after all of ``sessions``' writes."""
    tokens = [s.consistency_token for s in sessions if s.consistency_token]
    newest = max(tokens, key=lambda t: tuple(int(x, 16) for x in t.split("/")))
    return await PostgresSession(
        sessions[0].session_id, servers.b, consistency_token=newest
    ).get_items()


async def test_add_items_retry_is_not_applied_again_after_another_servers_add(
    cluster: LocalCluster, schema: str
) -> None:
    async with two_servers(cluster, schema) as servers:
        sa, sb = sessions(servers, "add")
        await sa.add_items([user("0")])
        await lost_reply(
            servers, LOST_CALL, sa.add_items([user("a1"), user("a2")]), sb.add_items([user("b")])
        )
        assert await history(servers, sa, sb) == [user("0"), user("a1"), user("a2"), user("b")]


async def test_pop_retry_returns_its_item_and_leaves_another_servers_add(
    cluster: LocalCluster, schema: str
) -> None:
    async with two_servers(cluster, schema) as servers:
        sa, sb = sessions(servers, "pop")
        await sa.add_items([user("0"), assistant("1")])
        popped = await lost_reply(servers, LOST_COMMIT, sa.pop_item(), sb.add_items([user("b")]))
        assert popped == assistant("1")
        assert await history(servers, sa, sb) == [user("0"), user("b")]


async def test_pop_retry_on_an_empty_session_does_not_pop_another_servers_add(
    cluster: LocalCluster, schema: str
) -> None:
    async with two_servers(cluster, schema) as servers:
        sa, sb = sessions(servers, "pop-empty")
        popped = await lost_reply(servers, LOST_COMMIT, sa.pop_item(), sb.add_items([user("b")]))
        assert popped is None
        assert await history(servers, sa, sb) == [user("b")]


async def test_clear_retry_keeps_the_item_another_server_added(
    cluster: LocalCluster, schema: str
) -> None:
    async with two_servers(cluster, schema) as servers:
        sa, sb = sessions(servers, "clear")
        await sa.add_items([user("0"), assistant("1")])
        await lost_reply(servers, LOST_COMMIT, sa.clear_session(), sb.add_items([user("b")]))
        assert await history(servers, sa, sb) == [user("b")]


async def test_store_run_usage_retry_does_not_attach_to_the_new_turn(
    cluster: LocalCluster, schema: str
) -> None:
    async with two_servers(cluster, schema) as servers:
        sa, sb = sessions(servers, "usage")
        await sa.add_items([user("q1"), assistant("r1")])
        await lost_reply(
            servers, LOST_COMMIT, sa.store_run_usage(run_result(10)), sb.add_items([user("q2")])
        )
        reader = PostgresSession("usage", servers.b, consistency_token=sa.consistency_token)
        turns = await reader.get_turn_usage()
        assert isinstance(turns, list)
        assert [(t["user_turn_number"], t["input_tokens"]) for t in turns] == [(1, 10)]
        assert await reader.get_turn_usage(2) == {}
        usage = await reader.get_session_usage()
        assert usage is not None and usage["total_turns"] == 1


async def test_update_metadata_retry_does_not_overwrite_another_servers_update(
    cluster: LocalCluster, schema: str
) -> None:
    async with two_servers(cluster, schema) as servers:
        sa, sb = sessions(servers, "meta")
        await sa.update_metadata({"owner": "nobody", "tenant": "acme"})
        mine = await lost_reply(
            servers,
            LOST_COMMIT,
            sa.update_metadata({"owner": "a"}),
            sb.update_metadata({"owner": "b"}),
        )
        assert mine == {"owner": "a", "tenant": "acme"}  # the original's outcome
        reader = PostgresSession("meta", servers.b, consistency_token=sa.consistency_token)
        assert await reader.get_metadata() == {"owner": "b", "tenant": "acme"}


async def test_compaction_retry_reports_its_replacement_and_keeps_a_later_add(
    cluster: LocalCluster, schema: str
) -> None:
    async with two_servers(cluster, schema) as servers:
        sa, sb = sessions(servers, "compact")
        await sa.add_items([user("q1"), assistant("r1"), user("q2"), assistant("r2")])
        snapshot = await sa._get_compaction_snapshot(10)
        assert snapshot is not None and snapshot.complete
        summary = {"type": "compaction", "summary": "q1 r1 q2 r2"}
        replaced = await lost_reply(
            servers,
            LOST_COMMIT,
            snapshot.replace_suffix(0, [summary]),  # type: ignore[list-item]
            sb.add_items([user("b")]),
        )
        assert replaced is True  # a retry that found its own outcome, not a changed suffix
        assert await history(servers, sa, sb) == [summary, user("b")]
