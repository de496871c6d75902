"""Health checks: one probe per host per check, lag arithmetic and hysteresis.

Each check asks every host one query over a connection kept for the monitor: whether it is in
recovery, the primary's WAL flush position and clock, and for a standby its replay and receive
positions, last replay timestamp and walreceiver status (which only a role in pg_monitor may
see: without it the replica is never eligible and says why). The checks of all hosts run
concurrently, each bounded by ``check_timeout`` (a host that does not answer is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from .archiver import ARCHIVER_COLUMN, ArchiverStats, parse_archiver
from .classify import short_error
from .config import RouterConfig
from .connect import RouterConnection, configure, connect_kwargs, prepared_statement_failure
from .lsn import parse_lsn
from .pools import abort_connection, watchdog

PROBE_SQL = (
    """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
       pg_last_wal_replay_lsn()::text,
       pg_last_wal_receive_lsn()::text,
       extract(epoch FROM pg_last_xact_replay_timestamp())::float8,
       extract(epoch FROM clock_timestamp())::float8,
       (SELECT coalesce(status, CASE WHEN pid IS NOT NULL THEN 'hidden' END)
          FROM pg_stat_wal_receiver LIMIT 1),
       """
    + ARCHIVER_COLUMN
    + "\n"
)
PROBE_COLUMNS = 8

# What a standby's walreceiver status reads as when the role may not see it: PostgreSQL shows
# such a role the walreceiver's pid but not its status (pg_read_all_stats, e.g. pg_monitor).
HIDDEN_STATUS = "hidden"
NEEDS_PG_MONITOR = "walreceiver status hidden: the router's role needs pg_monitor"


@dataclass(frozen=True)
class Probe:
    """What one host answered to one check."""

    up: bool
    in_recovery: bool | None = None
    flush_lsn: int | None = None
    replay_lsn: int | None = None
    receive_lsn: int | None = None
    replay_ts: float | None = None
    server_now: float | None = None
    wal_status: str | None = None
    error: str | None = None
    started: float = 0.0  # monotonic time the probe began
    #: a primary's WAL archiving (None: a standby, or archive_mode off)
    archiver: ArchiverStats | None = None


def _lsn(text: object) -> int | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"an LSN as text, got {type(text).__name__}")
    return parse_lsn(text)


def _epoch(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"a number, got {type(value).__name__}")
    return float(value)


class UnexpectedReply(ValueError):
    """A probe's reply does not have the shape PROBE_SQL gives (e.g. a pooler ran another
    client's prepared statement in its place)."""


def parse_probe_row(row: object, started: float) -> Probe:
    """The :class:`Probe` of one reply to PROBE_SQL; raise UnexpectedReply for anything else."""
    if not isinstance(row, tuple) or len(row) != PROBE_COLUMNS:
        size = len(row) if isinstance(row, tuple) else type(row).__name__
        raise UnexpectedReply(
            f"unexpected reply to the health check ({size} columns, not {PROBE_COLUMNS})"
        )
    in_recovery, flush, replay, receive, replay_ts, now, status, archiver = row
    try:
        if not isinstance(in_recovery, bool):
            raise ValueError(f"pg_is_in_recovery() gave {type(in_recovery).__name__}")
        if status is not None and not isinstance(status, str):
            raise ValueError(f"walreceiver status gave {type(status).__name__}")
        probe = Probe(
            up=True,
            in_recovery=in_recovery,
            flush_lsn=_lsn(flush),
            replay_lsn=_lsn(replay),
            receive_lsn=_lsn(receive),
            replay_ts=_epoch(replay_ts),
            server_now=_epoch(now),
            wal_status=status,
            started=started,
            archiver=parse_archiver(archiver),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UnexpectedReply(f"unexpected reply to the health check: {exc}") from None
    if not in_recovery and probe.flush_lsn is None:
        raise UnexpectedReply("unexpected reply to the health check: a primary without a position")
    if probe.server_now is None:
        raise UnexpectedReply("unexpected reply to the health check: no server clock")
    return probe


class Prober:
    """Keeps one autocommit connection per host for health checks.

    :meth:`probe` never raises (except on cancellation): whatever goes wrong with one host,
    including a reply of the wrong shape, makes that host down for that check only.
    """

    def __init__(self, dsn: str, config: RouterConfig) -> None:
        self.dsn = dsn
        self.config = config
        self._conn: psycopg.AsyncConnection[Any] | None = None
        #: set by abort(): a connection made after it is closed at once, never kept
        self.aborted = False

    async def probe(self) -> Probe:
        started = time.monotonic()
        budget = self.config.check_timeout
        try:
            conn = self._conn
            if conn is None or conn.closed:
                self._conn = None
                # a silent host must not hold the whole check: connecting is bounded by
                # check_timeout too (cancelling a connection attempt is clean)
                async with asyncio.timeout(min(self.config.connect_timeout, budget)):
                    kwargs = connect_kwargs(self.dsn, self.config)
                    kwargs["connect_timeout"] = max(2, round(self.config.connect_timeout))
                    conn = await RouterConnection.connect(self.dsn, **kwargs)
                    if self.aborted:  # the router closed while this connection was made
                        await conn.close()
                        return Probe(up=False, error="router closed", started=started)
                    self._conn = conn
                    await configure(conn, self.config, self.dsn)
            with watchdog(conn, budget):
                cur = await conn.execute(PROBE_SQL)
                row = await cur.fetchone()
            return parse_probe_row(row, started)
        except Exception as exc:
            # one host's failure, whatever it is, is that host's down check, never the round's
            await self.reset()
            return Probe(up=False, error=_describe(exc), started=started)

    async def fetch_one(self, query: str) -> tuple[Any, ...] | None:
        """One row of ``query`` on the kept probe connection, bounded by ``check_timeout``;
        None when there is no connection (the host was down at the last check)."""
        conn = self._conn
        if conn is None or conn.closed:
            return None
        with watchdog(conn, self.config.check_timeout):
            cur = await conn.execute(query)
            return await cur.fetchone()

    async def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            abort_connection(conn)
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    def abort(self) -> None:
        """Cut the connection at once (close() of the router)."""
        self.aborted = True
        if self._conn is not None:
            abort_connection(self._conn)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timeout)"
    if isinstance(exc, UnexpectedReply):
        return str(exc)
    failure = prepared_statement_failure(exc)
    if failure is not None:
        return f"prepared statements lost by a pooler ({failure}): set prepared_statements=off"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # libpq messages name host and port, never the password; keep them short
    return f"{short_error(exc)}: {text[:160]}" if text else short_error(exc)
