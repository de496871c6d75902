"""Watchers that timestamp what happens during a drill.

:class:`NodeSampler` asks every server directly (not through the router or a proxy), ten
times a second, for its role and WAL position: role changes and replication lag for the
report and the plot. :class:`TopologyWatcher` records every change in the router's own view.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from ..router.lsn import parse_lsn
from .ledger import Ledger

if TYPE_CHECKING:
    from ..router.protocol import Router

_PROBE = (
    "SELECT pg_is_in_recovery(), "
    "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
    "ELSE pg_current_wal_flush_lsn() END)::text, pg_last_wal_receive_lsn()::text"
)


@dataclass(slots=True)
class NodeSample:
    t: float
    node: str
    role: str  # primary, replica, down
    lsn: int | None  # flush position (primary) or replay position (replica)
    received: int | None


class NodeSampler:
    """Polls ``nodes`` (name -> DSN) from a thread every ``interval`` seconds."""

    def __init__(self, nodes: dict[str, str], ledger: Ledger, interval: float = 0.1) -> None:
        self.nodes = dict(nodes)
        self.ledger = ledger
        self.interval = interval
        self.samples: list[NodeSample] = []
        self.roles: dict[str, str] = {}
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drill-sampler", daemon=True)

    def start(self) -> None:
        self._sample_all()  # the starting roles, before anything is broken
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for c in self._conns.values():
            try:
                c.close()
            except Exception:
                pass
        self._conns.clear()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_all()

    def _sample_all(self) -> None:
        for name, dsn in self.nodes.items():
            s = self._sample(name, dsn)
            self.samples.append(s)
            old = self.roles.get(name)
            if old != s.role:
                self.roles[name] = s.role
                if old is not None:
                    self.ledger.event("role", f"{name}: {old} -> {s.role}")

    def _sample(self, name: str, dsn: str) -> NodeSample:
        t = self.ledger.now()
        try:
            conn = self._conns.get(name)
            if conn is None or conn.closed:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=1)
                self._conns[name] = conn
            row = conn.execute(_PROBE).fetchone()
            assert row is not None
            role = "replica" if row[0] else "primary"
            lsn = parse_lsn(row[1]) if row[1] else None
            received = parse_lsn(row[2]) if row[2] else None
            return NodeSample(t, name, role, lsn, received)
        except (psycopg.Error, OSError):
            bad = self._conns.pop(name, None)
            if bad is not None:
                try:
                    bad.close()
                except Exception:
                    pass
            return NodeSample(t, name, "down", None, None)

    def primary_at(self, t: float) -> str | None:
        """The node seen as primary in the last sample at or before ``t``."""
        found: str | None = None
        for s in self.samples:
            if s.t > t:
                break
            if s.role == "primary":
                found = s.node
        return found

    def first_new_primary(self, after: float, old: str | None) -> float | None:
        """When a node other than ``old`` was first seen writable after ``after``."""
        for s in self.samples:
            if s.t >= after and s.role == "primary" and s.node != old:
                return s.t
        return None


def describe_host(state: Any) -> str:
    flags = [state.role, "up" if state.up else "down"]
    if state.role == "replica":
        flags.append("eligible" if state.eligible else "ineligible")
    if getattr(state, "banned", False):
        flags.append("banned")
    return "/".join(flags)


class TopologyWatcher:
    """Records each change of the router's topology snapshot as a ``topology`` event."""

    def __init__(self, router: Router, ledger: Ledger, interval: float = 0.05) -> None:
        self.router = router
        self.ledger = ledger
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, str] = {}
        self._last_split: tuple[str, ...] = ()

    def start(self) -> None:
        self._snapshot(record=False)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._snapshot(record=True)

    def _snapshot(self, record: bool) -> None:
        topo = self.router.topology()
        now = {h.host: describe_host(h) for h in topo.hosts}
        for host, desc in now.items():
            if record and self._last.get(host) != desc:
                self.ledger.event("topology", f"{host}: {self._last.get(host, '?')} -> {desc}")
        split = tuple(getattr(topo, "split_brain", ()) or ())
        if record and split != self._last_split and split:
            self.ledger.event("topology", f"split brain seen: {', '.join(split)}")
        self._last, self._last_split = now, split
