"""pgsessions export/import: exact JSON Lines round trips, idempotent imports, conflicts,
truncated files, and imports from the Agents SDK's SQLiteSession and SQLAlchemySession."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.devcluster import LocalCluster
from pgsessions.export import export_lines, import_records, read_export
from pgsessions.export.records import (
    ConversationRecord,
    ExportFormatError,
    ItemRecord,
    UsageRecord,
    raw_fields,
)
from pgsessions.export.sdk_sources import SourceStats, sqlalchemy_records, sqlite_records
from pgsessions.sessions.limits import MAX_DEPTH
from pgsessions.sessions.schema import quote_ident
from pgsessions.sessions.sql.session import statements

ODD_ITEMS: list[Any] = [
    {"role": "user", "content": "nul \x00 inside, é, 🎉, \u2028 line sep"},
    {"z": 1, "a": 2, "m": [3, {"y": None, "b": True}]},  # key order
    {"type": "message", "role": "assistant", "big": 2**80, "neg": -(2**70), "f": 0.1},
    {"role": "user", "content": "SELECT 1; -- '\"\\"},
]


@pytest.fixture
async def db(router: SessionRouter) -> SessionRouter:
    await migrate(router)
    return router


async def everything(router: SessionRouter, **kwargs: Any) -> list[str]:
    return [line async for line in export_lines(router, **kwargs)]


async def store_usage(router: SessionRouter, sid: str, model: str, tokens: int) -> None:
    sql = statements(router.config.schema).store_usage
    details = '{"cached_tokens": 7, "big": 123456789012345678901234567890}'
    params = (sid, uuid.uuid4(), model, 2, tokens, tokens + 1, 2 * tokens + 1, details, None)
    await router.execute_write("store_run_usage", sid, sql, params)


async def fill(router: SessionRouter) -> dict[str, list[Any]]:
    stored: dict[str, list[Any]] = {}
    for i in range(3):
        sid = f"conv-{i}"
        s = PostgresSession(sid, router, metadata={"tenant": "acme" if i < 2 else "other"})
        items = [*ODD_ITEMS, {"role": "user", "content": f"turn of {sid}"}]
        await s.add_items(items)
        await store_usage(router, sid, "gpt-test", 10 * (i + 1))
        stored[sid] = items
    return stored


@pytest.mark.owner_sql
async def test_export_import_round_trip_is_exact_and_idempotent(db: SessionRouter) -> None:
    stored = await fill(db)
    # a number Python floats cannot carry: written as raw text, it must survive unchanged
    s = quote_ident(db.config.schema)
    async with db.primary_connection() as conn:
        await conn.execute(
            f"UPDATE {s}.messages SET item = %s::json WHERE session_id = 'conv-0' AND seq = 2",
            ('{"z" : 1.00000000000000000000001, "a":1e999, "dup":1, "dup":2}',),
        )
    first = await everything(db)
    assert json.loads(first[0])["format"] == "pgsessions-export"
    kinds = [json.loads(line)["kind"] for line in first[1:]]
    assert kinds.count("conversation") == 3 and kinds.count("usage") == 3
    assert kinds.count("item") == sum(len(v) for v in stored.values())
    raw_item = next(raw_fields(x)["item"] for x in first if '"seq" : 2' in x and "conv-0" in x)
    assert raw_item == '{"z" : 1.00000000000000000000001, "a":1e999, "dup":1, "dup":2}'
    before = {sid: await PostgresSession(sid, db).get_items() for sid in stored}
    usage_before = await PostgresSession("conv-1", db).get_turn_usage()

    for sid in stored:
        await PostgresSession(sid, db).clear_session()
    assert len(await everything(db)) == 1  # the header only

    summary = await import_records(db, read_export(first))
    assert (summary.imported, summary.unchanged, summary.errors) == (3, 0, [])
    assert summary.items == len(kinds) - 6 and summary.usage_rows == 3
    again = await everything(db)
    assert again[1:] == first[1:]  # byte for byte, times and seqs included
    for sid, items in before.items():
        assert await PostgresSession(sid, db).get_items() == items
    assert await PostgresSession("conv-1", db).get_turn_usage() == usage_before
    assert (await PostgresSession("conv-2", db).get_items())[0]["content"] == ODD_ITEMS[0][
        "content"
    ]

    # twice: nothing changes
    second = await import_records(db, read_export(first))
    assert (second.imported, second.unchanged, second.items, second.ok) == (0, 3, 0, True)
    assert (await everything(db))[1:] == first[1:]

    # the imported sessions work as usual afterwards
    s0 = PostgresSession("conv-0", db)
    await s0.add_items([{"role": "user", "content": "after import"}])
    assert (await s0.get_items(limit=1))[0]["content"] == "after import"


async def test_conflicts_are_left_alone_unless_replace(db: SessionRouter) -> None:
    await fill(db)
    exported = await everything(db, session_ids_=["conv-1"])
    s1 = PostgresSession("conv-1", db)
    await s1.add_items([{"role": "user", "content": "written after the export"}])
    changed = await s1.get_items()

    summary = await import_records(db, read_export(exported))
    assert summary.conflicts == ["conv-1"] and summary.imported == 0 and not summary.ok
    assert await s1.get_items() == changed

    summary = await import_records(db, read_export(exported), replace=True)
    assert summary.replaced == 1 and summary.ok
    assert await s1.get_items() == changed[:-1]
    assert (await everything(db, session_ids_=["conv-1"]))[1:] == exported[1:]


async def test_metadata_filter_and_single_session(db: SessionRouter) -> None:
    await fill(db)
    acme = [json.loads(x) for x in await everything(db, metadata={"tenant": "acme"})]
    assert [x["session_id"] for x in acme if x["kind"] == "conversation"] == ["conv-0", "conv-1"]
    one = [json.loads(x) for x in await everything(db, session_ids_=["conv-2", "nope"])]
    assert [x["session_id"] for x in one if x["kind"] == "conversation"] == ["conv-2"]


async def test_truncated_or_bad_files_import_nothing_of_the_broken_conversation(
    db: SessionRouter,
) -> None:
    await fill(db)
    lines = await everything(db)
    for sid in ("conv-0", "conv-1", "conv-2"):
        await PostgresSession(sid, db).clear_session()
    cut = lines[:-2]  # conv-2 loses its last item and its usage row
    with pytest.raises(ExportFormatError, match=r"conv-2.*truncated"):
        await import_records(db, read_export(cut))
    assert await PostgresSession("conv-2", db).get_items() == []
    assert len(await PostgresSession("conv-1", db).get_items()) == len(ODD_ITEMS) + 1
    with pytest.raises(ExportFormatError, match=r"line 1: .*header"):
        list(read_export(lines[1:]))
    with pytest.raises(ExportFormatError, match="line 2: not a JSON object"):
        list(read_export([lines[0], '{"kind": "item", oops']))
    # an item the database refuses (NaN is not JSON) fails its conversation only
    bad = [x.replace('"item" : {"role":"user"', '"item" : {"x":NaN,"role":"user"') for x in lines]
    assert bad != lines
    summary = await import_records(db, read_export(bad))
    assert len(summary.errors) == 1 and "conv-2" in summary.errors[0]
    assert summary.conflicts == ["conv-0", "conv-1"]  # they differ now: left alone
    assert await PostgresSession("conv-2", db).get_items() == []


def sdk_items(tag: str) -> list[Any]:
    return [
        {"role": "user", "content": f"hello {tag} é 🎉 \x00 nul"},
        {"type": "message", "role": "assistant", "n": 2**70, "order": {"z": 1, "a": 2}},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]


def make_sqlite_file(path: Path) -> dict[str, list[Any]]:
    import asyncio

    from agents import SQLiteSession

    written: dict[str, list[Any]] = {}

    async def write() -> None:
        for sid in ("alpha", "beta"):
            s = SQLiteSession(sid, path)
            await s.add_items(sdk_items(sid))
            await s.add_items([{"role": "user", "content": f"second turn {sid}"}])
            written[sid] = await s.get_items()
            s.close()

    asyncio.run(write())
    return written


def test_sqlite_source_reads_the_sdk_tables(tmp_path: Path) -> None:
    written = make_sqlite_file(tmp_path / "sdk.db")
    stats = SourceStats()
    records = list(sqlite_records(tmp_path / "sdk.db", stats=stats))
    assert [r.session_id for r in records] == ["alpha", "beta"]
    assert [json.loads(it.item) for it in records[0].items] == written["alpha"]
    assert [it.role for it in records[0].items] == ["user", "assistant", None, "user"]
    assert records[0].checked().user_turns == 2 and stats.skipped_rows == 0
    with pytest.raises(FileNotFoundError):
        list(sqlite_records(tmp_path / "missing.db"))


@pytest.mark.owner_sql
async def test_import_from_sqlite_command_round_trips(
    db: SessionRouter, cluster: LocalCluster, tmp_path: Path
) -> None:
    import asyncio

    written = await asyncio.to_thread(make_sqlite_file, tmp_path / "sdk.db")
    argv = [
        sys.executable, "-m", "pgsessions", "import", "--from-sqlite", str(tmp_path / "sdk.db"),
        "--hosts", *cluster.dsns(), "--schema", db.config.schema, "--json",
    ]  # fmt: skip
    run = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["imported"], report["items_written"]) == (2, 8)
    for sid, items in written.items():
        assert await PostgresSession(sid, db).get_items() == items
    run = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["imported"], report["unchanged"], report["items_written"]) == (0, 2, 0)

    # and the command-line export of what was imported reads back through the SDK's eyes
    out = tmp_path / "export.jsonl"
    argv = [
        sys.executable, "-m", "pgsessions", "export", "--hosts", *cluster.dsns(),
        "--schema", db.config.schema, "-o", str(out), "--json",
    ]  # fmt: skip
    run = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["items"] == 8
    lines = out.read_text(encoding="utf-8").splitlines()
    exported = {r.session_id: [json.loads(i.item) for i in r.items] for r in read_export(lines)}
    assert exported == written


async def test_import_from_sqlalchemy_session_tables(
    db: SessionRouter, cluster: LocalCluster
) -> None:
    from agents.extensions.memory import SQLAlchemySession

    tag = uuid.uuid4().hex[:8]
    url = cluster.primary.dsn.replace("postgresql://", "postgresql+asyncpg://")
    tables = {"sessions_table": f"sa_sessions_{tag}", "messages_table": f"sa_messages_{tag}"}
    written: dict[str, list[Any]] = {}
    try:
        for sid in ("one", "two"):
            s = SQLAlchemySession.from_url(sid, url=url, create_tables=True, **tables)
            items = [i for i in sdk_items(sid) if "\x00" not in json.dumps(i)] + [
                {"role": "user", "content": f"{sid} \x00"}
            ]
            try:
                await s.add_items(items)
                written[sid] = await s.get_items()
            finally:
                await s.engine.dispose()
        assert written["one"][-1]["content"] == "one \x00"
        summary = await import_records(db, sqlalchemy_records(url, **tables))
        assert (summary.imported, summary.errors) == (2, [])
        for sid, items in written.items():
            assert await PostgresSession(sid, db).get_items() == items
        again = await import_records(db, sqlalchemy_records(url, **tables))
        assert (again.unchanged, again.items) == (2, 0)
    finally:
        for t in tables.values():
            cluster.primary.execute(f'DROP TABLE IF EXISTS "{t}" CASCADE')


async def test_a_source_url_password_never_reaches_the_output(
    db: SessionRouter, cluster: LocalCluster
) -> None:
    import asyncio

    argv = [
        sys.executable, "-m", "pgsessions", "import", "--from-sqlalchemy",
        "postgresql+asyncpg://someone:s3cret-pw@127.0.0.1:1/nowhere",
        "--hosts", *cluster.dsns(), "--schema", db.config.schema,
    ]  # fmt: skip
    run = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "pgsessions import" in run.stderr
    assert "s3cret-pw" not in run.stdout + run.stderr


@pytest.mark.owner_sql
async def test_tenants_travel_with_their_conversations(db: SessionRouter) -> None:
    s = quote_ident(db.config.schema)
    await fill(db)
    async with db.primary_connection() as conn:
        for table in ("conversations", "messages", "usage_logs"):
            await conn.execute(
                f"UPDATE {s}.{table} SET tenant = 'acme' WHERE session_id = 'conv-0'"
            )
    first = await everything(db)
    tenants = {x["session_id"]: x["tenant"] for x in map(json.loads, first[1:]) if "tenant" in x}
    assert tenants == {"conv-0": "acme", "conv-1": "", "conv-2": ""}
    for sid in tenants:
        await PostgresSession(sid, db).clear_session()
    summary = await import_records(db, read_export(first))
    assert summary.imported == 3 and summary.ok
    assert (await everything(db))[1:] == first[1:]
    async with db.primary_connection() as conn:
        for table in ("conversations", "messages", "usage_logs"):
            cur = await conn.execute(
                f"SELECT DISTINCT session_id, tenant FROM {s}.{table} ORDER BY 1"
            )
            assert [tuple(r) for r in await cur.fetchall()] == [
                ("conv-0", "acme"),
                ("conv-1", ""),
                ("conv-2", ""),
            ], table


def deep_value(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_an_import_line_nested_too_deep_is_refused_before_parsing() -> None:
    header = '{"kind": "header", "format": "pgsessions-export", "version": 1}'
    line = '{"kind": "item", "session_id": "s", "item": ' + "[" * 10_000 + "]" * 10_000 + "}"
    with pytest.raises(ExportFormatError, match="line 2: the line is nested 10001 levels deep"):
        list(read_export([header, line]))


@pytest.mark.owner_sql
async def test_records_past_the_limits_are_refused_and_import_nothing(db: SessionRouter) -> None:
    ok = ConversationRecord("limits-ok", items=[ItemRecord(1, json.dumps(deep_value(MAX_DEPTH)))])
    deep_item = ConversationRecord(
        "limits-item", items=[ItemRecord(1, json.dumps(deep_value(MAX_DEPTH + 1)))]
    )
    deep_meta = ConversationRecord("limits-meta", metadata=json.dumps({"a": deep_value(500)}))
    deep_usage = ConversationRecord(
        "limits-usage",
        usage=[UsageRecord(1, None, 1, 1, 1, 2, input_tokens_details=json.dumps(deep_value(200)))],
    )
    summary = await import_records(db, [ok, deep_item, deep_meta, deep_usage])
    assert summary.imported == 1
    assert [e.split(":")[0] for e in summary.errors] == [
        "'limits-item'",
        "'limits-meta'",
        "'limits-usage'",
    ]
    assert "nested 129 levels deep; at most 128" in summary.errors[0]
    assert "nested 501 levels deep" in summary.errors[1]
    assert "input_tokens_details is nested 200 levels deep" in summary.errors[2]
    assert await PostgresSession("limits-ok", db).get_items() == [deep_value(MAX_DEPTH)]
    for sid in ("limits-item", "limits-meta", "limits-usage"):
        assert await PostgresSession(sid, db).get_metadata() is None


def test_a_too_deep_sdk_item_makes_its_conversation_an_error(tmp_path: Path) -> None:
    import asyncio

    from agents import SQLiteSession

    async def write() -> None:
        s = SQLiteSession("deep", tmp_path / "sdk.db")
        await s.add_items([{"role": "user", "content": "hi", "x": deep_value(300)}])  # type: ignore[list-item]
        s.close()

    asyncio.run(write())
    (rec,) = sqlite_records(tmp_path / "sdk.db")
    assert rec.error is not None and "item 0 is nested 301 levels deep" in rec.error
