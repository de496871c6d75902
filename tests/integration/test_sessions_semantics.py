"""PostgresSession semantics against a real primary: the SDK's Session contract, exactly."""

from __future__ import annotations

import asyncio
import math
import uuid
from typing import Any

import psycopg
import pytest
from agents.memory import Session, SessionSettings

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.errors import RouterClosedError
from pgsessions.router.lsn import parse_lsn
from pgsessions.sessions.ids import new_op_id
from pgsessions.sessions.schema import quote_ident
from pgsessions.sessions.sql.session import statements


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


def msg(i: int, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": f"message {i}"}


async def fetch(router: SessionRouter, query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with router.primary_connection() as conn:
        cur = await conn.execute(query.replace("{s}", quote_ident(router.config.schema)), params)
        return await cur.fetchall() if cur.description is not None else []


async def test_is_an_sdk_session_with_a_safe_repr(db: SessionRouter) -> None:
    s = PostgresSession("repr-1", db)
    assert isinstance(s, Session)
    assert s.session_settings == SessionSettings()
    text = repr(s)
    assert "repr-1" in text and db.config.schema in text
    assert "password" not in text and "host" not in text


async def test_settings_accept_a_dict(db: SessionRouter) -> None:
    s = PostgresSession("settings-dict", db, session_settings={"limit": 2})
    assert isinstance(s.session_settings, SessionSettings)
    assert s.session_settings.limit == 2
    await s.add_items([msg(i) for i in range(4)])
    assert [i["content"] for i in await s.get_items()] == ["message 2", "message 3"]
    # an explicit argument wins over the settings
    assert len(await s.get_items(3)) == 3


async def test_add_and_get_keep_order_across_batches(db: SessionRouter) -> None:
    s = PostgresSession("order", db)
    await s.add_items([msg(0), msg(1, "assistant")])
    await s.add_items([msg(2)])
    await s.add_items([msg(3, "assistant"), msg(4), msg(5, "assistant")])
    assert [i["content"] for i in await s.get_items()] == [f"message {i}" for i in range(6)]


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (None, [0, 1, 2, 3, 4]),
        (1, [4]),
        (3, [2, 3, 4]),
        (5, [0, 1, 2, 3, 4]),
        (6, [0, 1, 2, 3, 4]),
        (2**31 - 1, [0, 1, 2, 3, 4]),
        (2**63 - 1, [0, 1, 2, 3, 4]),
        (2**70, [0, 1, 2, 3, 4]),
    ],
)
async def test_limit_returns_latest_n_in_order(
    db: SessionRouter, limit: int | None, expected: list[int]
) -> None:
    s = PostgresSession(f"limit-{limit}", db)
    await s.add_items([msg(i) for i in range(5)])
    assert [i["content"] for i in await s.get_items(limit)] == [f"message {i}" for i in expected]


async def test_limit_zero_and_negative(db: SessionRouter) -> None:
    s = PostgresSession("limit-edges", db)
    await s.add_items([msg(0)])
    assert await s.get_items(0) == []
    with pytest.raises(ValueError, match="-1"):
        await s.get_items(-1)
    with pytest.raises(ValueError):
        await PostgresSession("x", db, session_settings={"limit": -3}).get_items()
    with pytest.raises(TypeError):
        await s.get_items("2")  # type: ignore[arg-type]


async def test_unknown_session_reads_empty(db: SessionRouter) -> None:
    s = PostgresSession("never-written", db)
    assert await s.get_items() == []
    assert await s.get_items(10) == []
    assert await s.get_metadata() is None


async def test_empty_batch_and_limit_zero_cost_no_round_trip(router_config: Any) -> None:
    router = SessionRouter(router_config)  # never opened: any statement would raise
    s = PostgresSession("no-io", router)
    await s.add_items([])
    assert await s.get_items(0) == []
    with pytest.raises(RouterClosedError):
        await s.get_items(1)


async def test_pop_returns_newest_then_none(db: SessionRouter) -> None:
    s = PostgresSession("pop", db)
    assert await s.pop_item() is None  # unknown session
    await s.add_items([msg(0), msg(1, "assistant"), msg(2)])
    assert await s.pop_item() == msg(2)
    assert await s.pop_item() == msg(1, "assistant")
    await s.add_items([msg(3)])
    assert await s.get_items() == [msg(0), msg(3)]
    assert await s.pop_item() == msg(3)
    assert await s.pop_item() == msg(0)
    assert await s.pop_item() is None
    assert await s.get_items() == []
    rows = await fetch(
        db, "SELECT item_count, user_turns FROM {s}.conversations WHERE session_id = %s", "pop"
    )
    assert rows == [(0, 0)]


@pytest.mark.owner_sql
async def test_clear_unknown_is_a_no_op_and_clear_removes_everything(db: SessionRouter) -> None:
    await PostgresSession("nobody", db).clear_session()
    s = PostgresSession("clear-me", db, metadata={"k": "v"})
    other = PostgresSession("keep-me", db)
    await s.add_items([msg(0), msg(1)])
    await other.add_items([msg(9)])
    await s.pop_item()
    await s.clear_session()
    assert await s.get_items() == []
    assert await s.get_metadata() is None
    for table in ("conversations", "messages", "usage_logs"):
        rows = await fetch(
            db, f"SELECT count(*) FROM {{s}}.{table} WHERE session_id = %s", "clear-me"
        )
        assert rows == [(0,)], table
    # the operation ids (add, pop, clear) stay until pruned by age, so a late replay of any
    # of them stays a no-op
    ops = "SELECT count(*) FROM {s}.ops WHERE session_id = %s"
    assert await fetch(db, ops, "clear-me") == [(3,)]
    await fetch(db, "SELECT {s}.prune_ops(interval '0')")
    assert await fetch(db, ops, "clear-me") == [(0,)]
    assert await other.get_items() == [msg(9)]
    # the session is usable again and starts a new conversation
    await s.add_items([msg(5)])
    assert await s.get_items() == [msg(5)]
    assert await s.get_metadata() == {"k": "v"}


async def test_sessions_are_isolated(db: SessionRouter) -> None:
    a, b = PostgresSession("iso-a", db), PostgresSession("iso-b", db)
    await a.add_items([msg(1)])
    await b.add_items([msg(2)])
    assert await a.get_items() == [msg(1)]
    assert await b.pop_item() == msg(2)
    assert await a.get_items() == [msg(1)]


ODD_VALUES: list[Any] = [
    "nul \x00 inside",
    "\x00",
    "lone surrogate \ud800 and \udfff",
    "planes: é ß 中文 𝄞 😀 \U0010ffff \u200b \ufeff",
    "'; DROP TABLE messages; --",
    "$$ $body$ \\ \\\\ \\u0000 %s %(x)s {schema}",
    "\n\t\r\x7f\x01",
    2**200,
    -(2**70),
    1.7976931348623157e308,
    5e-324,
    0.1,
    -0.0,
    True,
    None,
    [],
    {},
    "",
]


async def test_odd_values_round_trip_exactly(db: SessionRouter) -> None:
    s = PostgresSession("odd", db)
    items: list[Any] = [{"role": "user", "content": v} for v in ODD_VALUES]
    items.append({"z": 1, "a": 2, "m": {"\x00key": "v"}})  # key order and a NUL key
    await s.add_items(items)
    got = await s.get_items()
    assert got == items
    assert list(got[-1]) == ["z", "a", "m"]
    assert math.copysign(1.0, got[ODD_VALUES.index(-0.0)]["content"]) == -1.0
    assert await s.pop_item() == items[-1]
    assert await s.get_items(1) == [items[-2]]


async def test_deep_nesting_and_large_items(db: SessionRouter) -> None:
    s = PostgresSession("big", db)
    deep: Any = "bottom"
    for i in range(63):  # 126 levels of JSON nesting: with the item's own, under MAX_DEPTH
        deep = {"level": i, "next": [deep]}
    big = {"role": "assistant", "content": "x" * (6 * 2**20), "tail": "é\x00"}
    await s.add_items([{"type": "deep", "value": deep}, big])
    got = await s.get_items()
    assert got[0]["value"] == deep
    assert got[1] == big


async def test_role_and_type_columns_are_extracted(db: SessionRouter) -> None:
    s = PostgresSession("columns", db)
    await s.add_items(
        [
            {"role": "user", "content": "hi"},
            {"type": "function_call", "name": "f", "call_id": "c1", "arguments": "{}"},
            {"type": "message", "role": "assistant", "content": []},
            {"role": 5, "type": "bad\x00type"},
            {"role": "\udc80", "type": "surrogate"},
            {"content": "neither role nor type"},
        ]
    )
    rows = await fetch(
        db, "SELECT role, type FROM {s}.messages WHERE session_id = %s ORDER BY seq", "columns"
    )
    assert rows == [
        ("user", None),
        (None, "function_call"),
        ("assistant", "message"),
        (None, None),
        (None, "surrogate"),
        (None, None),
    ]


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"role": "user", "content": {1, 2}}, TypeError),
        ({"role": "user", "content": b"bytes"}, TypeError),
        ({"role": "user", "content": object()}, TypeError),
        ({"role": "user", "content": float("nan")}, ValueError),
        ({"role": "user", "content": float("inf")}, ValueError),
    ],
)
async def test_unserialisable_item_names_its_index_and_writes_nothing(
    db: SessionRouter, bad: Any, error: type[Exception]
) -> None:
    s = PostgresSession(f"bad-{uuid.uuid4().hex[:6]}", db)
    await s.add_items([msg(0)])
    with pytest.raises(error, match="item 2"):
        await s.add_items([msg(1), msg(2), bad, msg(3)])
    assert await s.get_items() == [msg(0)]
    fresh = PostgresSession(f"bad-new-{uuid.uuid4().hex[:6]}", db)
    with pytest.raises(error, match="item 0"):
        await fresh.add_items([bad])
    assert await fresh.get_metadata() is None  # the conversation was not created


@pytest.mark.owner_sql
async def test_a_batch_failing_in_the_database_leaves_nothing(db: SessionRouter) -> None:
    schema = quote_ident(db.config.schema)
    async with db.primary_connection() as conn:
        await conn.execute(
            f"CREATE FUNCTION {schema}.boom() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF NEW.item->>'content' = 'boom' THEN RAISE EXCEPTION 'boom refused';"
            " END IF; RETURN NEW; END $$"
        )
        await conn.execute(
            f"CREATE TRIGGER boom BEFORE INSERT ON {schema}.messages"
            f" FOR EACH ROW EXECUTE FUNCTION {schema}.boom()"
        )
    s = PostgresSession("fails", db)
    await s.add_items([msg(0)])
    with pytest.raises(psycopg.errors.RaiseException, match="boom refused"):
        await s.add_items([msg(1), msg(2), {"role": "user", "content": "boom"}])
    assert await s.get_items() == [msg(0)]
    await s.add_items([msg(3)])
    rows = await fetch(
        db, "SELECT seq FROM {s}.messages WHERE session_id = %s ORDER BY seq", "fails"
    )
    assert rows == [(1,), (2,)]  # the failed batch consumed no sequence numbers
    new = PostgresSession("fails-new", db)
    with pytest.raises(psycopg.errors.RaiseException):
        await new.add_items([{"role": "user", "content": "boom"}])
    assert await new.get_metadata() is None


async def test_a_replayed_batch_is_applied_once(db: SessionRouter) -> None:
    """The router may resend a write whose reply was lost: the op id makes it a no-op."""
    sql = statements(db.config.schema)
    op = uuid.uuid4()
    params = ("replay", op, ['{"n":1}', '{"n":2}'], ["user", None], [None, None], None)
    rows1, _ = await db.execute_write(
        "add_items", "replay", sql.add_items, (*params, False), commits=True
    )
    rows2, _ = await db.execute_write(
        "add_items", "replay", sql.add_items, (*params, True), commits=True
    )
    assert (rows1, rows2) == ([(True,)], [(False,)])
    s = PostgresSession("replay", db)
    assert await s.get_items() == [{"n": 1}, {"n": 2}]
    pop_op = uuid.uuid4()
    first, _ = await db.execute_write("pop_item", "replay", sql.pop_item, ("replay", pop_op))
    again, _ = await db.execute_write("pop_item", "replay", sql.pop_item, ("replay", pop_op))
    assert first == again == [('{"n":2}',)]
    assert await s.get_items() == [{"n": 1}]  # popped once


async def test_concurrent_replays_wait_for_the_original(db: SessionRouter) -> None:
    sql = statements(db.config.schema)
    op = uuid.uuid4()
    params = ("replay-conc", op, ['{"n":1}'], [None], [None], None, True)
    results = await asyncio.gather(
        *(
            db.execute_write("add_items", "replay-conc", sql.add_items, params, commits=True)
            for _ in range(8)
        )
    )
    assert sorted(rows[0][0] for rows, _ in results) == [False] * 7 + [True]
    assert await PostgresSession("replay-conc", db).get_items() == [{"n": 1}]


@pytest.mark.parametrize("existing", [False, True])
async def test_a_first_delivery_racing_its_retries_is_applied_once(
    db: SessionRouter, existing: bool
) -> None:
    """The first delivery (no lookup) and retries (lookup after the row lock) at once: one
    applies; the retries report False; a first delivery that a retry overtook is refused by
    the unique index (its client gave up on it long ago), never applied a second time."""
    sql = statements(db.config.schema)
    sid = f"race-{existing}"
    if existing:
        await PostgresSession(sid, db).add_items([{"n": 0}])
    for _ in range(5):
        op = uuid.uuid4()
        params = (sid, op, ['{"n":1}'], [None], [None], None)
        results = await asyncio.gather(
            *(
                db.execute_write("add_items", sid, sql.add_items, (*params, k > 0), commits=True)
                for k in range(6)
            ),
            return_exceptions=True,
        )
        applied = [r for r in results if not isinstance(r, BaseException) and r[0] == [(True,)]]
        assert len(applied) == 1, results
        for k, r in enumerate(results):
            if isinstance(r, BaseException):
                assert k == 0 and isinstance(r, psycopg.errors.UniqueViolation), results
    want = [{"n": 0}] * existing + [{"n": 1}] * 5
    assert await PostgresSession(sid, db).get_items() == want


async def test_a_late_first_delivery_after_its_retry_is_not_applied(db: SessionRouter) -> None:
    """The retry applied the batch before the first delivery reached the server (a proxy
    held it): the late first delivery is refused, also once the batch was popped or cleared."""
    sql = statements(db.config.schema)
    s = PostgresSession("late", db)
    for then in ("nothing", "pop", "clear"):
        op = uuid.uuid4()
        params = ("late", op, ['{"n":1}', '{"n":2}'], [None, None], [None, None], None)
        retried, _ = await db.execute_write(
            "add_items", "late", sql.add_items, (*params, True), commits=True
        )
        assert retried == [(True,)]
        if then == "pop":
            assert await s.pop_item() == {"n": 2}
            assert await s.pop_item() == {"n": 1}  # the item carrying the operation id
        elif then == "clear":
            await s.clear_session()
        before = await s.get_items()
        try:
            late, _ = await db.execute_write(
                "add_items", "late", sql.add_items, (*params, False), commits=True
            )
        except psycopg.errors.UniqueViolation:
            assert then == "nothing"
        else:
            assert then != "nothing" and late == [(False,)]
        assert await s.get_items() == before
        # and a retry of it too
        again, _ = await db.execute_write(
            "add_items", "late", sql.add_items, (*params, True), commits=True
        )
        assert again == [(False,)]
        assert await s.get_items() == before


async def test_a_replay_after_a_clear_is_not_applied_again(db: SessionRouter) -> None:
    """A batch committed, its reply lost, the session cleared, then the router resends it:
    the cleared items must not come back (clear_session keeps the operation ids)."""
    sql = statements(db.config.schema)
    s = PostgresSession("replay-clear", db)
    op = uuid.uuid4()
    params = ("replay-clear", op, ['{"n":1}'], ["user"], [None], None)
    first, _ = await db.execute_write(
        "add_items", s.session_id, sql.add_items, (*params, False), commits=True
    )
    assert first == [(True,)]
    await s.clear_session()
    again, _ = await db.execute_write(
        "add_items", s.session_id, sql.add_items, (*params, True), commits=True
    )
    assert again == [(False,)]
    assert await s.get_items() == []
    # a pop replayed after clear and refill returns what it first removed, removes nothing
    await s.add_items([{"n": 2}])
    pop_op = uuid.uuid4()
    popped, _ = await db.execute_write(
        "pop_item", s.session_id, sql.pop_item, (s.session_id, pop_op)
    )
    assert popped == [('{"n":2}',)]
    await s.clear_session()
    await s.add_items([{"n": 3}])
    replayed, _ = await db.execute_write(
        "pop_item", s.session_id, sql.pop_item, (s.session_id, pop_op)
    )
    assert replayed == popped
    assert await s.get_items() == [{"n": 3}]


@pytest.mark.owner_sql
async def test_latest_n_is_an_index_scan(db: SessionRouter) -> None:
    await fetch(
        db,
        "INSERT INTO {s}.conversations (session_id, next_seq, item_count)"
        " SELECT 's' || g, 2001, 2000 FROM generate_series(1, 50) g",
    )
    await fetch(
        db,
        "INSERT INTO {s}.messages (session_id, seq, item)"
        " SELECT 's' || g, n, json_build_object('n', n)"
        " FROM generate_series(1, 50) g, generate_series(1, 2000) n",
    )
    await fetch(db, "ANALYZE {s}.messages")
    plan = await fetch(db, "EXPLAIN " + statements(db.config.schema).get_items, "s7", None, 50)
    text = "\n".join(r[0] for r in plan)
    assert "Index Scan Backward using messages_pkey" in text, text
    assert "Sort" not in text.split("Index Scan")[1], text
    got = await PostgresSession("s7", db, consistency_token=await primary_token(db)).get_items(3)
    assert got == [{"n": 1998}, {"n": 1999}, {"n": 2000}]

    # the cost follows the limit, not the history: the scan stops after `limit` rows and
    # touches about as many pages for a 20000-item session as for a 2000-item one
    await fetch(
        db,
        "INSERT INTO {s}.conversations (session_id, next_seq, item_count)"
        " VALUES ('s-20k', 20001, 20000)",
    )
    await fetch(
        db,
        "INSERT INTO {s}.messages (session_id, seq, item)"
        " SELECT 's-20k', n, json_build_object('n', n) FROM generate_series(1, 20000) n",
    )
    await fetch(db, "ANALYZE {s}.messages")

    async def scan(session_id: str) -> dict[str, Any]:
        query = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statements(db.config.schema).get_items
        [[doc]] = await fetch(db, query, session_id, None, 50)
        # the index scans of the plan (a bitmap scan and a sort would not be the plan
        # wanted); main's items are the scan that returns rows (a branch's shared prefix,
        # migration 0010, is a second one that never runs for main)
        found, todo = [], [doc[0]["Plan"]]
        while todo:
            node = todo.pop()
            if node["Node Type"] == "Index Scan":
                found.append(node)
            todo.extend(node.get("Plans", []))
        assert found, doc
        return dict(max(found, key=lambda n: n.get("Actual Rows", 0)))

    small, large = await scan("s7"), await scan("s-20k")
    assert small["Actual Rows"] == large["Actual Rows"] == 50, (small, large)
    pages = {
        k: n["Shared Hit Blocks"] + n["Shared Read Blocks"]
        for k, n in (("small", small), ("large", large))
    }
    assert pages["large"] <= pages["small"] + 3, pages


async def test_consistency_token_follows_writes(db: SessionRouter) -> None:
    s = PostgresSession("tokens", db)
    assert s.consistency_token is None
    await s.add_items([msg(0)])
    t1 = s.consistency_token
    assert t1 is not None and parse_lsn(t1) > 0
    await s.add_items([msg(1)])
    t2 = s.consistency_token
    assert t2 is not None and parse_lsn(t2) > parse_lsn(t1)
    # another object for the same id on this router keeps read-your-writes
    assert PostgresSession("tokens", db).consistency_token == t2


async def test_consistency_token_argument(db: SessionRouter) -> None:
    with pytest.raises(ValueError, match="not-a-token"):
        PostgresSession("tok-bad", db, consistency_token="not-a-token")
    s = PostgresSession("tok-seed", db, consistency_token="0/10")
    assert s.consistency_token == "0/10"
    far = PostgresSession("tok-far", db, consistency_token="FF/0")
    await far.add_items([msg(0)])  # a real write lower than the seed does not move it back
    assert far.consistency_token == "FF/0"


async def test_session_id_is_validated(db: SessionRouter) -> None:
    for bad in ("", "a\x00b", "lone \ud800", None, 5):
        with pytest.raises(ValueError):
            PostgresSession(bad, db)  # type: ignore[arg-type]


async def test_cancelled_add_still_settles_all_or_nothing(db: SessionRouter) -> None:
    s = PostgresSession("cancel", db)
    task = asyncio.create_task(s.add_items([msg(0), msg(1), msg(2)]))
    await asyncio.sleep(0)  # let the write start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the caller saw the cancellation only after the write reached its outcome
    assert await s.get_items() == [msg(0), msg(1), msg(2)]


@pytest.mark.owner_sql
async def test_old_operation_ids_are_pruned(db: SessionRouter) -> None:
    s = PostgresSession("prune", db)
    await s.add_items([msg(0)])
    await s.add_items([msg(1)])
    await s.pop_item()
    # the pop's own id, and the id of the add whose item it removed (the other add's id
    # stays on its message)
    assert await fetch(db, "SELECT count(*) FROM {s}.ops WHERE session_id = 'prune'") == [(2,)]
    await fetch(
        db,
        "UPDATE {s}.ops SET created_at = now() - interval '2 hours'"
        " WHERE op_id = (SELECT op_id FROM {s}.ops WHERE session_id = 'prune'"
        " ORDER BY created_at LIMIT 1)",
    )
    assert await fetch(db, "SELECT {s}.prune_ops()") == [(1,)]
    assert await fetch(db, "SELECT count(*) FROM {s}.ops WHERE session_id = 'prune'") == [(1,)]
    assert await fetch(db, "SELECT {s}.prune_ops()") == [(0,)]
    assert await s.get_items() == [msg(0)]


def test_operation_ids_are_uuid7_ordered_by_time() -> None:
    ids = [new_op_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    # the first 48 bits are the Unix time in milliseconds, never decreasing
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps)
    import time

    assert abs(stamps[-1] / 1000 - time.time()) < 5
