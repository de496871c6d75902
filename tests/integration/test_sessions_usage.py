"""Usage logs: same names and return shapes as the SDK's AdvancedSQLiteSession."""

from __future__ import annotations

from typing import Any

import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.extensions.memory.advanced_sqlite_session import AdvancedSQLiteSession
from agents.testing import ModelStep, ScriptedModel, assistant_message
from agents.usage import Usage
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.sessions.schema import quote_ident

set_tracing_disabled(True)


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


def step(text: str, inp: int, out: int, cached: int = 0, reasoning: int = 0) -> ModelStep:
    return ModelStep(
        output=[assistant_message(text)],
        usage=Usage(
            requests=1,
            input_tokens=inp,
            output_tokens=out,
            total_tokens=inp + out,
            input_tokens_details=InputTokensDetails(cached_tokens=cached, cache_write_tokens=0),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning),
        ),
    )


def script() -> ScriptedModel:
    return ScriptedModel([step("one", 10, 4, cached=3, reasoning=1), step("two", 30, 6)])


async def two_turns(session: Any) -> None:
    agent = Agent(name="assistant", model=script())
    for prompt in ("first", "second"):
        result = await Runner.run(agent, prompt, session=session)
        await session.store_run_usage(result)


async def test_usage_sums_and_per_turn_figures(db: SessionRouter) -> None:
    session = PostgresSession("usage", db)
    assert await session.get_session_usage() is None
    assert await session.get_turn_usage() == []
    await two_turns(session)
    assert await session.get_session_usage() == {
        "requests": 2,
        "input_tokens": 40,
        "output_tokens": 10,
        "total_tokens": 50,
        "total_turns": 2,
    }
    turn1 = await session.get_turn_usage(1)
    assert isinstance(turn1, dict)
    assert (turn1["requests"], turn1["input_tokens"], turn1["output_tokens"]) == (1, 10, 4)
    assert turn1["total_tokens"] == 14
    assert turn1["input_tokens_details"]["cached_tokens"] == 3
    assert turn1["output_tokens_details"]["reasoning_tokens"] == 1
    turns = await session.get_turn_usage()
    assert isinstance(turns, list)
    assert [(t["user_turn_number"], t["input_tokens"]) for t in turns] == [(1, 10), (2, 30)]
    assert await session.get_turn_usage(3) == {}


async def test_same_shapes_as_advanced_sqlite_session(db: SessionRouter) -> None:
    ours = PostgresSession("usage-shape", db)
    theirs = AdvancedSQLiteSession(session_id="usage-shape", create_tables=True)
    try:
        await two_turns(ours)
        await two_turns(theirs)
        assert await ours.get_session_usage() == await theirs.get_session_usage()
        assert await ours.get_turn_usage() == await theirs.get_turn_usage()
        assert await ours.get_turn_usage(2) == await theirs.get_turn_usage(2)
        assert await ours.get_turn_usage(7) == await theirs.get_turn_usage(7)
        # branch_id as theirs: None is every branch (session) or the current one (turns)
        assert await ours.get_session_usage(branch_id=None) == await theirs.get_session_usage()
        assert await ours.get_turn_usage(1, branch_id=None) == await theirs.get_turn_usage(1)
        assert await ours.get_turn_usage(branch_id="alt") == await theirs.get_turn_usage(
            branch_id="alt"
        )
        assert await ours.get_session_usage("alt") == await theirs.get_session_usage("alt")
    finally:
        theirs.close()


async def test_storing_twice_for_a_turn_replaces(db: SessionRouter) -> None:
    session = PostgresSession("usage-replace", db)
    agent = Agent(name="assistant", model=ScriptedModel([step("a", 5, 5), step("b", 7, 1)]))
    first = await Runner.run(agent, "hi", session=session)
    await session.store_run_usage(first)
    await session.store_run_usage(first)
    usage = await session.get_session_usage()
    assert usage is not None and (usage["input_tokens"], usage["total_turns"]) == (5, 1)
    # a second run in the same user turn (no new user item) replaces the turn's row
    await session.add_items([{"role": "assistant", "content": "follow-up"}])
    agent2 = Agent(name="assistant", model=ScriptedModel([step("c", 9, 2)]))
    again = await Runner.run(agent2, [{"role": "assistant", "content": "x"}])
    await session.store_run_usage(again)
    assert await session.get_session_usage() == {
        "requests": 1,
        "input_tokens": 9,
        "output_tokens": 2,
        "total_tokens": 11,
        "total_turns": 1,
    }


async def test_usage_needs_a_user_turn_and_is_cleared_with_the_session(db: SessionRouter) -> None:
    agent = Agent(name="assistant", model=ScriptedModel([step("x", 1, 1)]))
    result = await Runner.run(agent, "no session here")
    empty = PostgresSession("usage-empty", db)
    await empty.store_run_usage(result)  # no user turn stored: nothing recorded
    assert await empty.get_session_usage() is None
    session = PostgresSession("usage-clear", db)
    await session.add_items([{"role": "user", "content": "hi"}])
    await session.store_run_usage(result)
    assert (await session.get_session_usage() or {}).get("total_turns") == 1
    async with db.primary_connection() as conn:
        cur = await conn.execute(
            f"SELECT model, requests FROM {quote_ident(db.config.schema)}.usage_logs"
            " WHERE session_id = %s",
            ("usage-clear",),
        )
        assert await cur.fetchall() == [(None, 1)]  # a scripted model has no name
    await session.clear_session()
    assert await session.get_session_usage() is None
    assert await session.get_turn_usage() == []


async def test_model_name_is_recorded(db: SessionRouter) -> None:
    session = PostgresSession("usage-model", db)
    await session.add_items([{"role": "user", "content": "hi"}])
    agent = Agent(name="assistant", model=ScriptedModel([step("x", 1, 1)]))
    result = await Runner.run(agent, "hi")
    agent_named = Agent(name="assistant", model="gpt-test-model")
    result._last_agent = agent_named  # the name a real run would carry
    await session.store_run_usage(result)
    async with db.primary_connection() as conn:
        cur = await conn.execute(
            f"SELECT model FROM {quote_ident(db.config.schema)}.usage_logs WHERE session_id = %s",
            ("usage-model",),
        )
        assert await cur.fetchall() == [("gpt-test-model",)]
