"""pgsessions usage: reports by day, model and session, busiest and largest sessions, read on
a replica; EXPLAIN shows messages reached by its primary key only."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgsessions import PostgresSession, SessionRouter, migrate
from pgsessions.analytics import explain_report, parse_duration, parse_instant, usage_report
from pgsessions.devcluster import LocalCluster
from pgsessions.sessions.schema import quote_ident
from pgsessions.sessions.sql.session import statements
from tests.helpers import apoll

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_time_ranges_parse_or_name_the_problem() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration(" 2w ") == timedelta(weeks=2)
    assert parse_instant("7d", NOW) == NOW - timedelta(days=7)
    assert parse_instant("now", NOW) == NOW
    assert parse_instant("2026-11-01", NOW) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_instant("2026-11-01T10:00:00+02:00", NOW).utcoffset() == timedelta(hours=2)
    for bad in ("30", "d", "-3d", "yesterday", "30 days"):
        with pytest.raises(ValueError, match=repr(bad).replace("'", "'")[1:-1]):
            parse_instant(bad, NOW)
    for huge in ("99999999999999d", "5300w"):  # past a century: refused, not OverflowError
        with pytest.raises(ValueError, match=f"the duration '{huge}' in seconds must be"):
            parse_instant(huge, NOW)
        with pytest.raises(ValueError, match=f"the duration '{huge}'"):
            parse_duration(huge)


async def store_usage(
    router: SessionRouter, sid: str, model: str, requests: int, tokens: int
) -> None:
    sql = statements(router.config.schema).store_usage
    params = (sid, uuid.uuid4(), model, requests, tokens, 1, tokens + 1, None, None)
    await router.execute_write("store_run_usage", sid, sql, params)


@pytest.fixture
async def data(router: SessionRouter) -> SessionRouter:
    """40 sessions x 50 items; s-00..s-09 have usage rows: s-0k has k+1 turns on model m-(k%2),
    each turn 1 request and 100*(k+1) input tokens; the rows of s-00 are dated 3 days ago."""
    await migrate(router)
    for k in range(40):
        sid = f"s-{k:02d}"
        s = PostgresSession(sid, router)
        turns = k + 1 if k < 10 else 0
        for t in range(turns):  # each user item opens a turn; its usage row follows
            await s.add_items([{"role": "user", "content": f"{sid} turn {t}"}])
            await store_usage(router, sid, f"m-{k % 2}", 1, 100 * (k + 1))
        rest = [
            {"role": "assistant", "content": f"{sid} {i} " + "x" * k} for i in range(50 - k - turns)
        ]
        await s.add_items(rest)
    s = quote_ident(router.config.schema)
    async with router.primary_connection() as conn:
        await conn.execute(
            f"UPDATE {s}.usage_logs SET created_at = now() - interval '3 days'"
            " WHERE session_id = 's-00'"
        )
        await conn.execute(f"ANALYZE {s}.messages")
        await conn.execute(f"ANALYZE {s}.usage_logs")
        await conn.execute(f"ANALYZE {s}.conversations")
    return router


@pytest.mark.owner_sql
async def test_reports_add_up_and_run_on_a_replica(data: SessionRouter) -> None:
    now = datetime.now(UTC)
    since, until = now - timedelta(days=7), now + timedelta(minutes=1)
    report: Any = None

    async def on_replica() -> bool:
        nonlocal report
        report = await usage_report(data, since=since, until=until, top=3)
        return set(report.served_by.values()) == {"replica"}

    assert await apoll(on_replica, within=15), report.served_by
    r = report.reports
    turns = sum(k + 1 for k in range(10))
    assert sum(d["turns"] for d in r["by_day"]) == turns
    assert len(r["by_day"]) == 2  # today, and three days ago (s-00)
    assert r["by_day"][0]["turns"] == 1 and r["by_day"][0]["sessions"] == 1
    by_model = {m["model"]: m for m in r["by_model"]}
    assert by_model["m-1"]["input_tokens"] == sum((k + 1) * 100 * (k + 1) for k in range(1, 10, 2))
    assert by_model["m-0"]["requests"] + by_model["m-1"]["requests"] == turns
    assert [x["session_id"] for x in r["by_session"]] == ["s-09", "s-08", "s-07"]
    assert r["by_session"][0]["total_tokens"] == 10 * 1001
    assert [(x["session_id"], x["turns"], x["items_added"]) for x in r["busiest"]] == [
        ("s-09", 10, 41),
        ("s-08", 9, 42),
        ("s-07", 8, 43),
    ]
    assert [(x["session_id"], x["items"]) for x in r["largest"]] == [
        ("s-00", 50),
        ("s-01", 49),
        ("s-02", 48),
    ]
    assert r["largest"][0]["item_bytes"] > 50 * 20

    # a range that holds only the row from three days ago
    old = await usage_report(
        data, since=now - timedelta(days=4), until=now - timedelta(days=2), reports=["by_day"]
    )
    assert [d["turns"] for d in old.reports["by_day"]] == [1]
    with pytest.raises(ValueError, match="empty"):
        await usage_report(data, since=now, until=now)


@pytest.mark.owner_sql
async def test_per_session_reports_never_scan_messages(data: SessionRouter) -> None:
    now = datetime.now(UTC)
    for name in ("busiest", "largest", "by_session", "by_day", "by_model"):
        plan = await explain_report(
            data, name, since=now - timedelta(days=7), until=now + timedelta(minutes=1)
        )
        assert "Seq Scan on messages" not in plan, plan
        if name in ("busiest", "largest"):
            assert "Index Scan on messages_pkey" in plan, plan  # (bitmap) index scans only


@pytest.mark.owner_sql
async def test_usage_command_prints_tables_and_json(
    data: SessionRouter, cluster: LocalCluster
) -> None:
    import asyncio

    base = [sys.executable, "-m", "pgsessions", "usage", "--hosts", *cluster.dsns(),
            "--schema", data.config.schema, "--top", "2"]  # fmt: skip
    run = await asyncio.to_thread(
        subprocess.run, [*base, "--json"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert [x["session_id"] for x in out["reports"]["by_session"]] == ["s-09", "s-08"]
    run = await asyncio.to_thread(
        subprocess.run, [*base, "--report", "by_model"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "by model" in run.stdout and "m-0" in run.stdout and "by day" not in run.stdout
    run = await asyncio.to_thread(
        subprocess.run, [*base, "--since", "yesterday"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "not a time: 'yesterday'" in run.stderr


async def test_largest_reads_conversations_by_the_active_at_index(data: SessionRouter) -> None:
    # migration 0007 indexes active_at (updated_at to the minute) instead of updated_at
    now = datetime.now(UTC)
    since, until = now - timedelta(days=7), now + timedelta(minutes=1)
    plan = await explain_report(data, "largest", since=since, until=until)
    assert "active_at" in plan, plan
    report = await usage_report(data, since=since, until=until, top=2, reports=["largest"])
    assert [x["session_id"] for x in report.reports["largest"]] == ["s-00", "s-01"]


@pytest.mark.owner_sql
async def test_a_narrow_range_reads_usage_logs_by_its_created_at_index(
    data: SessionRouter,
) -> None:
    s = quote_ident(data.config.schema)
    async with data.primary_connection() as conn:  # 20000 turns spread over 200 days
        await conn.execute(
            f"INSERT INTO {s}.usage_logs (session_id, user_turn_number, model, requests,"
            " input_tokens, output_tokens, total_tokens, created_at)"
            " SELECT 's-' || lpad((g % 40)::text, 2, '0'), 1000 + g, 'm-x', 1, 10, 10, 20,"
            " now() - (g % 200) * interval '1 day' - interval '1 hour'"
            " FROM generate_series(1, 20000) AS g"
        )
        await conn.execute(f"ANALYZE {s}.usage_logs")
    now = datetime.now(UTC)
    for name in ("by_day", "by_model", "by_session", "busiest"):
        plan = await explain_report(data, name, since=now - timedelta(days=1), until=now)
        assert "usage_logs_created_idx" in plan, plan
        assert "Seq Scan" not in plan, plan
