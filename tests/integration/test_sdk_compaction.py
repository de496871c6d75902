"""The SDK's compaction hook on PostgresSession: a bounded snapshot and an atomic suffix
replacement, then EncryptedSession and OpenAIResponsesCompactionSession end to end."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.extensions.memory import EncryptedSession
from agents.memory import OpenAIResponsesCompactionSession, SessionSettings
from agents.testing import ModelStep, ScriptedModel, assistant_message
from cryptography.fernet import Fernet

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.router.lsn import parse_lsn
from tests.integration.test_sdk_parity import blocked_backend, conversation_locked

set_tracing_disabled(True)


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


def item(i: int, **extra: Any) -> dict[str, Any]:
    return {"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}", **extra}


SUMMARY: dict[str, Any] = {"type": "compaction", "encrypted_content": "summary"}


async def seeded(db: SessionRouter, sid: str, n: int) -> PostgresSession:
    s = PostgresSession(sid, db)
    await s.add_items([item(i) for i in range(n)])  # type: ignore[misc]
    return s


async def test_snapshot_is_bounded_and_says_whether_it_is_complete(db: SessionRouter) -> None:
    s = await seeded(db, "snap", 6)
    part = await s._get_compaction_snapshot(3)
    assert part is not None
    assert (part.items, part.complete) == ([item(3), item(4), item(5)], False)
    whole = await s._get_compaction_snapshot(6)
    assert whole is not None and whole.complete and len(whole.items) == 6
    empty = await PostgresSession("snap-none", db)._get_compaction_snapshot(5)
    assert empty is not None and (empty.items, empty.complete) == ([], True)
    assert await empty.replace_suffix(0, [SUMMARY]) is False  # type: ignore[list-item]
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="limit"):
            await s._get_compaction_snapshot(bad)


async def test_replace_suffix_is_atomic_and_keeps_the_token(db: SessionRouter) -> None:
    s = await seeded(db, "replace", 6)
    before = parse_lsn(s.consistency_token or "0/0")
    snap = await s._get_compaction_snapshot(3)
    assert snap is not None
    assert await snap.replace_suffix(1, [SUMMARY, item(9)]) is True  # type: ignore[list-item]
    assert await s.get_items() == [item(0), item(1), item(2), item(3), SUMMARY, item(9)]
    token = s.consistency_token
    assert token is not None and parse_lsn(token) > before
    assert db.token_for("replace") == token  # remembered by the router too
    # a second replacement from the same (now stale) snapshot changes nothing
    assert await snap.replace_suffix(0, [SUMMARY]) is False  # type: ignore[list-item]
    await s.add_items([item(10)])  # new items go after the replacement
    assert (await s.get_items())[-3:] == [SUMMARY, item(9), item(10)]


async def test_bad_replacement_input_is_refused_before_any_write(db: SessionRouter) -> None:
    s = await seeded(db, "replace-bad", 4)
    snap = await s._get_compaction_snapshot(4)
    assert snap is not None
    with pytest.raises(TypeError, match="item 1"):
        await snap.replace_suffix(0, [SUMMARY, {"x": {1, 2}}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="start=5"):
        await snap.replace_suffix(5, [SUMMARY])  # type: ignore[list-item]
    assert await s.get_items() == [item(i) for i in range(4)]
    assert await snap.replace_suffix(0, [SUMMARY]) is True  # type: ignore[list-item]


async def test_a_write_after_the_snapshot_declines_the_replacement(db: SessionRouter) -> None:
    """Added, popped, or cleared and refilled with the same items: nothing is lost."""
    s = await seeded(db, "stale", 4)
    other = PostgresSession("stale", db)
    snap = await s._get_compaction_snapshot(4)
    assert snap is not None
    await other.add_items([item(7)])  # type: ignore[list-item]
    assert await snap.replace_suffix(0, [SUMMARY]) is False  # type: ignore[list-item]
    assert await s.get_items() == [*(item(i) for i in range(4)), item(7)]

    snap = await s._get_compaction_snapshot(10)
    assert snap is not None
    await other.pop_item()
    assert await snap.replace_suffix(0, [SUMMARY]) is False  # type: ignore[list-item]

    snap = await s._get_compaction_snapshot(10)
    assert snap is not None
    await other.clear_session()
    await other.add_items([item(i) for i in range(4)])  # type: ignore[misc]  # same seqs
    assert await snap.replace_suffix(0, [SUMMARY]) is False  # type: ignore[list-item]
    assert await s.get_items() == [item(i) for i in range(4)]


async def test_an_add_in_flight_during_the_replacement_lands_after_it(
    db: SessionRouter, cluster: LocalCluster, schema: str
) -> None:
    """The SDK's bug: an append made while compaction runs was lost. Here the replacement
    and the append queue on the conversation's lock; both apply, in that order."""
    s = await seeded(db, "in-flight", 4)
    snap = await s._get_compaction_snapshot(4)
    assert snap is not None
    writer = PostgresSession("in-flight", db)
    async with conversation_locked(cluster, schema, "in-flight") as lock:
        replacing = asyncio.create_task(snap.replace_suffix(0, [SUMMARY]))  # type: ignore[list-item]
        await blocked_backend(cluster, "replace_suffix")
        adding = asyncio.create_task(writer.add_items([item(8), item(9)]))  # type: ignore[list-item]
        await blocked_backend(cluster, "add_items")
        await lock.commit()
        assert await replacing is True
        await adding
    assert await s.get_items() == [SUMMARY, item(8), item(9)]


async def test_expired_prefix_is_pruned_up_to_the_first_live_item(db: SessionRouter) -> None:
    s = PostgresSession("prune", db)
    old = [item(0, expired=True), item(1, expired=True), item(2), item(3, expired=True)]
    await s.add_items([*old, item(4), item(5)])  # type: ignore[list-item]
    snap = await s._get_compaction_snapshot(2)
    assert snap is not None

    def expired(it: Any) -> bool:
        return bool(it.get("expired"))

    snap = await s._get_compaction_snapshot(2, prune_prefix=expired)
    assert snap is not None and not snap.complete
    assert await snap.replace_suffix(0, [SUMMARY]) is True  # type: ignore[list-item]
    # item 3 is expired too, but follows a live item: only the leading run goes
    assert await s.get_items() == [item(2), item(3, expired=True), SUMMARY]


async def test_a_subclass_that_transforms_items_gets_no_snapshot(db: SessionRouter) -> None:
    class Upper(PostgresSession):
        async def get_items(self, limit: int | None = None, *, wrapper: Any = None) -> Any:
            return await super().get_items(limit, wrapper=wrapper)

    assert await Upper("sub", db)._get_compaction_snapshot(5) is None


async def test_replacement_leaves_no_lock_behind(db: SessionRouter, cluster: LocalCluster) -> None:
    s = await seeded(db, "locks", 3)
    snap = await s._get_compaction_snapshot(3)
    assert snap is not None and await snap.replace_suffix(0, [SUMMARY])  # type: ignore[list-item]
    async with await psycopg.AsyncConnection.connect(cluster.primary.dsn) as c:
        cur = await c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
            " AND query LIKE '%replace_suffix%'"
        )
        assert await cur.fetchone() == (0,)


# end to end: the SDK's own compaction and encryption wrappers over PostgresSession ------------
class FakeCompactClient:
    """Stands in for AsyncOpenAI: ``responses.compact`` returns one compaction item."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.responses = SimpleNamespace(compact=self.compact)

    async def compact(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        n = len(self.calls)
        return SimpleNamespace(
            output=[{"type": "compaction", "encrypted_content": f"summary-{n}"}], usage=None
        )


def turns(n: int) -> ScriptedModel:
    return ScriptedModel([ModelStep(output=[assistant_message(f"answer {i}")]) for i in range(n)])


async def test_responses_compaction_session_runs_atomically_over_postgres(
    db: SessionRouter,
) -> None:
    """The session reads only its last 2 items, so the model never sees the older history.
    Without the hook the SDK declines to compact (it would have to clear and rewrite a
    history it has not seen); with it, the latest exchange is replaced in place and the
    older items stay."""
    client = FakeCompactClient()
    backend = PostgresSession("e2e-compact", db, session_settings=SessionSettings(limit=2))
    older = [item(i) for i in range(6)]
    await backend.add_items(older)  # type: ignore[arg-type]
    session = OpenAIResponsesCompactionSession(
        "e2e-compact",
        backend,
        client=client,  # type: ignore[arg-type]
        model="gpt-4.1",
        should_trigger_compaction=lambda ctx: True,
    )
    agent = Agent(name="a", model=turns(1))
    result = await Runner.run(agent, "one", session=session)
    assert result.final_output == "answer 0"
    assert len(client.calls) == 1 and "input" in client.calls[0]
    stored = await backend.get_items(limit=100)
    # the model saw items 4 and 5 (the limit), its input and its answer: that exchange, from
    # its first user message on, is what the summary replaces
    assert stored == [*older[:4], {"type": "compaction", "encrypted_content": "summary-1"}]


async def test_encrypted_compaction_session_over_postgres(
    db: SessionRouter, cluster: LocalCluster
) -> None:
    """EncryptedSession over PostgresSession (the README's way to encrypt history at rest):
    it round-trips, and the stored rows hold only ciphertext."""
    client = FakeCompactClient()
    backend = PostgresSession("e2e-encrypted", db, session_settings=SessionSettings(limit=2))
    compacting = OpenAIResponsesCompactionSession(
        "e2e-encrypted",
        backend,
        client=client,  # type: ignore[arg-type]
        should_trigger_compaction=lambda ctx: True,
    )
    key = Fernet.generate_key().decode("ascii")
    session = EncryptedSession("e2e-encrypted", compacting, encryption_key=key, ttl=600)
    older = [item(i) for i in range(4)]
    await session.add_items(older)  # type: ignore[arg-type]
    agent = Agent(name="a", model=turns(1))
    await Runner.run(agent, "one", session=session)
    assert len(client.calls) == 1
    raw = await backend.get_items(limit=100)
    assert len(raw) == 3 and all(it.get("__enc__") for it in raw)  # type: ignore[union-attr]
    # stored encrypted: no plaintext value survives as a JSON string (base64 text may
    # contain "m1" by chance, but never the quoted value)
    text = json.dumps(raw)
    assert '"summary-1"' not in text and '"m1"' not in text and '"m0"' not in text
    plain = await session.get_items(limit=100)
    assert plain == [*older[:2], {"type": "compaction", "encrypted_content": "summary-1"}]
    # the table itself, read as the database holds it: no plaintext value, and the role
    # and type columns (extracted for analytics) stay empty
    cluster.wait_caught_up()
    for node in cluster.nodes:
        rows = node.execute(
            f"SELECT item::text, role, type FROM {db.config.schema}.messages "
            "WHERE session_id = 'e2e-encrypted'"
        )
        assert len(rows) == 3
        for text, role, type_ in rows:
            assert json.loads(text)["__enc__"] == 1 and role is None and type_ is None
            for value in ('"summary-1"', '"m0"', '"m1"', '"user"', '"assistant"', "answer 0"):
                assert value not in text, (node.name, text)
