"""The monitor loop: one check of every host per ``check_interval``, and what it concludes.

A check probes all hosts concurrently, finds the primary (exactly one writable host),
assesses each replica's lag and health, adjusts pools to roles and publishes an immutable
:class:`Topology`. Requests that see a host fail ask for a check at once (single flight:
concurrent askers share one check).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from .config import RouterConfig
from .counters import Counters
from .execution import may_wait_replay_sql
from .health import assess, describe_hosts, resolve_primary
from .hosts import Host
from .patroni import PatroniSource, PatroniView, leader_moved, replica_veto, veto
from .pools import HostPool
from .probe import Probe
from .topology import HostState, Role, Topology

#: seconds before the monitor asks a replica again whether the schema has wait_replay
REPLAY_WAIT_RETRY = 60.0

log = logging.getLogger(__name__)


class Monitor:
    """What the router knows of the cluster, kept current by one background task."""

    def __init__(self, config: RouterConfig, hosts: dict[str, Host], counters: Counters) -> None:
        self.config = config
        self.hosts = hosts
        self.counters = counters
        self.primary: str | None = None
        self.split: tuple[str, ...] = ()
        #: the primary's WAL flush position at the last check
        self.primary_lsn: int | None = None
        self._primary_probe: Probe | None = None
        self._history: deque[tuple[float, int]] = deque(maxlen=10_000)
        self._primary_lost_at: float | None = None
        self._had_primary: str | None = None
        self.topology = Topology(hosts=tuple(HostState(host=lbl) for lbl in hosts))
        self.stopping = False
        self._task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_started = 0.0
        self._wake: asyncio.Event | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._probes: tuple[asyncio.Future[Probe], ...] = ()
        #: Patroni's latest view (RouterConfig.patroni), and the leader it named
        self.patroni: PatroniView | None = None
        self._patroni_leader: str | None = None
        self._patroni_source = PatroniSource(config.patroni, config.check_timeout)
        self._patroni_task: asyncio.Task[PatroniView | None] | None = None
        self._on_loop_end: Callable[[], None] | None = None
        self._may_wait_sql = may_wait_replay_sql(config.schema)
        #: the primary's position after the router's last admin work (see schema_changed)
        self._schema_lsn = -1

    # lifecycle -------------------------------------------------------------------------
    def start(self, on_loop_end: Callable[[], None] | None = None) -> None:
        """Start the loop; ``on_loop_end`` is called if its task is cancelled from outside
        (the event loop shutting down, as at the end of ``asyncio.run()``)."""
        self._on_loop_end = on_loop_end
        self._task = asyncio.create_task(self._run(), name=f"pgsessions-monitor-{self.config.name}")

    def prepare(self) -> None:
        self.stopping = False
        self._wake = asyncio.Event()
        for h in self.hosts.values():
            h.prober.aborted = False

    async def stop(self) -> None:
        """Stop the loop and any check under way; close every pool and probe connection."""
        self.stopping = True
        if self._wake is not None:
            self._wake.set()
        for h in self.hosts.values():
            h.prober.abort()
        tasks = [
            t
            for t in (self._task, self._refresh_task, self._patroni_task, *self._probes)
            if t is not None
        ]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self._task = self._refresh_task = self._patroni_task = None
        self._probes = ()
        pools = [h.pool for h in self.hosts.values() if h.pool is not None]
        for h in self.hosts.values():
            h.pool = None
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)
        await asyncio.gather(*(h.prober.reset() for h in self.hosts.values()))
        if self._background:
            for t in self._background:
                t.cancel()
            await asyncio.wait(self._background, timeout=2.0)

    def tasks(self) -> list[asyncio.Future[Any]]:
        """Tasks of this monitor still running (for tests of clean shutdown)."""
        tasks = (
            self._task,
            self._refresh_task,
            self._patroni_task,
            *self._probes,
            *self._background,
        )
        return [t for t in tasks if t is not None and not t.done()]

    # the loop --------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._checks()
        except asyncio.CancelledError:
            if not self.stopping:
                # cancelled from outside with the router open: the loop is ending. Close
                # the pools with it (psycopg_pool's workers outlive one cancellation, and
                # asyncio.run() would wait for them forever)
                self._task = None
                if self._on_loop_end is not None:
                    self._on_loop_end()
                await self.stop()
            raise

    async def _checks(self) -> None:
        assert self._wake is not None
        while not self.stopping:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pgsessions monitor check failed")
            if self.stopping:
                break
            try:
                async with asyncio.timeout(self.config.check_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def poke(self) -> None:
        """Ask for a check now (after a request saw a host fail)."""
        if self._wake is not None:
            self._wake.set()

    async def refresh(self, after: float | None = None) -> None:
        """Check every host once, sharing a check under way (single flight).

        With ``after``, only a check that started at or after that moment will do.
        """
        while not self.stopping:
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
        hosts = list(self.hosts.values())
        await self._poll_patroni()
        # kept so that stop() can wait for every probe, not only for the gather
        self._probes = tuple(asyncio.ensure_future(h.prober.probe()) for h in hosts)
        probes = await asyncio.gather(*self._probes)
        if self.stopping:
            return
        now = time.monotonic()
        by_label = {h.label: p for h, p in zip(hosts, probes, strict=True)}
        old = self.primary
        primary, split = resolve_primary(by_label, old)
        if split and not self.split:
            log.error("pgsessions: split brain, writable hosts %s: refusing writes", split)
        self.split = split
        if primary is not None and not split:
            pp = by_label[primary]
            self._primary_probe = pp
            if pp.flush_lsn is not None:
                self.primary_lsn = pp.flush_lsn
                self._history.append((pp.started, pp.flush_lsn))
                horizon = now - max(60.0, 4 * self.config.max_lag_seconds)
                while self._history and self._history[0][0] < horizon:
                    self._history.popleft()
        elif primary is None:
            self._primary_probe = None
        self._note_primary_change(old, primary, now)
        self.primary = primary
        for h, p in zip(hosts, probes, strict=True):
            await self._apply_probe(h, p)
        self._publish()
        if leader_moved(self.patroni, primary, list(self.hosts)) and self.patroni is not None:
            if self.patroni.leader != self._patroni_leader:
                self.poke()  # Patroni named a new leader: check again now, not an interval later
            self._patroni_leader = self.patroni.leader

    async def _poll_patroni(self) -> None:
        """Take Patroni's last finished answer and start the next poll: a slow REST API
        (a member cut off from etcd answers late) never holds up a check after the first."""
        if not self.config.patroni or self.stopping:
            return
        task = self._patroni_task
        if task is None:  # the first check (e.g. a one-shot `pgsessions status`) waits for it
            task = asyncio.ensure_future(self._patroni_source.fetch())
            await asyncio.wait([task])
            if self.stopping:
                return
        if task.done():
            failed = task.cancelled() or task.exception() is not None
            self.patroni = None if failed else task.result()
            task = asyncio.ensure_future(self._patroni_source.fetch())
        self._patroni_task = task

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
        self.counters.add("failover")
        log.warning("pgsessions: new primary %s (was %s) after %.2fs", new, previous, seconds)
        self.counters.emit("on_failover", seconds)

    async def _apply_probe(self, h: Host, p: Probe) -> None:
        was_down = h.probe is not None and not h.probe.up
        h.probe = p
        if p.up:
            role: Role = "replica" if p.in_recovery else "primary"
            if role != h.role or was_down:
                h.forget_positions()
            h.role = role
            h.down_checks = 0
            if h.suspect_at and p.started >= h.suspect_at:
                h.suspect_at = 0.0
        else:
            h.down_checks += 1
            h.forget_positions()
        if h.role == "replica":
            if p.up:
                await self._ask_replay_wait(h, p)
            primary_probe = self._primary_probe if not self.split else None
            assess(h.health, p, primary_probe, self.primary_lsn, self._history, self.config)
            reason = replica_veto(self.patroni, h.label, list(self.hosts))
            if reason is not None:
                veto(h.health, reason)
        else:
            # a host seen as primary, down or unknown goes through hysteresis when it
            # becomes a replica (e.g. an old primary rejoining)
            h.health.eligible = False
            h.health.ever_unhealthy = True
            h.health.healthy_since = None
            h.health.lag_bytes = h.health.lag_seconds = None
            h.health.reason = None if p.up else (p.error or "down")
        if self.stopping:
            return
        if p.up:
            if h.pool is None:
                h.pool = HostPool(h.dsn, h.label, h.role, self.config)
                await h.pool.open(wait=False)
            else:
                await h.pool.set_role(h.role)
                if was_down:
                    # the host was down and is back: its pooled connections may be dead
                    self.recheck_pool(h)
        elif h.pool is not None and h.down_checks >= 2:
            pool, h.pool = h.pool, None
            self._spawn(pool.close())

    def schema_changed(self, lsn: int) -> None:
        """Admin work through the router (``migrate()``) ended at primary position ``lsn``:
        a replica that answered "no wait_replay" before replaying that far is asked again
        once it has."""
        self._schema_lsn = max(self._schema_lsn, lsn)

    async def _ask_replay_wait(self, h: Host, p: Probe) -> None:
        """Whether reads on replica ``h`` may wait for their position there (wait_replay,
        migration 0015): asked on its probe connection once; a "no" again every minute, and
        once the replica has replayed admin work newer than the answer."""
        if h.replay_wait:
            return
        replayed = p.replay_lsn if p.replay_lsn is not None else -1
        if h.replay_wait is False:
            aged = time.monotonic() - h.replay_wait_asked >= REPLAY_WAIT_RETRY
            if not aged and not h.replay_wait_lsn < self._schema_lsn <= replayed:
                return
        try:
            row = await h.prober.fetch_one(self._may_wait_sql)
        except Exception:  # the host went away since its probe: asked at a later check
            return
        if row is not None:
            h.replay_wait, h.replay_wait_asked = bool(row[0]), time.monotonic()
            h.replay_wait_lsn = replayed

    def recheck_pool(self, h: Host) -> None:
        """Check the host's idle pooled connections once (single flight per pool)."""
        if h.pool is not None and not self.stopping:
            self._spawn(h.pool.recheck())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _publish(self) -> None:
        checked_at = time.time()
        states = []
        for h in self.hosts.values():
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
                    archiver=p.archiver if p is not None and p.up else None,
                )
            )
        self.topology = Topology(
            hosts=tuple(states),
            primary=self.primary,
            primary_lsn=self.primary_lsn,
            checked_at=checked_at,
            split_brain=self.split,
        )

    def host_states(self) -> dict[str, str]:
        return describe_hosts({h.label: h.probe for h in self.hosts.values()})

    def mark_suspect(self, h: Host) -> None:
        """Keep requests off ``h`` until a check that starts from now finds it up."""
        h.forget_positions()
        if not h.suspect_at:
            self.counters.add("ban")
        h.suspect_at = time.monotonic()
        if h.label == self.primary and self._primary_lost_at is None:
            self._primary_lost_at = h.suspect_at
        self.poke()
