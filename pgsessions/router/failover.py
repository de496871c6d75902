"""Who is the primary: exactly one writable host, else none (or split brain)."""

from __future__ import annotations

from collections.abc import Mapping

from .monitor import Probe


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
