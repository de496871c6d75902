"""Statement execution on one checked-out connection: one attempt, no routing decisions.

A write is one transaction and the consistency token in one round trip; a read on a
replica that may be behind checks the replay position in the same round trip; a read on
the primary with a token ahead of the last check learns the primary's position with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, cast

import psycopg
from psycopg import AsyncCursor, AsyncRawCursor, sql
from psycopg.abc import Params, Query, QueryNoTemplate
from psycopg.pq import TransactionStatus

from .classify import classify
from .lsn import format_lsn, parse_lsn
from .pools import watchdog
from .stacked import Stacked, split_rows, stacked_query

Rows = list[tuple[Any, ...]]
Conn = psycopg.AsyncConnection[Any]
#: a statement and its parameters, run before another in the same transaction (its rows are
#: discarded): e.g. transaction-local settings, ``SELECT set_config(..., true)``
Setup = tuple[Query, Params | None]
#: one setup, or several run in order (e.g. a shard's fence, then the tenant's settings)
Setups = Setup | list[Setup]

#: the write's transaction is committed with at least a local WAL flush, so that the flush
#: position taken after it covers the commit record
_SYNC_COMMIT_SQL = (
    "SELECT set_config('synchronous_commit', 'on', true) "
    "WHERE current_setting('synchronous_commit') = 'off'"
)
TOKEN_SQL = "SELECT pg_current_wal_flush_lsn()::text"
_REPLAY_LSN_SQL = "SELECT pg_last_wal_replay_lsn()::text"


async def _setup(conn: Conn, setup: Setups | None) -> None:
    if isinstance(setup, list):
        for one in setup:
            await conn.execute(cast(QueryNoTemplate, one[0]), one[1])
    elif setup is not None:
        await conn.execute(cast(QueryNoTemplate, setup[0]), setup[1])


async def _execute(
    conn: Conn, query: Query, params: Params | None, setup: Setups | None
) -> psycopg.AsyncCursor[Any]:
    """``query`` alone, or after ``setup`` in one pipeline: one implicit transaction up to
    the pipeline's Sync (not a transaction block, so a CALL in it may still COMMIT)."""
    if setup is None:
        return await conn.execute(cast(QueryNoTemplate, query), params)
    async with conn.pipeline():
        await _setup(conn, setup)
        return await conn.execute(cast(QueryNoTemplate, query), params)


async def write(
    conn: Conn,
    query: Query,
    params: Params | None,
    seconds: float,
    commits: bool,
    setup: Setups | None = None,
) -> tuple[Rows, str]:
    """Run one write in its own transaction and return (rows, token); the connection is cut
    if the server has not answered within ``seconds``.

    ``commits``: the statement is a ``CALL`` of a procedure that commits and returns the
    flush position as its last column; otherwise BEGIN, the statement, COMMIT and the token
    query go in one pipeline. ``setup`` runs first in the same transaction (in the same
    pipeline, so in the CALL's own transaction until it commits). Rolls back on any failure.
    """
    if not commits:  # a batch of one: the same pipeline
        rows, token = await write_batch(conn, [(query, params)], seconds, setup)
        return rows[0], token
    try:
        with watchdog(conn, seconds):
            cur = await _execute(conn, query, params, setup)
            return split_token(await cur.fetchone())
    except BaseException:
        await rollback_quietly(conn)
        raise


async def write_batch(
    conn: Conn,
    statements: list[tuple[Query, Params | None]],
    seconds: float,
    setup: Setups | None = None,
) -> tuple[list[Rows], str]:
    """Run several writes in ONE transaction and return (each one's rows, token): BEGIN,
    the synchronous_commit guard, ``setup``, the statements in order, COMMIT and the token
    query in one pipeline (one round trip, one commit). Consecutive writes of one
    :class:`~.stacked.Stacked` statement go as one statement over VALUES. All or nothing:
    any error rolls the whole transaction back; the connection is cut past ``seconds``."""
    try:
        with watchdog(conn, seconds):
            async with conn.pipeline():
                await conn.execute("BEGIN")
                await conn.execute(_SYNC_COMMIT_SQL)
                await _setup(conn, setup)
                curs = []
                for query, params, k in _runs(statements):
                    # a stacked statement numbers its parameters: see stacked.py
                    cur = AsyncRawCursor(conn) if k else conn.cursor()
                    await cur.execute(cast(QueryNoTemplate, query), params)
                    curs.append((cur, k))
                await conn.execute("COMMIT")
                token_cur = conn.cursor()
                await token_cur.execute(TOKEN_SQL)
            rows: list[Rows] = []
            for c, k in curs:
                got = await c.fetchall() if c.description is not None else []
                if k:
                    rows.extend(split_rows(got, k))
                else:
                    rows.append(got)
            token_row = await token_cur.fetchone()
    except BaseException:
        await rollback_quietly(conn)
        raise
    assert token_row is not None
    return rows, str(token_row[0])


def _runs(
    statements: list[tuple[Query, Params | None]],
) -> Iterator[tuple[Query, Params | None, int]]:
    """The statements to send: each as it is (k 0), or a run of two or more writes of one
    Stacked statement with positional parameters as one (k writes, parameters in turn)."""
    i, n = 0, len(statements)
    while i < n:
        query, params = statements[i]
        j = i + 1
        if isinstance(query, Stacked) and isinstance(params, list | tuple):
            while (
                j < n and statements[j][0] is query and isinstance(statements[j][1], list | tuple)
            ):
                j += 1
        if j - i >= 2:
            flat = [x for _, p in statements[i:j] for x in cast(Sequence[Any], p)]
            yield stacked_query(cast(Stacked, query), j - i), flat, j - i
        else:
            yield query, params, 0
        i = j


async def read(
    conn: Conn, query: Query, params: Params | None, setup: Setups | None = None
) -> Rows:
    """The query's rows; with ``setup``, both in one pipeline (one implicit transaction)."""
    cur = await _execute(conn, query, params, setup)
    return await cur.fetchall() if cur.description is not None else []


async def read_with_primary_lsn(
    conn: Conn, query: Query, params: Params | None, setup: Setups | None = None
) -> tuple[Rows, int | None]:
    """The query's rows and the server's WAL flush position, in one round trip (None when
    the server turned out to be a standby)."""
    async with conn.pipeline():
        check = await conn.execute(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL"
            " ELSE pg_current_wal_flush_lsn()::text END"
        )
        await _setup(conn, setup)
        cur = await conn.execute(cast(QueryNoTemplate, query), params)
    row = await check.fetchone()
    rows = await cur.fetchall() if cur.description is not None else []
    return rows, (parse_lsn(row[0]) if row is not None and row[0] is not None else None)


async def read_if_replayed(
    conn: Conn,
    lsn: int,
    query: Query,
    params: Params | None,
    setup: Setups | None = None,
    wait: ReplayWait | None = None,
) -> tuple[Rows | None, int | None]:
    """The query's rows if the replica had replayed ``lsn`` before it ran, else None; and
    the replay position seen before the query (None when unknown).

    The replay check and the query go in one pipeline (one round trip instead of two, both
    prepared). They share an implicit transaction, but under read committed (the pools pin
    it) each statement takes its own snapshot, so the query sees everything up to the
    position checked before it. A single statement could not: its snapshot would predate
    its own check. With ``wait`` (the schema's wait_replay and seconds) the check waits on
    the server for ``lsn`` first, so the query runs after the replica reached it.
    """
    try:
        async with conn.pipeline():
            check = await _replay_check(conn, lsn, wait)
            await _setup(conn, setup)
            cur = await conn.execute(cast(QueryNoTemplate, query), params)
        row = await check.fetchone()
        rows = await cur.fetchall() if cur.description is not None else []
    except psycopg.Error as exc:
        # the query runs even when the replica is behind: an error may only mean that what
        # it reads (a new table, say) is not replayed yet. The caller's slow path waits for
        # the position first and then raises whatever is really wrong.
        if conn.broken or isinstance(exc, psycopg.errors.QueryCanceled):
            raise
        if classify(exc, write=False) is not None:
            raise
        if wait is not None and lacks_replay_wait(exc):
            raise NoReplayWait(str(exc)) from exc
        return None, None
    seen = parse_lsn(row[0]) if row is not None and row[0] is not None else None
    return (rows if seen is not None and seen >= lsn else None), seen


async def read_group(
    conn: Conn,
    lsn: int | None,
    statements: list[tuple[Query, Params | None]],
    setup: Setups | None = None,
    wait: ReplayWait | None = None,
) -> tuple[list[Rows], int | None]:
    """Several reads in one pipeline (one round trip): the replay check first when ``lsn``
    is given, then ``setup``, then each statement; returns each one's rows and the replay
    position seen before them (None without a check).

    Under read committed each statement takes its own snapshot, after the check, so every
    read sees at least what the check saw replayed (as in :func:`read_if_replayed`). They
    share one implicit transaction (``setup`` covers all): one failing aborts the others,
    and the error is raised (the caller runs each read alone then). ``wait``: the check
    waits on the server for ``lsn`` first (see :func:`read_if_replayed`).
    """
    async with conn.pipeline():
        check = await _replay_check(conn, lsn, wait) if lsn is not None else None
        await _setup(conn, setup)
        curs = []
        for query, params in statements:
            cur = conn.cursor()
            await cur.execute(cast(QueryNoTemplate, query), params)
            curs.append(cur)
    row = await check.fetchone() if check is not None else None
    rows = [await c.fetchall() if c.description is not None else [] for c in curs]
    seen = parse_lsn(row[0]) if row is not None and row[0] is not None else None
    return rows, seen


class ReplayWait(NamedTuple):
    """A replay check that waits on the server: ``sql`` calls the schema's
    ``wait_replay(position, seconds)`` (migration 0015), for at most ``seconds`` per
    statement. A slice, not the whole catch_up_wait: the statement holds a snapshot while
    it waits, and on a replica without hot_standby_feedback a cleanup record that conflicts
    with it holds replay back until the statement ends."""

    sql: str
    seconds: float
    #: seconds it looks without sleeping first (pg_sleep sleeps 1 ms at least): for a read
    #: alone on an idle replica, where that 1 ms would be most of its wait
    spin: float = 0.0


class NoReplayWait(Exception):
    """The schema has no wait_replay (a version before migration 0015)."""


def lacks_replay_wait(exc: BaseException) -> bool:
    """Whether ``exc`` says the schema has no wait_replay function."""
    return isinstance(exc, psycopg.errors.UndefinedFunction) and "wait_replay" in str(exc)


def replay_wait_sql(schema: str) -> str:
    """The statement of a :class:`ReplayWait` for ``schema``."""
    return f"SELECT {sql.Identifier(schema).as_string(None)}.wait_replay(%s::pg_lsn, %s, %s)"


def may_wait_replay_sql(schema: str) -> str:
    """One row, one boolean: whether the connection's role may run ``schema``'s wait_replay
    (a catalog lookup: false on a schema older than migration 0015, or for a role not
    granted it)."""
    name = (
        f"{sql.Identifier(schema).as_string(None)}"
        ".wait_replay(pg_lsn, double precision, double precision)"
    )
    return (
        "SELECT coalesce(has_function_privilege(to_regprocedure("
        f"{sql.Literal(name).as_string(None)}), 'EXECUTE'), false)"
    )


async def _replay_check(conn: Conn, lsn: int, wait: ReplayWait | None) -> AsyncCursor[Any]:
    if wait is None:
        return await conn.execute(_REPLAY_LSN_SQL)
    return await conn.execute(
        cast(QueryNoTemplate, wait.sql), (format_lsn(lsn), wait.seconds, wait.spin)
    )


async def wait_replay(conn: Conn, lsn: int, seconds: float, wait: ReplayWait | None = None) -> bool:
    """Poll the replica until it has replayed ``lsn``, for at most ``seconds``: with
    ``wait``, by waits on the server of a slice each; without, every 2 ms from here."""
    give_up = time.monotonic() + seconds
    while True:
        if wait is None:
            cur = await conn.execute(_REPLAY_LSN_SQL)
        else:
            left = max(0.001, min(wait.seconds, give_up - time.monotonic()))
            cur = await conn.execute(cast(QueryNoTemplate, wait.sql), (format_lsn(lsn), left, 0.0))
        if _replayed(await cur.fetchone(), lsn):
            return True
        if time.monotonic() >= give_up:
            return False
        if wait is None:
            await asyncio.sleep(0.002)


def split_token(row: tuple[Any, ...] | None) -> tuple[Rows, str]:
    """A committing CALL's one row: (the other columns as the rows, the token last)."""
    token = str(row[-1]) if row else ""
    try:
        parse_lsn(token)
    except ValueError:
        raise psycopg.ProgrammingError(
            "a commits=True write must return one row ending with the WAL flush position "
            f"taken after its commit (pg_lsn text), got {row!r}"
        ) from None
    assert row is not None  # an empty token does not parse
    return [tuple(row[:-1])], token


def _replayed(row: tuple[Any, ...] | None, lsn: int) -> bool:
    """Whether a ``_REPLAY_LSN_SQL`` row shows ``lsn`` replayed (NULL: not a standby)."""
    return row is not None and row[0] is not None and parse_lsn(row[0]) >= lsn


async def rollback_quietly(conn: Conn) -> None:
    if conn.closed or conn.pgconn.transaction_status not in (
        TransactionStatus.INTRANS,
        TransactionStatus.INERROR,
    ):
        return
    try:
        with watchdog(conn, 2.0):
            await conn.execute("ROLLBACK")
    except psycopg.Error:
        pass
