"""Bad input is refused before any I/O with an error naming the problem: session ids too long
for the indexes that hold them, items that are not JSON objects, JSON nested deeper or items
larger than every reader can read back."""

from __future__ import annotations

import random
import uuid
from types import MappingProxyType, SimpleNamespace
from typing import Any

import psycopg
import pytest
from agents.usage import Usage

from pgsessions import PostgresSession, SessionRouter, list_sessions, migrate
from pgsessions.sessions.ids import MAX_SESSION_ID_BYTES, check_session_id, check_tenant
from pgsessions.sessions.items import encode_item, encode_items, encode_metadata
from pgsessions.sessions.limits import MAX_DEPTH, MAX_ITEM_BYTES, text_depth, value_depth
from pgsessions.sessions.sql.session import statements
from pgsessions.sessions.usage import usage_params
from tests.helpers import run_result


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


def incompressible(n_bytes: int, alphabet: str, seed: int) -> str:
    """A random string of exactly ``n_bytes`` UTF-8 bytes: TOAST cannot shrink it in an index
    entry, so it costs its full size there. ``alphabet`` holds characters of one width."""
    width = len(alphabet[0].encode())
    assert all(len(c.encode()) == width for c in alphabet)
    rng = random.Random(seed)
    head = "".join(rng.choice(alphabet) for _ in range(n_bytes // width))
    return head + "x" * (n_bytes - len(head.encode()))


ASCII = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
THREE_BYTE = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]  # CJK ideographs
FOUR_BYTE = [chr(c) for c in range(0x1F300, 0x1F300 + 500)]  # pictographs


def msg(i: int) -> dict[str, Any]:
    return {"role": "user", "content": f"message {i}"}


# session ids ----------------------------------------------------------------------------------
def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    assert check_session_id("€" * 341 + "a") == "€" * 341 + "a"  # 1024 bytes
    with pytest.raises(ValueError, match="1026 bytes of UTF-8; at most 1024"):
        check_session_id("€" * 342)  # 342 characters only
    with pytest.raises(ValueError, match="1025 bytes"):
        check_session_id("a" * 1025)
    assert check_tenant("t" * 256) == "t" * 256
    with pytest.raises(ValueError, match="tenant is 257 bytes"):
        check_tenant("t" * 257)


@pytest.mark.parametrize("alphabet", [ASCII, THREE_BYTE, FOUR_BYTE], ids=["1B", "3B", "4B"])
async def test_an_id_at_the_limit_works_everywhere(db: SessionRouter, alphabet: Any) -> None:
    """An incompressible id of exactly MAX_SESSION_ID_BYTES goes through every index that holds
    it: conversations, messages, usage_logs, ops and the listing index."""
    sid = incompressible(MAX_SESSION_ID_BYTES, alphabet, seed=len(alphabet))
    assert len(sid.encode()) == MAX_SESSION_ID_BYTES
    s = PostgresSession(sid, db)
    await s.add_items([msg(0), msg(1)])
    assert await s.pop_item() == msg(1)
    assert await s.update_metadata({"k": "v"}) == {"k": "v"}
    assert await s.get_items() == [msg(0)]
    page = await list_sessions(db, consistency_token=s.consistency_token)
    assert [info.session_id for info in page] == [sid]
    await s.clear_session()
    assert await s.get_items() == []


async def test_past_the_btree_limit_postgresql_itself_fails(db: SessionRouter) -> None:
    """Why there is a limit: an incompressible id past PostgreSQL's B-tree entry size (about
    2700 bytes) fails inside the database, after the statement was sent."""
    sql = statements(db.config.schema)
    sid = incompressible(3000, ASCII, seed=1)
    params = (sid, uuid.uuid4(), ['{"n":1}'], ["user"], [None], None, False)
    with pytest.raises(psycopg.errors.ProgramLimitExceeded):
        await db.execute_write("add_items", sid, sql.add_items, params, commits=True)


@pytest.mark.parametrize(
    "bad",
    [
        "a" * (MAX_SESSION_ID_BYTES + 1),
        "€" * 342,  # 342 characters, 1026 bytes
        "\U0001f300" * 257,  # 257 characters, 1028 bytes
        incompressible(3000, ASCII, seed=2),
    ],
    ids=["1025B", "342x3B", "257x4B", "3000B"],
)
async def test_a_too_long_id_is_refused_before_any_write(db: SessionRouter, bad: str) -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_SESSION_ID_BYTES} are allowed") as made:
        PostgresSession(bad, db)
    # an existing session cannot be pointed at it either: the same error, the id unchanged
    s = PostgresSession("input-ok", db)
    with pytest.raises(ValueError) as assigned:
        s.session_id = bad
    assert str(assigned.value) == str(made.value)
    assert s.session_id == "input-ok"
    await s.add_items([msg(0)])
    assert await s.get_items() == [msg(0)]
    page = await list_sessions(db, consistency_token=s.consistency_token)
    assert [info.session_id for info in page] == ["input-ok"]


@pytest.mark.parametrize("bad", ["", "a\x00b", "lone \ud800", None, 5, b"bytes"])
async def test_other_bad_ids_are_refused_the_same_way(db: SessionRouter, bad: Any) -> None:
    with pytest.raises(ValueError, match="session_id") as made:
        PostgresSession(bad, db)
    s = PostgresSession("input-other", db)
    with pytest.raises(ValueError) as assigned:
        s.session_id = bad
    assert str(assigned.value) == str(made.value)


# items ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [["role", "user"], "a string", 42, None, ("role", "user"), MappingProxyType({"a": 1})],
    ids=["list", "str", "int", "None", "tuple", "mappingproxy"],
)
async def test_an_item_that_is_not_a_json_object_is_refused(db: SessionRouter, bad: Any) -> None:
    s = PostgresSession(f"items-{uuid.uuid4().hex[:6]}", db)
    await s.add_items([msg(0)])
    kind = type(bad).__name__
    with pytest.raises(TypeError, match=f"item 2 is not a JSON object \\(a dict\\): got {kind}"):
        await s.add_items([msg(1), msg(2), bad, msg(3)])
    assert await s.get_items() == [msg(0)]
    fresh = PostgresSession(f"items-new-{uuid.uuid4().hex[:6]}", db)
    with pytest.raises(TypeError, match="item 0 is not a JSON object"):
        await fresh.add_items([bad])
    assert await fresh.get_metadata() is None  # the conversation was not created


@pytest.mark.parametrize("bad", [msg(0), "abc", b"abc", 7], ids=["dict", "str", "bytes", "int"])
async def test_items_must_be_a_list(db: SessionRouter, bad: Any) -> None:
    s = PostgresSession(f"items-list-{uuid.uuid4().hex[:6]}", db)
    with pytest.raises(TypeError, match="items must be a list of dicts"):
        await s.add_items(bad)
    assert await s.get_metadata() is None


async def test_compaction_refuses_non_objects_and_changes_nothing(db: SessionRouter) -> None:
    s = PostgresSession("items-compact", db)
    await s.add_items([msg(0), msg(1), msg(2)])
    snapshot = await s._get_compaction_snapshot(3)
    assert snapshot is not None
    with pytest.raises(TypeError, match="item 1 is not a JSON object"):
        await snapshot.replace_suffix(1, [msg(9), ["not", "an", "object"]])
    assert await s.get_items() == [msg(0), msg(1), msg(2)]
    assert await snapshot.replace_suffix(1, [msg(9)]) is True
    assert await s.get_items() == [msg(0), msg(9)]


# nesting depth and size ------------------------------------------------------------------------
def nested(depth: int) -> Any:
    """A JSON value ``depth`` containers deep (dicts and lists in turn)."""
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"level": i, "next": value}
    return value


def item_of_depth(depth: int) -> dict[str, Any]:
    """A user message item nested exactly ``depth`` deep (the item itself is one level)."""
    return {"role": "user", "content": "deep", "extra": nested(depth - 1)}


def test_depth_is_counted_in_containers() -> None:
    assert value_depth(item_of_depth(MAX_DEPTH)) == MAX_DEPTH
    assert text_depth(encode_item(item_of_depth(MAX_DEPTH))) == MAX_DEPTH
    assert text_depth('{"a": "[[[{{{", "b": [1, {"c": []}]}') == 4
    assert text_depth('"[\\"[" ') == 0
    assert text_depth("[" * 50_000 + "]" * 50_000) == 50_000


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 982, 10_000])
def test_items_past_the_depth_limit_are_refused_naming_depth_and_limit(depth: int) -> None:
    assert encode_item(item_of_depth(MAX_DEPTH))  # the limit itself is accepted
    with pytest.raises(ValueError, match=f"item 1 is nested {depth} levels deep; at most 128"):
        encode_items([msg(0), item_of_depth(depth)])


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10_000])
def test_metadata_and_usage_details_past_the_depth_limit_are_refused(depth: int) -> None:
    assert encode_metadata({"a": nested(MAX_DEPTH - 1)})
    with pytest.raises(ValueError, match=f"metadata is nested {depth} levels deep; at most 128"):
        encode_metadata({"a": nested(depth - 1)})
    deep = SimpleNamespace(cached_tokens=0, extra=nested(depth - 1))
    usage = Usage(requests=1, input_tokens=1, output_tokens=1, total_tokens=2)
    usage.input_tokens_details = deep  # type: ignore[assignment]
    result = run_result(1)
    result.context_wrapper.usage = usage
    with pytest.raises(ValueError, match=f"input_tokens_details is nested {depth} levels deep"):
        usage_params(result)


def test_an_item_past_the_size_limit_is_refused() -> None:
    at_limit = {"role": "user", "content": ""}
    at_limit["content"] = "x" * (MAX_ITEM_BYTES - len(encode_item(at_limit)))
    assert len(encode_item(at_limit)) == MAX_ITEM_BYTES
    at_limit["content"] += "é"  # 2 bytes of UTF-8, one character
    with pytest.raises(ValueError, match=f"item 0 is {MAX_ITEM_BYTES + 2} bytes of JSON"):
        encode_item(at_limit)


async def test_a_too_deep_item_or_metadata_is_refused_before_any_write(db: SessionRouter) -> None:
    s = PostgresSession(f"deep-{uuid.uuid4().hex[:6]}", db)
    await s.add_items([msg(0)])
    with pytest.raises(ValueError, match="item 1 is nested 982 levels deep"):
        await s.add_items([msg(1), item_of_depth(982)])
    with pytest.raises(ValueError, match="metadata is nested 10001 levels deep"):
        await s.update_metadata({"a": nested(10_000)})
    with pytest.raises(ValueError, match="metadata is nested 10001 levels deep"):
        PostgresSession("deep-meta", db, metadata={"a": nested(10_000)})
    assert await s.get_items() == [msg(0)]
    assert await s.get_metadata() == {}
    await s.add_items([item_of_depth(MAX_DEPTH)])
    assert await s.get_items() == [msg(0), item_of_depth(MAX_DEPTH)]
