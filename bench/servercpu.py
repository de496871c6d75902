"""CPU seconds used by one PostgreSQL server's own processes, read from /proc.

The postmaster and its children (backends, WAL senders, checkpointer, autovacuum, ...):
their user + system time, plus the time of children already reaped (the postmaster's
cutime/cstime), so a backend that exits between two readings is still counted. Works when
the server runs on this machine and its data directory is readable (the bench's own
cluster); otherwise :func:`server_cpu_probe` returns None and the figure is left out.

:func:`client_backends_cpu_seconds` counts only the backends serving client connections,
in nanoseconds (``/proc/PID/schedstat``) rather than clock ticks: the precise figure for
what a statement costs, without the background work (autovacuum, checkpoints, WAL senders)
that lands in whichever measurement happens to be running.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import psycopg

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces: fields start after the last ')'
    return text[text.rindex(")") + 2 :].split()


def _children(postmaster: int) -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields) of ``postmaster``'s live children."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == postmaster:
            yield int(entry.name), fields


def tree_cpu_seconds(postmaster: int) -> float:
    """User + system CPU seconds of ``postmaster``, its live children and its reaped ones."""
    own = _stat_fields(postmaster)
    if own is None:
        raise ProcessLookupError(f"no process {postmaster}")
    # fields after the name: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14
    ticks = sum(int(x) for x in own[11:15])
    ticks += sum(int(fields[11]) + int(fields[12]) for _, fields in _children(postmaster))
    return ticks / _TICK


def client_backends_cpu_seconds(postmaster: int) -> float:
    """CPU seconds of ``postmaster``'s live client backends (not WAL senders), from
    ``/proc/PID/schedstat`` (nanoseconds). Backends that have exited are not counted: use
    it across a measurement on connections that stay open."""
    total = 0
    for pid, _ in _children(postmaster):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
            run_ns = Path(f"/proc/{pid}/schedstat").read_text().split()[0]
        except OSError:
            continue
        # a client backend's title names its client: "... 127.0.0.1(40154) idle", "[local]"
        if (b"(" in title or b"[local]" in title) and b"walsender" not in title:
            total += int(run_ns)
    return total / 1e9


async def postmaster_pid(dsn: str) -> int | None:
    """The postmaster's pid from its ``postmaster.pid`` (None when not readable here)."""
    try:
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=5
        ) as conn:
            row = await (await conn.execute("SHOW data_directory")).fetchone()
    except psycopg.Error:
        return None  # not a superuser or pg_read_all_settings member
    if row is None:
        return None
    try:
        pid = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _stat_fields(pid) is not None else None


async def server_cpu_probe(dsn: str) -> Callable[[], float] | None:
    """A function returning the server's CPU seconds so far, or None when it cannot be read."""
    pid = await postmaster_pid(dsn)
    if pid is None:
        return None
    return lambda: tree_cpu_seconds(pid)


async def replicas_cpu_probe(dsns: Sequence[str]) -> Callable[[], float] | None:
    """The replicas' CPU seconds so far, summed (None: none given, or one cannot be read)."""
    probes = [await server_cpu_probe(d) for d in dsns]
    known = [p for p in probes if p is not None]
    if not known or len(known) != len(probes):
        return None
    return lambda: sum(p() for p in known)
