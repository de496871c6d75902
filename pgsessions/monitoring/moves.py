"""The move gauges of a ShardedRouter: bucket moves in progress, their phase and replication
lag, and the leftover slots, publications and subscriptions of moves, per shard.

A :class:`MoveWatch` reads them from each shard's primary in a periodic check that runs on
the router's own event loop (asynchronous queries: the loop is never blocked) and keeps the
last answer; a scrape only reads that answer (no query) and asks for a new check when it is
older than ``interval``. A shard that cannot be reached within ``timeout`` reports
``pgsessions_move_check_up 0`` and no move gauges; the scrape goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from psycopg import sql

from ..router.loops import running_loop
from .metrics import SPECS

if TYPE_CHECKING:
    from ..router.session_router import SessionRouter
    from ..router.sharded import ShardedRouter

log = logging.getLogger(__name__)

#: the phases a move in progress records (shard_moves, migration 0013)
ACTIVE_PHASES = ("copying", "fenced", "flipped")
#: the kinds of replication objects a move creates (named pgs_move_<id>)
KINDS = ("slot", "publication", "subscription")

_HAS_TABLE = "SELECT to_regclass(%s) IS NOT NULL"
_OBJECTS = (
    "SELECT 'slot', slot_name::text,"
    " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint"
    " FROM pg_replication_slots WHERE slot_name LIKE 'pgs\\_move\\_%'"
    " UNION ALL SELECT 'publication', pubname::text, NULL::bigint FROM pg_publication"
    " WHERE pubname LIKE 'pgs\\_move\\_%'"
    " UNION ALL SELECT 'subscription', subname::text, NULL::bigint FROM pg_subscription"
    " WHERE subname LIKE 'pgs\\_move\\_%'"
)


def _moves_sql(schema: str) -> sql.Composed:
    return sql.SQL(
        "SELECT m.id, m.target, m.phase,"
        " extract(epoch FROM clock_timestamp() - m.updated_at)::float8,"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint"
        " FROM {}.shard_moves m LEFT JOIN pg_replication_slots s"
        " ON s.slot_name = 'pgs_move_' || m.id"
        " WHERE m.phase NOT IN ('done', 'aborted')"
    ).format(sql.Identifier(schema))


@dataclass(frozen=True)
class _Move:
    id: str
    target: str
    phase: str
    phase_seconds: float
    lag_bytes: int | None


@dataclass
class _ShardState:
    """What one shard answered at the last check (None fields: it did not answer)."""

    up: bool
    moves: list[_Move] = field(default_factory=list)
    #: (kind, name, retained WAL bytes or None)
    objects: list[tuple[str, str, int | None]] = field(default_factory=list)


def router_loop(router: ShardedRouter) -> asyncio.AbstractEventLoop | None:
    """The event loop the router's shards are served on (None when it is not open)."""
    thread = router._thread
    if thread is not None:
        return thread.loop
    for r in router.shards.values():
        if r._loop is not None:
            return r._loop
    return None


async def _query(r: SessionRouter, schema: str) -> _ShardState:
    if running_loop() is not r._loop:
        h = await r._away(lambda x: x._primary_for_write())
    else:
        h = await r._primary_for_write()
    assert h.pool is not None
    async with h.pool.admin_connection() as conn:
        moves: list[_Move] = []
        table = f"{sql.Identifier(schema).as_string(None)}.shard_moves"
        cur = await conn.execute(_HAS_TABLE, (table,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            cur = await conn.execute(_moves_sql(schema))
            for i, target, phase, seconds, lag in await cur.fetchall():
                moves.append(
                    _Move(
                        str(i),
                        str(target),
                        str(phase),
                        max(float(seconds), 0.0),
                        None if lag is None else max(int(lag), 0),
                    )
                )
        cur = await conn.execute(_OBJECTS)
        objects = [
            (str(k), str(n), None if w is None else int(w)) for k, n, w in await cur.fetchall()
        ]
    return _ShardState(True, moves, objects)


class MoveWatch:
    """The periodic check of a ShardedRouter's moves and the gauges it feeds.

    :func:`~pgsessions.monitoring.instrument` makes one for a ShardedRouter; ``await
    check()`` runs a check at once (the scrapes ask for one every ``interval`` seconds).
    """

    def __init__(
        self, router: ShardedRouter, *, interval: float = 10.0, timeout: float = 3.0
    ) -> None:
        self._router = weakref.ref(router)
        #: seconds a check's answer serves scrapes before a new check is asked for
        self.interval = interval
        #: seconds one shard's check may take before it counts as down
        self.timeout = timeout
        self._state: dict[str, _ShardState] = {}
        self._checked_at: float | None = None
        self._pending: concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()

    @property
    def router(self) -> ShardedRouter | None:
        return self._router()

    async def _shard(self, r: SessionRouter, schema: str) -> _ShardState:
        try:
            return await asyncio.wait_for(_query(r, schema), self.timeout)
        except Exception:  # a shard down (or no primary): reported, never raised
            log.debug("pgsessions: move check of %r failed", r.config.name, exc_info=True)
            return _ShardState(False)

    async def check(self) -> None:
        """Read every shard's moves and move objects now (each shard within ``timeout``)."""
        router = self._router()
        if router is None or router.closed:
            return
        names = list(router.shards)
        got = await asyncio.gather(
            *(self._shard(router.shards[n], router.config.schema) for n in names)
        )
        state = dict(zip(names, got, strict=True))
        with self._lock:
            self._state = state
            self._checked_at = time.monotonic()

    def request(self) -> None:
        """Ask for a check on the router's loop when the last one is older than ``interval``
        (from a scrape: returns at once, the answer serves the following scrapes)."""
        router = self._router()
        if router is None or router.closed:
            return
        with self._lock:
            fresh = (
                self._checked_at is not None and time.monotonic() - self._checked_at < self.interval
            )
            if fresh or (self._pending is not None and not self._pending.done()):
                return
            loop = router_loop(router)
            if loop is None or loop.is_closed():
                return
            try:
                self._pending = asyncio.run_coroutine_threadsafe(self.check(), loop)
            except RuntimeError:  # the loop stopped meanwhile
                log.debug("pgsessions: cannot schedule a move check", exc_info=True)

    def families(self) -> list[Metric]:
        """The move gauges from the last check (none before the first)."""
        router = self._router()
        if router is None:
            return []
        with self._lock:
            state = dict(self._state)
        names = ("router", "shard")

        def gauge(metric: str) -> GaugeMetricFamily:
            spec = SPECS[metric]
            return GaugeMetricFamily(metric, spec.help, labels=(*names, *spec.labels))

        in_progress = gauge("pgsessions_moves_in_progress")
        phase_s = gauge("pgsessions_move_phase_seconds")
        lag = gauge("pgsessions_move_lag_bytes")
        left = gauge("pgsessions_move_leftovers")
        retained = gauge("pgsessions_move_leftover_retained_bytes")
        up = gauge("pgsessions_move_check_up")
        live = {f"pgs_move_{m.id}" for s in state.values() for m in s.moves}
        for shard, r in router.shards.items():
            s = state.get(shard)
            if s is None:
                continue
            base = (r.config.name, shard)
            up.add_metric(base, 1.0 if s.up else 0.0)
            if not s.up:
                continue
            counts: dict[tuple[str, str], int] = {
                (t, p): 0 for t in router.shards if t != shard for p in ACTIVE_PHASES
            }
            for m in s.moves:
                counts[(m.target, m.phase)] = counts.get((m.target, m.phase), 0) + 1
                phase_s.add_metric((*base, m.target, m.phase), m.phase_seconds)
                if m.lag_bytes is not None:
                    lag.add_metric((*base, m.target), float(m.lag_bytes))
            for (t, p), n in sorted(counts.items()):
                in_progress.add_metric((*base, t, p), float(n))
            kinds = dict.fromkeys(KINDS, 0)
            wal = 0
            for kind, name, retained_bytes in s.objects:
                if name in live:
                    continue
                kinds[kind] = kinds.get(kind, 0) + 1
                if kind == "slot" and retained_bytes is not None:
                    wal += max(retained_bytes, 0)
            for kind, n in kinds.items():
                left.add_metric((*base, kind), float(n))
            retained.add_metric(base, float(wal))
        return [in_progress, phase_s, lag, left, retained, up]
