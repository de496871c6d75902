"""WAL bytes per ``add_items``: pgsessions against one hand-written statement.

The floor statement upserts the conversation row (its next sequence number and update
time) and inserts the batch's messages, in one statement, autocommit: the least a store
must write to keep per-session order. Both append the same turns (a user message and a
~1 KB assistant message) to a few conversations, one call at a time; the primary's
``pg_current_wal_insert_lsn()`` before and after gives the bytes. WAL volume is
deterministic (what a noisy machine changes is time, not bytes), except for page splits and
full-page images after a checkpoint: rounds alternate, and the median is reported.

:func:`wal_by_record` breaks a stretch of WAL down by record type with ``pg_waldump
--stats=record`` (the bench's own cluster: the server's data directory readable here).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .contenders import BenchEnv, _admin
from .payloads import Payloads

FLOOR_DDL = [
    "CREATE SCHEMA IF NOT EXISTS {s}",
    "CREATE TABLE {s}.conversations (session_id text PRIMARY KEY,"
    " updated_at timestamptz NOT NULL DEFAULT now(), next_seq bigint NOT NULL DEFAULT 1)",
    "CREATE TABLE {s}.messages (session_id text NOT NULL, seq bigint NOT NULL,"
    " item json NOT NULL, PRIMARY KEY (session_id, seq))",
]
FLOOR_APPEND = (
    "WITH c AS (INSERT INTO {s}.conversations AS c (session_id, next_seq)"
    " VALUES (%(sid)s, 1 + json_array_length(%(items)s::json))"
    " ON CONFLICT (session_id) DO UPDATE"
    " SET next_seq = c.next_seq + json_array_length(%(items)s::json), updated_at = now()"
    " RETURNING c.next_seq - json_array_length(%(items)s::json) AS first)"
    " INSERT INTO {s}.messages (session_id, seq, item)"
    " SELECT %(sid)s, c.first + u.n - 1, u.x"
    " FROM c, json_array_elements(%(items)s::json) WITH ORDINALITY AS u(x, n)"
)


async def _insert_lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def measure_wal(
    env: BenchEnv,
    pgsessions: Callable[[str], Any],
    *,
    adds: int = 400,
    rounds: int = 5,
    sessions: int = 8,
) -> dict[str, Any]:
    """WAL bytes per add for ``pgsessions`` (a session factory) and the floor statement."""
    schema = sql.Identifier(f"{env.prefix}_walfloor")
    await _admin(env.primary_dsn, [sql.SQL(q).format(s=schema) for q in FLOOR_DDL])
    append = sql.SQL(FLOOR_APPEND).format(s=schema)
    pl = Payloads()
    per_round: list[dict[str, float]] = []
    try:
        async with await psycopg.AsyncConnection.connect(env.primary_dsn, autocommit=True) as conn:

            async def floor_add(sid: str, items: list[Any]) -> None:
                text = json.dumps(items, separators=(",", ":"))
                await conn.execute(append, {"sid": sid, "items": text})

            def pgs_adder() -> Callable[[str, list[Any]], Any]:
                made: dict[str, Any] = {}

                def add(sid: str, items: list[Any]) -> Any:
                    if sid not in made:
                        made[sid] = pgsessions(sid)
                    return made[sid].add_items(items)

                return add

            for r in range(rounds):
                result: dict[str, float] = {}
                order = ["pgsessions", "floor"] if r % 2 == 0 else ["floor", "pgsessions"]
                for name in order:
                    add = floor_add if name == "floor" else pgs_adder()
                    sids = [
                        f"{env.prefix}-wal-{name}-{uuid.uuid4().hex[:8]}" for _ in range(sessions)
                    ]
                    for sid in sids:  # create the conversations: not measured
                        await add(sid, pl.turn(sid, 0))
                    start = await _insert_lsn(conn)
                    for k in range(adds):
                        sid = sids[k % sessions]
                        await add(sid, pl.turn(sid, 1 + k // sessions))
                    result[name] = (await _insert_lsn(conn) - start) / adds
                per_round.append(result)
    finally:
        await _admin(env.primary_dsn, [sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema)])
    ratios = [r["pgsessions"] / r["floor"] for r in per_round if r["floor"] > 0]
    return {
        "adds_per_round": adds,
        "sessions": sessions,
        "pgsessions_bytes_per_add": round(statistics.median(r["pgsessions"] for r in per_round), 1),
        "floor_bytes_per_add": round(statistics.median(r["floor"] for r in per_round), 1),
        "ratio": round(statistics.median(ratios), 3) if ratios else None,
        "rounds": [{k: round(v, 1) for k, v in r.items()} for r in per_round],
    }


def lsn_text(position: int) -> str:
    """A WAL position in bytes as pg_lsn text (``X/Y``)."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def parse_waldump_stats(text: str, ops: int, min_bytes: float = 1.0) -> dict[str, dict[str, float]]:
    """``pg_waldump --stats=record`` output as {record type: {records, bytes}} per operation
    (records and combined bytes, full-page images included), types under ``min_bytes`` per
    operation left out."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        # "Heap/INSERT   1800 ( 24.56)   1526000 ( 70.10)   0 (  0.00)   1526000 ( 68.40)"
        parts = line.replace("(", " ").replace(")", " ").split()
        if len(parts) < 9 or "/" not in parts[0] or not parts[1].isdigit():
            continue
        records, combined = int(parts[1]), int(parts[7])
        if ops and combined / ops >= min_bytes:
            out[parts[0]] = {
                "records": round(records / ops, 3),
                "bytes": round(combined / ops, 1),
            }
    return out


async def wal_by_record(
    conn: psycopg.AsyncConnection[Any], start: int, end: int, ops: int
) -> dict[str, dict[str, float]] | None:
    """The WAL between positions ``start`` and ``end`` (bytes) per operation by record
    type, read by pg_waldump from the server's pg_wal; None when that cannot be read here
    (a remote server, no pg_waldump, WAL already recycled)."""
    from pgsessions.devcluster.binaries import find_bindir

    if ops <= 0 or end <= start:
        return None
    try:
        cur = await conn.execute("SHOW data_directory")
        row = await cur.fetchone()
        waldump = find_bindir() / "pg_waldump"
    except Exception:  # no privilege to read the setting, or no server binaries here
        return None
    wal_dir = Path(str(row[0]) if row else "") / "pg_wal"
    if not wal_dir.is_dir() or not waldump.exists():
        return None
    argv = [str(waldump), "--stats=record", "-p", str(wal_dir)]
    argv += ["-s", lsn_text(start), "-e", lsn_text(end)]
    try:
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # the statistics are printed even when the stretch ends in a record still being written
    return parse_waldump_stats(done.stdout, ops) or None
