"""Host health, as pure decisions on probes: replica lag and hysteresis, and who is the
primary (exactly one writable host, else none, or split brain)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from .config import RouterConfig
from .probe import HIDDEN_STATUS, NEEDS_PG_MONITOR, Probe


@dataclass
class Health:
    """What the monitor remembers of one replica between checks (hysteresis, lag history)."""

    eligible: bool = False
    healthy_since: float | None = None
    ever_unhealthy: bool = False
    failures: int = 0
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    reason: str | None = None


def lag_of(
    probe: Probe, primary: Probe | None, primary_lsn: int | None, history: deque[tuple[float, int]]
) -> tuple[int | None, float | None]:
    """Lag bytes and seconds of a standby.

    Bytes: the primary's flush position minus the replay position (None without a primary
    position). Seconds: 0 when bytes <= 0 (an idle primary is not lag); otherwise the primary's
    clock minus the last replayed commit's timestamp, capped by how long ago the monitor last
    saw a primary position that the standby has now replayed (the first number alone jumps to
    the whole idle time when a commit follows a quiet spell).
    """
    if primary_lsn is None or probe.replay_lsn is None:
        return None, None
    lag_bytes = primary_lsn - probe.replay_lsn
    if lag_bytes <= 0:
        return lag_bytes, 0.0
    now = time.monotonic()
    estimates: list[float] = []
    if primary is not None and primary.server_now is not None and probe.replay_ts is not None:
        estimates.append(max(0.0, primary.server_now - probe.replay_ts))
    seen_at = None
    for t, lsn in reversed(history):
        if lsn <= probe.replay_lsn:
            seen_at = t
            break
    if seen_at is not None:
        estimates.append(max(0.0, now - seen_at))
    elif history:
        estimates.append(max(0.0, now - history[0][0]))
    return lag_bytes, (min(estimates) if estimates else None)


def assess(
    health: Health,
    probe: Probe,
    primary: Probe | None,
    primary_lsn: int | None,
    history: deque[tuple[float, int]],
    config: RouterConfig,
) -> None:
    """Update ``health`` from one probe of a standby: lag, then rotation with hysteresis.

    A replica leaves rotation at the first check that finds it down, not streaming, or past
    either lag threshold; it returns only once it has been healthy for ``healthy_for``
    seconds (at once on its very first check, so a fresh router reads from replicas).
    """
    now = time.monotonic()
    health.lag_bytes, health.lag_seconds = lag_of(probe, primary, primary_lsn, history)
    if not probe.up:
        reason: str | None = probe.error or "down"
    elif not probe.in_recovery:
        reason = "not a standby"
    elif probe.wal_status == HIDDEN_STATUS:
        reason = NEEDS_PG_MONITOR
    elif probe.wal_status != "streaming":
        reason = f"walreceiver {probe.wal_status or 'stopped'}"
    elif primary is None:
        reason = "no primary to measure lag against"
    elif health.lag_bytes is None or health.lag_bytes > config.max_lag_bytes:
        reason = f"lag {health.lag_bytes} bytes"
    elif health.lag_seconds is None or health.lag_seconds > config.max_lag_seconds:
        reason = f"lag {health.lag_seconds}s"
    else:
        reason = None
    health.failures = 0 if probe.up else health.failures + 1
    health.reason = reason
    if reason is not None:
        health.eligible = False
        health.healthy_since = None
        health.ever_unhealthy = True
        return
    if health.healthy_since is None:
        health.healthy_since = now
    if not health.eligible:
        if not health.ever_unhealthy or now - health.healthy_since >= config.healthy_for:
            health.eligible = True


def writable_hosts(probes: Mapping[str, Probe]) -> tuple[str, ...]:
    """Hosts that answered and are not in recovery, in a stable order."""
    return tuple(sorted(h for h, p in probes.items() if p.up and p.in_recovery is False))


def resolve_primary(
    probes: Mapping[str, Probe], previous: str | None
) -> tuple[str | None, tuple[str, ...]]:
    """``(primary, split_brain)`` from one check of every host.

    One writable host: it is the primary. Several: split brain, writes are refused; the
    previous primary is kept for reads if it is one of them (it holds every acknowledged
    write). None: no primary until a host is promoted.
    """
    writable = writable_hosts(probes)
    if len(writable) == 1:
        return writable[0], ()
    if len(writable) > 1:
        return (previous if previous in writable else None), writable
    return None, ()


def describe_hosts(probes: Mapping[str, Probe | None]) -> dict[str, str]:
    """What each host answered, for :class:`NoPrimaryError` (no credentials)."""
    out: dict[str, str] = {}
    for host, p in probes.items():
        if p is None:
            out[host] = "not checked yet"
        elif not p.up:
            out[host] = f"down ({p.error or 'no answer'})"
        elif p.in_recovery:
            out[host] = "standby (in recovery)"
        else:
            out[host] = "writable"
    return out
