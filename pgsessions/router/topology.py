"""Immutable snapshots of what the monitor knows about each host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .archiver import ArchiverStats

Role = Literal["primary", "replica", "unknown"]


@dataclass(frozen=True)
class HostState:
    """One host as last seen by the monitor. ``host`` is ``host:port``, never a DSN."""

    host: str
    role: Role = "unknown"
    up: bool = False
    eligible: bool = False
    banned: bool = False
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    replay_lsn: int | None = None
    receive_lsn: int | None = None
    streaming: bool | None = None
    in_flight: int = 0
    pool_size: int = 0
    pool_available: int = 0
    pool_waiting: int = 0
    error: str | None = None
    checked_at: float = 0.0
    #: a primary's WAL archiving health (None: a standby, or archiving off)
    archiver: ArchiverStats | None = None


@dataclass(frozen=True)
class Topology:
    """A snapshot of the whole cluster, as the request path reads it (no locks, no I/O)."""

    hosts: tuple[HostState, ...] = ()
    primary: str | None = None
    primary_lsn: int | None = None
    checked_at: float = 0.0
    split_brain: tuple[str, ...] = field(default_factory=tuple)

    def replicas(self) -> tuple[HostState, ...]:
        return tuple(h for h in self.hosts if h.role == "replica")

    def eligible(self) -> tuple[HostState, ...]:
        return tuple(h for h in self.hosts if h.role == "replica" and h.eligible)

    def as_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)
