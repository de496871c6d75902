"""Parity with the Agents SDK's own session backends, written after the SDK's session tests.

Each behaviour is checked on PostgresSession over the shared replicated cluster; where the
SDK has a reference backend (SQLiteSession, AdvancedSQLiteSession) the same steps run on it
and the answers must match.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from agents import Agent, Runner, SQLiteSession, set_tracing_disabled
from agents.extensions.memory.advanced_sqlite_session import AdvancedSQLiteSession
from agents.memory.session import _session_accepts_wrapper
from agents.run_context import RunContextWrapper
from agents.testing import ModelStep, ScriptedModel, assistant_message
from agents.usage import Usage

from pgsessions import PostgresSession, SessionRouter, TenantError, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.sessions.schema import quote_ident
from tests.helpers import apoll, assistant, user

set_tracing_disabled(True)


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


def reply(text: str, tokens: int = 10) -> ModelStep:
    usage = Usage(requests=1, input_tokens=tokens, output_tokens=2, total_tokens=tokens + 2)
    return ModelStep(output=[assistant_message(text)], usage=usage)


# B1: usage follows pop_item --------------------------------------------------------------------
async def pop_scenario(session: Any) -> tuple[Any, ...]:
    """One run, its usage stored, both items popped, a new user item: what usage remains."""
    agent = Agent(name="a", model=ScriptedModel([reply("hello", 10)]))
    result = await Runner.run(agent, "hi", session=session)
    await session.store_run_usage(result)
    stored = await session.get_turn_usage(1)
    await session.pop_item()  # the assistant's reply: turn 1 still has its user item
    after_one_pop = await session.get_turn_usage(1)
    await session.pop_item()  # the user item that opened turn 1: the turn is gone
    await session.add_items([user("again")])  # a new turn 1
    return (
        stored["input_tokens"],
        after_one_pop["input_tokens"],
        await session.get_turn_usage(1),
        await session.get_turn_usage(),
        await session.get_session_usage(),
    )


async def test_usage_follows_pop_item_like_advanced_sqlite(db: SessionRouter) -> None:
    reference = AdvancedSQLiteSession(session_id="ref", create_tables=True)
    try:
        expected = await pop_scenario(reference)
    finally:
        reference.close()
    got = await pop_scenario(PostgresSession("pop-usage", db))
    assert got == expected == (10, 10, {}, [], None)


async def test_a_popped_turns_usage_does_not_come_back_with_its_number(db: SessionRouter) -> None:
    s = PostgresSession("pop-reuse", db)
    agent = Agent(name="a", model=ScriptedModel([reply("one", 10), reply("two", 30)]))
    await s.store_run_usage(await Runner.run(agent, "first", session=s))
    for _ in range(2):
        await s.pop_item()
    await s.store_run_usage(await Runner.run(agent, "again", session=s))  # turn 1 again
    turn = await s.get_turn_usage(1)
    assert isinstance(turn, dict)
    assert (turn["requests"], turn["input_tokens"], turn["total_tokens"]) == (1, 30, 32)
    usage = await s.get_session_usage()
    assert usage is not None and (usage["total_turns"], usage["input_tokens"]) == (1, 30)


# B2: cancellation ----------------------------------------------------------------------------
@asynccontextmanager
async def conversation_locked(
    cluster: LocalCluster, schema: str, session_id: str
) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """Hold the conversation row's lock in another transaction (writes queue behind it)."""
    async with await psycopg.AsyncConnection.connect(cluster.primary.dsn) as conn:
        await conn.execute(
            f"SELECT 1 FROM {quote_ident(schema)}.conversations WHERE session_id = %s FOR UPDATE",
            (session_id,),
        )
        yield conn


async def blocked_backend(cluster: LocalCluster, function: str) -> int:
    """The pid of the backend waiting on a lock while running ``function``."""
    pids: list[int] = []

    async def waiting() -> bool:
        async with await psycopg.AsyncConnection.connect(cluster.primary.dsn) as c:
            cur = await c.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                (f"%{function}%",),
            )
            pids[:] = [r[0] for r in await cur.fetchall()]
        return bool(pids)

    assert await apoll(waiting, within=10), f"no backend waiting in {function}"
    return pids[0]


async def test_cancelled_write_completes_then_the_callers_cancellation_is_raised(
    db: SessionRouter, cluster: LocalCluster, schema: str
) -> None:
    s = PostgresSession("cancel-args", db)
    await s.add_items([user("0")])
    async with conversation_locked(cluster, schema, s.session_id) as lock:
        task = asyncio.create_task(s.add_items([user("1"), assistant("2")]))
        await blocked_backend(cluster, "add_items")
        task.cancel("caller-cancel")
        await asyncio.sleep(0)
        task.cancel("second-cancel")  # a repeated cancellation does not replace the first
        assert not task.done()  # still waiting for the write's outcome
        await lock.commit()
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
    assert caught.value.args == ("caller-cancel",)
    assert await s.get_items() == [user("0"), user("1"), assistant("2")]  # it completed


async def test_a_write_failing_after_cancellation_is_retrieved_not_leaked(
    db: SessionRouter, cluster: LocalCluster, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = PostgresSession("cancel-fail", db)
    await s.add_items([user("0")])
    caplog.set_level(logging.ERROR, logger="asyncio")
    async with conversation_locked(cluster, schema, s.session_id) as lock:
        task = asyncio.create_task(s.update_metadata({"k": "v"}))
        pid = await blocked_backend(cluster, "update_metadata")
        task.cancel("caller-cancel")
        await lock.execute("SELECT pg_cancel_backend(%s)", (pid,))  # fails: not retried
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
        await lock.rollback()
    assert caught.value.args == ("caller-cancel",)
    del task
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
    assert await s.get_metadata() == {}  # the failed write changed nothing


async def test_cancellation_matches_the_sdks_sqlite_session() -> None:
    """The reference: SQLiteSession keeps the caller's cancellation message too."""
    ref = SQLiteSession("ref")
    try:
        task = asyncio.create_task(ref.add_items([user("x")]))  # type: ignore[list-item]
        await asyncio.sleep(0)
        task.cancel("caller-cancel")
        with pytest.raises(asyncio.CancelledError) as caught:
            await task
        assert caught.value.args == ("caller-cancel",)
    finally:
        ref.close()


# B4: the wrapper keyword ---------------------------------------------------------------------
class RecordingSession(PostgresSession):
    """Records the wrappers its history calls receive (the tenant seam)."""

    seen: list[Any]

    def resolve_tenant(self, wrapper: RunContextWrapper[Any] | None) -> str | None:
        self.seen.append(wrapper)
        return None


async def test_the_runner_passes_its_context_wrapper(db: SessionRouter) -> None:
    s = RecordingSession("wrapped", db)
    s.seen = []
    assert _session_accepts_wrapper(s)
    agent = Agent(name="a", model=ScriptedModel([reply("hello")]))
    await Runner.run(agent, "hi", session=s, context={"tenant": "acme"})
    assert s.seen and all(isinstance(w, RunContextWrapper) for w in s.seen)
    assert {w.context["tenant"] for w in s.seen} == {"acme"}
    # direct calls without a wrapper keep working
    wrapper = s.seen[0]
    s.seen.clear()
    await s.add_items([user("x")], wrapper=wrapper)
    assert len(await s.get_items(wrapper=wrapper)) == 3
    assert await s.pop_item(wrapper=wrapper) == user("x")
    await s.clear_session(wrapper=None)
    assert s.seen == [wrapper, wrapper, wrapper, None]


class TenantSession(PostgresSession):
    def resolve_tenant(self, wrapper: RunContextWrapper[Any] | None) -> str | None:
        return "acme"


async def test_a_resolved_tenant_fails_closed_without_isolation(db: SessionRouter) -> None:
    """Isolation is off in this schema: a call for a tenant is refused, not run unisolated
    (tests/integration/test_sessions_tenants.py covers isolation on)."""
    s = TenantSession("tenant", db)
    for call in (s.get_items(), s.add_items([user("x")]), s.pop_item(), s.clear_session()):
        with pytest.raises(TenantError, match="tenant isolation is off"):
            await call
    assert await PostgresSession("tenant", db).get_items() == []
    assert await PostgresSession("tenant", db).get_metadata() is None


# B5: negative limit ----------------------------------------------------------------------------
async def test_negative_limit_is_a_value_error_where_sqlite_returns_everything(
    db: SessionRouter,
) -> None:
    ref = SQLiteSession("ref")
    try:
        await ref.add_items([user("a"), user("b")])  # type: ignore[list-item]
        assert len(await ref.get_items(limit=-1)) == 2  # the SDK's SQLite: everything
    finally:
        ref.close()
    s = PostgresSession("negative", db)
    await s.add_items([user("a"), user("b")])
    with pytest.raises(ValueError, match="limit must be >= 0"):
        await s.get_items(limit=-1)
