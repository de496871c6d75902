"""PostgresSession driven by the Agents SDK Runner with a scripted model (no API key)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.memory import SessionSettings
from agents.testing import ScriptedModel, assistant_message, function_call

from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate
from pgsessions.sessions.items import encode_item
from pgsessions.sessions.limits import MAX_DEPTH, MAX_ITEM_BYTES, value_depth
from tests.helpers import texts

set_tracing_disabled(True)


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


def agent_with(*replies: str) -> tuple[Agent[Any], ScriptedModel]:
    model = ScriptedModel([[assistant_message(r)] for r in replies])
    return Agent(name="assistant", instructions="be brief", model=model), model


async def test_run_carries_history_into_the_second_turn(db: SessionRouter) -> None:
    agent, model = agent_with("Hello Ada", "Your name is Ada")
    session = PostgresSession("runner-run", db)
    first = await Runner.run(agent, "My name is Ada", session=session)
    assert first.final_output == "Hello Ada"
    second = await Runner.run(agent, "What is my name?", session=session)
    assert second.final_output == "Your name is Ada"
    assert model.last_call is not None
    assert texts(model.last_call.input) == ["My name is Ada", "Hello Ada", "What is my name?"]
    assert texts(await session.get_items()) == [
        "My name is Ada",
        "Hello Ada",
        "What is my name?",
        "Your name is Ada",
    ]


async def test_run_streamed_carries_history(db: SessionRouter) -> None:
    agent, model = agent_with("streamed one", "streamed two")
    session = PostgresSession("runner-streamed", db)
    for prompt in ("first question", "second question"):
        result = Runner.run_streamed(agent, prompt, session=session)
        async for _ in result.stream_events():
            pass
    assert model.last_call is not None and model.last_call.streamed
    assert texts(model.last_call.input) == ["first question", "streamed one", "second question"]
    assert texts(await session.get_items()) == [
        "first question",
        "streamed one",
        "second question",
        "streamed two",
    ]


async def test_run_sync_carries_history(router_config: RouterConfig, db: SessionRouter) -> None:
    """run_sync drives its own loop: the router it uses is opened on that loop, in a thread."""
    agent, model = agent_with("sync one", "sync two")

    def in_thread() -> tuple[list[Any], str | None]:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        router = SessionRouter(router_config)
        try:
            loop.run_until_complete(router.open())
            session = PostgresSession("runner-sync", router)
            Runner.run_sync(agent, "sync hello", session=session)
            Runner.run_sync(agent, "sync again", session=session)
            return loop.run_until_complete(session.get_items()), session.consistency_token
        finally:
            loop.run_until_complete(router.close())
            asyncio.set_event_loop(None)
            loop.close()

    items, token = await asyncio.to_thread(in_thread)
    assert model.last_call is not None
    assert texts(model.last_call.input) == ["sync hello", "sync one", "sync again"]
    assert texts(items) == ["sync hello", "sync one", "sync again", "sync two"]
    # another server (this loop's router), handed the token, reads the same history
    elsewhere = PostgresSession("runner-sync", db, consistency_token=token)
    assert texts(await elsewhere.get_items()) == texts(items)


async def test_a_tool_turn_saves_the_call_and_its_output(db: SessionRouter) -> None:
    @function_tool
    def weather(city: str) -> str:
        """Weather in a city."""
        return f"sunny in {city}"

    model = ScriptedModel(
        [
            [function_call("weather", {"city": "Oslo"}, call_id="call-1")],
            [assistant_message("It is sunny in Oslo")],
        ]
    )
    agent = Agent(name="assistant", model=model, tools=[weather])
    session = PostgresSession("runner-tool", db)
    result = await Runner.run(agent, "Weather in Oslo?", session=session)
    assert result.final_output == "It is sunny in Oslo"
    items = await session.get_items()
    kinds = [i.get("type", "message") for i in items]
    assert kinds == ["message", "function_call", "function_call_output", "message"]
    call, output = items[1], items[2]
    assert call["name"] == "weather" and call["call_id"] == "call-1"
    assert output["call_id"] == "call-1" and "sunny in Oslo" in str(output["output"])
    # the next turn sends the tool call and its output back to the model
    model.enqueue([assistant_message("You asked about Oslo")])
    await Runner.run(agent, "What did I ask?", session=session)
    assert model.last_call is not None
    sent_types = [i.get("type") for i in model.last_call.input]
    assert "function_call" in sent_types and "function_call_output" in sent_types


async def test_session_settings_limit_bounds_the_model_input(db: SessionRouter) -> None:
    agent, model = agent_with("a1", "a2", "a3")
    session = PostgresSession("runner-limit", db)
    await Runner.run(agent, "q1", session=session)
    await Runner.run(agent, "q2", session=session)
    config = RunConfig(session_settings=SessionSettings(limit=2))
    await Runner.run(agent, "q3", session=session, run_config=config)
    assert model.last_call is not None
    assert texts(model.last_call.input) == ["q2", "a2", "q3"]
    assert len(await session.get_items()) == 6


async def test_session_input_callback(db: SessionRouter) -> None:
    agent, model = agent_with("a1", "a2")
    session = PostgresSession("runner-callback", db)
    await Runner.run(agent, "q1", session=session)
    seen: list[int] = []

    def keep_user_only(history: list[Any], new: list[Any]) -> list[Any]:
        seen.append(len(history))
        return [i for i in history if i.get("role") == "user"] + new

    config = RunConfig(session_input_callback=keep_user_only)
    await Runner.run(agent, "q2", session=session, run_config=config)
    assert seen == [2]
    assert model.last_call is not None
    assert texts(model.last_call.input) == ["q1", "q2"]


async def test_two_session_ids_are_isolated(db: SessionRouter) -> None:
    agent, model = agent_with("for alice", "for bob", "alice again")
    alice = PostgresSession("runner-alice", db)
    bob = PostgresSession("runner-bob", db)
    await Runner.run(agent, "I am Alice", session=alice)
    await Runner.run(agent, "I am Bob", session=bob)
    assert model.last_call is not None
    assert texts(model.last_call.input) == ["I am Bob"]
    await Runner.run(agent, "Who am I?", session=alice)
    assert texts(model.last_call.input) == ["I am Alice", "for alice", "Who am I?"]
    assert texts(await bob.get_items()) == ["I am Bob", "for bob"]


async def test_runner_reads_back_the_deepest_and_the_largest_accepted_items(
    db: SessionRouter,
) -> None:
    """What add_items accepts, the Runner can use: nothing stored makes the session unusable."""
    deep: Any = "bottom"
    for i in range(MAX_DEPTH - 1):
        deep = [deep] if i % 2 else {"level": i, "next": deep}
    deepest = {"role": "user", "content": "deep", "extra": deep}
    largest = {"role": "assistant", "content": ""}
    largest["content"] = "é" * ((MAX_ITEM_BYTES - len(encode_item(largest))) // 2)
    assert value_depth(deepest) == MAX_DEPTH
    assert MAX_ITEM_BYTES - 1 <= len(encode_item(largest).encode()) <= MAX_ITEM_BYTES
    session = PostgresSession("runner-limits", db)
    await session.add_items([deepest, largest])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="nested"):
        await session.add_items([{"role": "user", "content": "x", "extra": [deep]}])  # type: ignore[list-item]
    agent, model = agent_with("read both", "streamed both")
    result = await Runner.run(agent, "still usable?", session=session)
    assert result.final_output == "read both"
    assert model.last_call is not None
    sent = list(model.last_call.input)
    assert sent[0] == deepest and sent[1] == largest
    streamed = Runner.run_streamed(agent, "and streamed?", session=session)
    async for _ in streamed.stream_events():
        pass
    assert streamed.final_output == "streamed both"
    assert list(model.last_call.input)[:2] == [deepest, largest]
    assert texts(await session.get_items())[-4:] == [
        "still usable?",
        "read both",
        "and streamed?",
        "streamed both",
    ]
