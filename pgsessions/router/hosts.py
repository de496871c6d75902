"""The host table: the router's live record of each server (mutated by the monitor)."""

from __future__ import annotations

import time

from .config import RouterConfig
from .dsn import host_label
from .health import Health
from .pools import HostPool
from .probe import Probe, Prober
from .topology import Role


class Host:
    """One server: its DSN, probe connection, pool, last probe, role and health."""

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
        #: positions requests saw this server reach since the monitor last saw it change role
        #: or go down, or a request failed on it: a replica's replay position (from a replay
        #: check) and a primary's flush position (from a write's token). Lower bounds newer
        #: than the last probe: a read they already cover needs no replay check.
        self.seen_replay = -1
        self.seen_flush = -1
        #: whether the router's role may run the schema's wait_replay here (migration 0015),
        #: None until the monitor asked; and the monotonic time it was asked (the monitor
        #: asks a "no" again, see Monitor._ask_replay_wait)
        self.replay_wait: bool | None = None
        self.replay_wait_asked = 0.0
        #: the replay position this host had reached when asked
        self.replay_wait_lsn = -1

    def __repr__(self) -> str:
        return f"Host({self.label}, role={self.role}, up={self.up}, usable={self.usable})"

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
    def eligible(self) -> bool:
        return self.health.eligible

    @property
    def replay_lsn(self) -> int:
        """The newest replay position known: the last probe's or one a request saw since."""
        p = self.probe
        probed = p.replay_lsn if p is not None and p.replay_lsn is not None else -1
        return probed if probed >= self.seen_replay else self.seen_replay

    def saw_replay(self, lsn: int) -> None:
        if lsn > self.seen_replay:
            self.seen_replay = lsn

    def saw_flush(self, lsn: int) -> None:
        if lsn > self.seen_flush:
            self.seen_flush = lsn

    def lacks_replay_wait(self) -> None:
        """A read met a schema without wait_replay here: poll from the client until the
        monitor asks again."""
        self.replay_wait, self.replay_wait_asked = False, time.monotonic()

    def forget_positions(self) -> None:
        """After a restart, a role change or a failure: what was seen may not hold any more
        (a replica restarted after a crash serves reads from an older position at first)."""
        self.seen_replay = self.seen_flush = -1


def host_table(config: RouterConfig) -> dict[str, Host]:
    """``host:port`` -> Host for every DSN of ``config``; a host named twice is an error."""
    hosts: dict[str, Host] = {}
    for dsn in config.host_list:
        h = Host(dsn, config)
        if h.label in hosts:
            raise ValueError(f"RouterConfig.hosts names {h.label} twice")
        hosts[h.label] = h
    return hosts
