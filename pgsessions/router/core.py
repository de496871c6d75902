"""SessionRouter: where each statement runs.

Writes go to the primary's pool (one autocommit transaction and the consistency token in one
round trip, retried after classified failures until ``failover_timeout``). Reads go to a
replica the monitor has seen at or past the session's token, else wait briefly for one to
catch up, else go to the primary. One monitor task per router checks every host each
``check_interval``, finds the primary, measures lag and publishes an immutable topology.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import psycopg
from psycopg.abc import Params, Query, QueryNoTemplate
from psycopg.pq import TransactionStatus
from tenacity import RetryCallState

from .choice import least_in_flight
from .classify import classify, is_connection_loss, short_error
from .config import RouterConfig
from .dsn import host_label
from .errors import (
    NoEligibleReplicaError,
    NoPrimaryError,
    RouterClosedError,
    SplitBrainError,
)
from .events import RouterObserver
from .failover import describe_hosts, resolve_primary
from .lsn import format_lsn, parse_lsn
from .monitor import Health, Probe, Prober, assess
from .pools import HostPool, watchdog
from .retry import backoff, write_retrying
from .topology import HostState, Role, Topology

log = logging.getLogger(__name__)

Rows = list[tuple[Any, ...]]

#: the write's transaction is committed with at least a local WAL flush, so that the flush
#: position taken after it covers the commit record
_SYNC_COMMIT_SQL = (
    "SELECT set_config('synchronous_commit', 'on', true) "
    "WHERE current_setting('synchronous_commit') = 'off'"
)
_TOKEN_SQL = "SELECT pg_current_wal_flush_lsn()::text"
_REPLAY_LSN_SQL = "SELECT pg_last_wal_replay_lsn()::text"


class _NoPrimaryYet(Exception):
    """No writable host right now (retried until failover_timeout)."""


class _NotCaughtUp(Exception):
    """The replica did not reach the token within catch_up_wait."""


class _Host:
    """The router's live record of one host (mutated by the monitor only)."""

    def __init__(self, dsn: str, config: RouterConfig) -> None:
        self.dsn = dsn
        self.label = host_label(dsn)
        self.prober = Prober(dsn, config)
        self.pool: HostPool | None = None
        self.role: Role = "unknown"
        self.probe: Probe | None = None
        self.health = Health()
        self.down_checks = 0
        #: monotonic time of the last failure seen on a request; 0 when none pending
        self.suspect_at = 0.0
        self.reads = 0

    @property
    def in_flight(self) -> int:
        return self.pool.in_flight if self.pool is not None else 0

    @property
    def up(self) -> bool:
        return self.probe is not None and self.probe.up

    @property
    def usable(self) -> bool:
        return self.pool is not None and self.up and not self.suspect_at

    @property
    def replay_lsn(self) -> int:
        p = self.probe
        return p.replay_lsn if p is not None and p.replay_lsn is not None else -1


@dataclass(frozen=True)
class _Plan:
    host: _Host | None
    reason: str
    wait_lsn: int | None = None


class SessionRouter:
    """Sends writes to the primary's pool and history reads to caught-up replicas.

    Use as ``async with SessionRouter(config) as router:``. Statements come from sessions/
    through :meth:`execute_write` and :meth:`execute_read`; the router knows hosts and roles,
    never the schema.
    """

    def __init__(self, config: RouterConfig | str | Sequence[str]) -> None:
        if not isinstance(config, RouterConfig):
            config = RouterConfig(hosts=list(config) if not isinstance(config, str) else config)
        self.config = config
        self._hosts: dict[str, _Host] = {}
        for dsn in config.host_list:
            h = _Host(dsn, config)
            if h.label in self._hosts:
                raise ValueError(f"RouterConfig.hosts names {h.label} twice")
            self._hosts[h.label] = h
        self._primary: str | None = None
        self._split: tuple[str, ...] = ()
        self._primary_lsn: int | None = None
        self._primary_probe: Probe | None = None
        self._history: deque[tuple[float, int]] = deque(maxlen=10_000)
        self._primary_lost_at: float | None = None
        self._had_primary: str | None = None
        self._topology = Topology(hosts=tuple(HostState(host=lbl) for lbl in self._hosts))
        self._tokens: OrderedDict[str, int] = OrderedDict()
        #: every read needs at least this position (raised by admin work, e.g. migrations)
        self._floor_lsn = 0
        self._observers: list[RouterObserver] = []
        self._open = False
        self._stopping = False
        self._monitor_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_started = 0.0
        self._wake: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._counts: Counter[tuple[str, ...]] = Counter()

    def __repr__(self) -> str:
        return f"SessionRouter(name={self.config.name!r}, primary={self._primary!r})"

    # lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Check every host once (roles, lag), open the pools and start the monitor.

        Raises :class:`NoPrimaryError` when no host answers at all; a cluster without a
        primary opens (reads work, writes wait for one).
        """
        if self._open:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        await self._refresh()
        if not any(h.up for h in self._hosts.values()):
            states = self._host_states()
            await self._shutdown()
            raise NoPrimaryError("no host answered", states)
        self._open = True
        self._monitor_task = asyncio.create_task(
            self._monitor(), name=f"pgsessions-monitor-{self.config.name}"
        )

    async def close(self) -> None:
        """Stop the monitor and close every pool; returns promptly with requests in flight.

        Requests still running finish on their connection; new ones raise
        :class:`RouterClosedError`.
        """
        self._open = False
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._wake is not None:
            self._wake.set()
        for h in self._hosts.values():
            h.prober.abort()
        tasks = [t for t in (self._monitor_task, self._refresh_task) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._monitor_task = self._refresh_task = None
        pools = [h.pool for h in self._hosts.values() if h.pool is not None]
        for h in self._hosts.values():
            h.pool = None
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)
        await asyncio.gather(*(h.prober.reset() for h in self._hosts.values()))
        if self._background:
            await asyncio.wait(self._background, timeout=2.0)

    async def __aenter__(self) -> SessionRouter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return not self._open

    # observation ------------------------------------------------------------------------
    def topology(self) -> Topology:
        """The monitor's latest snapshot (no I/O)."""
        return self._topology

    def add_observer(self, observer: RouterObserver) -> None:
        self._observers.append(observer)

    def remove_observer(self, observer: RouterObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def _emit(self, hook: str, *args: Any) -> None:
        for obs in list(self._observers):
            try:
                getattr(obs, hook)(*args)
            except Exception:  # an observer must never break a request
                log.debug("observer %r failed in %s", obs, hook, exc_info=True)

    def stats(self) -> dict[str, Any]:
        """Plain counters of what this router did (for tests, status and monitoring).

        ``reads`` is ``{role: {reason: n}}``; ``retries`` is ``{"read"|"write": {reason: n}}``.
        """
        reads: dict[str, dict[str, int]] = {}
        retries: dict[str, dict[str, int]] = {}
        for key, n in self._counts.items():
            if key[0] == "read":
                reads.setdefault(key[1], {})[key[2]] = n
            elif key[0] == "retry":
                retries.setdefault(key[1], {})[key[2]] = n
        return {
            "reads": reads,
            "reads_total": sum(sum(v.values()) for v in reads.values()),
            "reads_on_replicas": sum(reads.get("replica", {}).values()),
            "writes": self._counts[("write",)],
            "read_errors": self._counts[("read_error",)],
            "write_errors": self._counts[("write_error",)],
            "retries": retries,
            "failovers": self._counts[("failover",)],
            "split_brain_refusals": self._counts[("split_brain",)],
            "connections_lost": self._counts[("connection_lost",)],
            "in_flight": {h.label: h.in_flight for h in self._hosts.values()},
            "reads_by_host": {h.label: h.reads for h in self._hosts.values()},
        }

    def pool_stats(self) -> dict[str, dict[str, int]]:
        """``host:port`` -> psycopg_pool ``get_stats()`` for each host with an open pool."""
        return {h.label: h.pool.stats() for h in self._hosts.values() if h.pool is not None}

    # consistency tokens ----------------------------------------------------------------
    def token_for(self, session_id: str) -> str | None:
        """The newest token this router holds for ``session_id``."""
        lsn = self._tokens.get(session_id)
        return None if lsn is None else format_lsn(lsn)

    def remember_token(self, session_id: str, token: str | None) -> None:
        """Keep ``token`` for ``session_id`` if it is newer than what is known (bounded LRU)."""
        if token is None:
            return
        lsn = parse_lsn(token)
        old = self._tokens.get(session_id)
        if old is None or lsn > old:
            self._tokens[session_id] = lsn
        self._tokens.move_to_end(session_id)
        while len(self._tokens) > self.config.token_cache_size:
            self._tokens.popitem(last=False)

    def forget_token(self, session_id: str) -> None:
        self._tokens.pop(session_id, None)

    # monitor ---------------------------------------------------------------------------
    async def _monitor(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            try:
                await self._refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pgsessions monitor check failed")
            if self._stopping:
                break
            try:
                async with asyncio.timeout(self.config.check_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def _poke(self) -> None:
        """Ask the monitor for a check now (after a request saw a host fail)."""
        if self._wake is not None:
            self._wake.set()

    async def _refresh(self, after: float | None = None) -> None:
        """Check every host once, sharing a check under way (single flight).

        With ``after``, only a check that started at or after that moment will do.
        """
        while not self._stopping:
            task = self._refresh_task
            if task is not None and not task.done():
                started = self._refresh_started
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
                if after is None or started >= after:
                    return
                continue
            self._refresh_started = time.monotonic()
            task = asyncio.create_task(self._check_all())
            self._refresh_task = task
            await asyncio.shield(task)
            return

    async def _check_all(self) -> None:
        try:
            await self._check_all_hosts()
        except Exception:
            log.exception("pgsessions: health check failed")

    async def _check_all_hosts(self) -> None:
        hosts = list(self._hosts.values())
        probes = await asyncio.gather(*(h.prober.probe() for h in hosts))
        if self._stopping:
            return
        now = time.monotonic()
        by_label = {h.label: p for h, p in zip(hosts, probes, strict=True)}
        old = self._primary
        primary, split = resolve_primary(by_label, old)
        if split and not self._split:
            log.error("pgsessions: split brain, writable hosts %s: refusing writes", split)
        self._split = split
        if primary is not None and not split:
            pp = by_label[primary]
            self._primary_probe = pp
            if pp.flush_lsn is not None:
                self._primary_lsn = pp.flush_lsn
                self._history.append((pp.started, pp.flush_lsn))
                horizon = now - max(60.0, 4 * self.config.max_lag_seconds)
                while self._history and self._history[0][0] < horizon:
                    self._history.popleft()
        elif primary is None:
            self._primary_probe = None
        self._note_primary_change(old, primary, now)
        self._primary = primary
        for h, p in zip(hosts, probes, strict=True):
            await self._apply_probe(h, p)
        self._publish()

    def _note_primary_change(self, old: str | None, new: str | None, now: float) -> None:
        if old is not None and new != old and self._primary_lost_at is None:
            self._primary_lost_at = now
        if new is None or new == old:
            return
        lost_at, self._primary_lost_at = self._primary_lost_at, None
        previous, self._had_primary = self._had_primary, new
        if previous is None or previous == new:
            return  # first primary, or the same server came back
        seconds = now - lost_at if lost_at is not None else 0.0
        self._counts[("failover",)] += 1
        log.warning("pgsessions: new primary %s (was %s) after %.2fs", new, previous, seconds)
        self._emit("on_failover", seconds)

    async def _apply_probe(self, h: _Host, p: Probe) -> None:
        h.probe = p
        if p.up:
            h.role = "replica" if p.in_recovery else "primary"
            h.down_checks = 0
            if h.suspect_at and p.started >= h.suspect_at:
                h.suspect_at = 0.0
        else:
            h.down_checks += 1
        if h.role == "replica":
            primary_probe = self._primary_probe if not self._split else None
            assess(h.health, p, primary_probe, self._primary_lsn, self._history, self.config)
        else:
            # a host seen as primary, down or unknown goes through hysteresis when it
            # becomes a replica (e.g. an old primary rejoining)
            h.health.eligible = False
            h.health.ever_unhealthy = True
            h.health.healthy_since = None
            h.health.lag_bytes = h.health.lag_seconds = None
            h.health.reason = None if p.up else (p.error or "down")
        if self._stopping:
            return
        if p.up:
            if h.pool is None:
                h.pool = HostPool(h.dsn, h.label, h.role, self.config)
                await h.pool.open(wait=False)
            else:
                await h.pool.set_role(h.role)
        elif h.pool is not None and h.down_checks >= 2:
            pool, h.pool = h.pool, None
            task = asyncio.create_task(pool.close())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _publish(self) -> None:
        checked_at = time.time()
        states = []
        for h in self._hosts.values():
            p = h.probe
            pool_stats = h.pool.stats() if h.pool is not None else {}
            states.append(
                HostState(
                    host=h.label,
                    role=h.role,
                    up=h.up,
                    eligible=h.health.eligible,
                    banned=bool(h.suspect_at),
                    lag_bytes=h.health.lag_bytes,
                    lag_seconds=h.health.lag_seconds,
                    replay_lsn=p.replay_lsn if p is not None else None,
                    receive_lsn=p.receive_lsn if p is not None else None,
                    streaming=(
                        (p.wal_status == "streaming")
                        if p is not None and p.up and h.role == "replica"
                        else None
                    ),
                    in_flight=h.in_flight,
                    pool_size=pool_stats.get("pool_size", 0),
                    pool_available=pool_stats.get("pool_available", 0),
                    pool_waiting=pool_stats.get("requests_waiting", 0),
                    error=h.health.reason if h.role == "replica" else (p.error if p else None),
                    checked_at=checked_at,
                )
            )
        self._topology = Topology(
            hosts=tuple(states),
            primary=self._primary,
            primary_lsn=self._primary_lsn,
            checked_at=checked_at,
            split_brain=self._split,
        )

    def _host_states(self) -> dict[str, str]:
        return describe_hosts({h.label: h.probe for h in self._hosts.values()})

    def _require_open(self) -> None:
        if not self._open:
            raise RouterClosedError("the router is not open: use `async with SessionRouter(...)`")

    def _mark_failed(self, h: _Host, exc: BaseException) -> None:
        h.suspect_at = time.monotonic()
        if h.label == self._primary and self._primary_lost_at is None:
            self._primary_lost_at = h.suspect_at
        if is_connection_loss(exc):
            self._counts[("connection_lost",)] += 1
            self._emit("on_connection_lost", h.label, h.role)
        self._poke()

    def _on_pool_wait(self, h: _Host) -> Any:
        return lambda seconds: self._emit("on_pool_wait", h.label, h.role, seconds)

    def _deadline_for_statement(self) -> float:
        # a little past the server's statement_timeout, whose own error should come first
        st = self.config.statement_timeout
        return st + min(1.0, max(0.2, 0.1 * st))

    # writes ----------------------------------------------------------------------------
    async def execute_write(
        self,
        operation: str,
        session_id: str,
        query: Query,
        params: Params | None = None,
        *,
        commits: bool = False,
    ) -> tuple[Rows, str]:
        """Run one idempotent statement on the primary, then take the consistency token.

        The statement runs in its own transaction (at least a local WAL flush at commit) and
        ``pg_current_wal_flush_lsn()`` is read after the commit, all in one pipeline (one
        round trip). With ``commits=True`` the statement is a ``CALL`` of a procedure that
        does this itself (commits, then returns the flush position as its last output
        parameter): it is sent alone, and the rows returned leave that column out. After a
        classified failure (connection lost, shutdown, the primary turned standby, ...) the
        whole statement is retried with backoff on whatever host is then the primary, until
        ``failover_timeout``; it must therefore be safe to apply twice (sessions/ makes it
        so with operation ids). Returns the statement's rows and the token, which is also
        remembered for the session.

        Raises :class:`SplitBrainError` (nothing written), :class:`NoPrimaryError` (no
        primary within ``failover_timeout``) or the original psycopg error (data,
        constraint and programming errors are never retried).
        """
        self._require_open()
        t0 = time.monotonic()
        deadline = t0 + self.config.failover_timeout
        self._emit("on_route", operation, "primary", "write")
        try:
            rows, token = await self._write_with_retries(
                operation, query, params, deadline, commits
            )
        except BaseException as exc:
            self._counts[("write_error",)] += 1
            seconds = time.monotonic() - t0
            self._emit("on_operation", operation, "primary", seconds, short_error(exc))
            raise
        self._counts[("write",)] += 1
        self.remember_token(session_id, token)
        self._emit("on_operation", operation, "primary", time.monotonic() - t0, None)
        return rows, token

    def _write_retryable(self, exc: BaseException) -> bool:
        if not self._open:
            return False
        return isinstance(exc, _NoPrimaryYet) or classify(exc, write=True) is not None

    def _count_write_retry(self, operation: str, exc: BaseException | None) -> None:
        reason = "no_primary" if isinstance(exc, _NoPrimaryYet) else None
        reason = reason or (classify(exc, write=True) if exc is not None else None) or "other"
        self._counts[("retry", "write", reason)] += 1
        self._emit("on_retry", operation, reason)

    def _raise_write_failure(self, exc: _NoPrimaryYet | psycopg.Error) -> NoReturn:
        """Raise what a write that ended with ``exc`` (and will not be retried) raises."""
        if not self._open:
            raise RouterClosedError("the router was closed during the write") from exc
        if not self._write_retryable(exc):
            raise exc
        raise NoPrimaryError(
            f"no writable primary within failover_timeout={self.config.failover_timeout}s",
            self._host_states(),
        ) from (None if isinstance(exc, _NoPrimaryYet) else exc)

    async def _write_with_retries(
        self, operation: str, query: Query, params: Params | None, deadline: float, commits: bool
    ) -> tuple[Rows, str]:
        # the first attempt runs outside tenacity: setting up its retry state costs about as
        # much CPU as the write itself, and almost every write succeeds at once
        try:
            return await self._attempt_write(query, params, deadline, commits)
        except (_NoPrimaryYet, psycopg.Error) as exc:
            if not self._write_retryable(exc):
                self._raise_write_failure(exc)
            self._count_write_retry(operation, exc)
        await asyncio.sleep(max(0.0, min(backoff(1), deadline - time.monotonic())))

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            self._count_write_retry(operation, exc)

        left = max(0.0, deadline - time.monotonic())
        retrying = write_retrying(left, self._write_retryable, before_sleep)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt_write(query, params, deadline, commits)
        except (_NoPrimaryYet, psycopg.Error) as exc:
            self._raise_write_failure(exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt_write(
        self, query: Query, params: Params | None, deadline: float, commits: bool
    ) -> tuple[Rows, str]:
        self._require_open()
        host = await self._primary_for_write()
        try:
            return await self._write_once(host, query, params, deadline, commits)
        except Exception as exc:
            if classify(exc, write=True) is not None:
                self._mark_failed(host, exc)
            raise

    async def _primary_for_write(self) -> _Host:
        for fresh_check in (False, True):
            if self._split:
                self._counts[("split_brain",)] += 1
                self._emit("on_split_brain")
                raise SplitBrainError(list(self._split))
            h = self._hosts.get(self._primary) if self._primary else None
            if h is not None and h.usable:
                return h
            if not fresh_check:
                await self._refresh(after=h.suspect_at if h is not None else None)
        raise _NoPrimaryYet()

    async def _write_once(
        self, h: _Host, query: Query, params: Params | None, deadline: float, commits: bool
    ) -> tuple[Rows, str]:
        assert h.pool is not None
        wait = min(self.config.pool_timeout, max(0.05, deadline - time.monotonic()))
        async with h.pool.connection(
            wait=wait, as_primary=True, on_wait=self._on_pool_wait(h)
        ) as conn:
            try:
                with watchdog(conn, self._deadline_for_statement()):
                    if commits:
                        cur = await conn.execute(cast(QueryNoTemplate, query), params)
                        return _split_token(await cur.fetchone())
                    async with conn.pipeline():
                        await conn.execute("BEGIN")
                        await conn.execute(_SYNC_COMMIT_SQL)
                        cur = conn.cursor()
                        await cur.execute(cast(QueryNoTemplate, query), params)
                        await conn.execute("COMMIT")
                        token_cur = conn.cursor()
                        await token_cur.execute(_TOKEN_SQL)
                    rows = await cur.fetchall() if cur.description is not None else []
                    token_row = await token_cur.fetchone()
            except BaseException:
                await _rollback_quietly(conn)
                raise
        assert token_row is not None
        return rows, str(token_row[0])

    # reads -----------------------------------------------------------------------------
    async def execute_read(
        self,
        operation: str,
        session_id: str | None,
        query: Query,
        params: Params | None = None,
        *,
        token: str | None = None,
    ) -> Rows:
        """Run one read-only statement where it may run for a session at ``token``.

        The session's required position is the newest of ``token`` and the token this
        router remembers for ``session_id``. A replica serves the read if the monitor has
        seen it replay that far; otherwise the read waits up to ``catch_up_wait`` for the
        most advanced replica, then goes to the primary. Without any token the read needs a
        replica that has replayed the primary position of the monitor's last check (bounded
        staleness). On a lost connection or a recovery conflict the read is retried at once
        elsewhere.
        """
        self._require_open()
        required = self._required_lsn(session_id, token)
        t0 = time.monotonic()
        deadline = t0 + self.config.failover_timeout
        excluded: set[str] = set()
        allow_wait = True
        idle_rounds = 0
        role = "unknown"
        try:
            while True:
                self._require_open()
                plan = self._plan_read(required, excluded, allow_wait)
                if plan.host is None:
                    if plan.reason == "no_eligible_replica" and (
                        self.config.no_replica_policy == "error"
                    ):
                        raise NoEligibleReplicaError(
                            "no replica is eligible and no_replica_policy='error'",
                            self._host_states(),
                        )
                    if time.monotonic() >= deadline and plan.reason == "no_eligible_replica":
                        raise NoEligibleReplicaError(
                            "no replica became eligible within "
                            f"failover_timeout={self.config.failover_timeout}s",
                            self._host_states(),
                        )
                    if time.monotonic() >= deadline:
                        raise NoPrimaryError(
                            "no host could serve the read within "
                            f"failover_timeout={self.config.failover_timeout}s",
                            self._host_states(),
                        )
                    idle_rounds += 1
                    await asyncio.sleep(backoff(idle_rounds))
                    await self._refresh()
                    excluded.clear()
                    allow_wait = True
                    continue
                h = plan.host
                role = h.role
                try:
                    rows = await self._read_once(plan, query, params, deadline)
                except _NotCaughtUp:
                    allow_wait = False
                    continue
                except Exception as exc:
                    why = classify(exc, write=False)
                    if not self._open:
                        raise RouterClosedError("the router was closed during the read") from exc
                    if why is None:
                        raise
                    self._mark_failed(h, exc)
                    excluded.add(h.label)
                    self._counts[("retry", "read", why)] += 1
                    self._emit("on_retry", operation, why)
                    if time.monotonic() >= deadline:
                        raise
                    continue
                h.reads += 1
                self._counts[("read", role, plan.reason)] += 1
                self._emit("on_route", operation, role, plan.reason)
                self._emit("on_operation", operation, role, time.monotonic() - t0, None)
                return rows
        except BaseException as exc:
            self._counts[("read_error",)] += 1
            self._emit("on_operation", operation, role, time.monotonic() - t0, short_error(exc))
            raise

    def _required_lsn(self, session_id: str | None, token: str | None) -> int | None:
        lsns = [parse_lsn(token)] if token else []
        if session_id is not None and session_id in self._tokens:
            lsns.append(self._tokens[session_id])
        return max(lsns) if lsns else None

    def _plan_read(self, token: int | None, excluded: set[str], allow_wait: bool) -> _Plan:
        primary = self._hosts.get(self._primary) if self._primary else None
        if primary is not None and (not primary.usable or primary.label in excluded):
            primary = None
        if not self.config.read_from_replicas:
            return _Plan(primary, "primary_only")
        if self._primary is not None:
            candidates = [
                h
                for h in self._hosts.values()
                if h.health.eligible and h.usable and h.label not in excluded
            ]
            served = "replica"
        else:
            # no primary (failover under way): any answering standby may serve what it has
            candidates = [
                h
                for h in self._hosts.values()
                if h.role == "replica" and h.usable and h.label not in excluded
            ]
            served = "no_primary"
        if self.config.unsafe_skip_token_check:
            required = None
        else:
            base = token if token is not None else self._primary_lsn
            required = max(base or 0, self._floor_lsn) or None
        fresh = [h for h in candidates if required is None or h.replay_lsn >= required]
        if fresh:
            return _Plan(least_in_flight(fresh, _in_flight), served)
        if candidates and allow_wait and self.config.catch_up_wait > 0:
            # the most advanced replicas; usually all of them were level at the last check,
            # and read-your-writes traffic must not all queue on the first one
            top = max(h.replay_lsn for h in candidates)
            best = least_in_flight([h for h in candidates if h.replay_lsn == top], _in_flight)
            return _Plan(best, "caught_up_wait", wait_lsn=required)
        if candidates:
            return _Plan(primary, "token_ahead")
        if self.config.no_replica_policy != "primary":
            return _Plan(None, "no_eligible_replica")  # "wait" or "error": not the primary
        return _Plan(primary, "no_eligible_replica")

    async def _read_once(
        self, plan: _Plan, query: Query, params: Params | None, deadline: float
    ) -> Rows:
        h = plan.host
        assert h is not None and h.pool is not None
        # the whole attempt (checkout included) gets one statement deadline on a replica:
        # past it, another host is a better bet than this one's queue
        budget = self._deadline_for_statement() + self.config.catch_up_wait
        start = time.monotonic()
        wait = min(self.config.pool_timeout, max(0.05, deadline - start))
        if h.role == "replica":
            wait = min(wait, budget)
        async with h.pool.connection(
            wait=wait, as_primary=h.role == "primary", on_wait=self._on_pool_wait(h)
        ) as conn:
            left = budget - (time.monotonic() - start) if h.role == "replica" else budget
            with watchdog(conn, max(0.1, left)):
                if plan.wait_lsn is not None:
                    rows = await _read_if_replayed(conn, plan.wait_lsn, query, params)
                    if rows is not None:
                        return rows
                    if not await self._wait_replay(conn, plan.wait_lsn):
                        raise _NotCaughtUp()
                cur = await conn.execute(cast(QueryNoTemplate, query), params)
                return await cur.fetchall() if cur.description is not None else []

    async def _wait_replay(self, conn: psycopg.AsyncConnection[Any], lsn: int) -> bool:
        """Poll the replica until it has replayed ``lsn``, for at most ``catch_up_wait``."""
        give_up = time.monotonic() + self.config.catch_up_wait
        while True:
            cur = await conn.execute(_REPLAY_LSN_SQL)
            if _replayed(await cur.fetchone(), lsn):
                return True
            if time.monotonic() >= give_up:
                return False
            await asyncio.sleep(0.002)

    # admin -----------------------------------------------------------------------------
    @asynccontextmanager
    async def primary_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit connection to the primary for admin work (migrations).

        Waits up to ``failover_timeout`` for a primary; no retry once the block runs. When
        the block ends, the primary's WAL flush position becomes a floor for every later read
        through this router, so a table created here is never missing on the replica a read
        goes to.
        """
        self._require_open()
        deadline = time.monotonic() + self.config.failover_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                h = await self._primary_for_write()
                break
            except _NoPrimaryYet:
                if time.monotonic() >= deadline:
                    raise NoPrimaryError(
                        "no writable primary within failover_timeout", self._host_states()
                    ) from None
                await asyncio.sleep(backoff(attempt))
        assert h.pool is not None
        async with h.pool.connection(
            wait=self.config.pool_timeout, as_primary=True, on_wait=self._on_pool_wait(h)
        ) as conn:
            try:
                yield conn
            finally:
                await self._raise_floor(conn)

    async def _raise_floor(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if conn.closed or conn.pgconn.transaction_status != TransactionStatus.IDLE:
            return
        try:
            with watchdog(conn, self._deadline_for_statement()):
                cur = await conn.execute(_TOKEN_SQL)
                row = await cur.fetchone()
        except psycopg.Error:
            return
        if row is not None:
            self._floor_lsn = max(self._floor_lsn, parse_lsn(str(row[0])))


def _split_token(row: tuple[Any, ...] | None) -> tuple[Rows, str]:
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


def _in_flight(h: _Host) -> int:
    return h.in_flight


async def _read_if_replayed(
    conn: psycopg.AsyncConnection[Any], lsn: int, query: Query, params: Params | None
) -> Rows | None:
    """The query's rows if the replica had replayed ``lsn`` before it ran, else None.

    The replay check and the query go in one pipeline (one round trip instead of two, both
    prepared). They share an implicit transaction, but under read committed (the pools pin
    it) each statement takes its own snapshot, so the query sees everything up to the
    position checked before it. A single statement could not: its snapshot would predate
    its own check.
    """
    try:
        async with conn.pipeline():
            check = await conn.execute(_REPLAY_LSN_SQL)
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
        return None
    return rows if _replayed(row, lsn) else None


def _replayed(row: tuple[Any, ...] | None, lsn: int) -> bool:
    """Whether a ``_REPLAY_LSN_SQL`` row shows ``lsn`` replayed (NULL: not a standby)."""
    return row is not None and row[0] is not None and parse_lsn(row[0]) >= lsn


async def _rollback_quietly(conn: psycopg.AsyncConnection[Any]) -> None:
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
