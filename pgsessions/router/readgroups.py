"""Read coalescing: replica reads that start in the same event-loop step for the same host
(and the same ``setup``) share one connection checkout and one round trip.

The typical moment is the end of a coalesced write batch: every writer of the batch learns
the same token at once and reads its history next, all needing the same replay position on
the same replica. Sent alone, each read checks the replay position in its own round trip;
grouped, one check covers the whole group and the reads follow it in the same pipeline.

A read joins the open group of its host and setup, or opens one whose send is scheduled for
the next loop step (:data:`MAX_GROUP_READS` at most). A group of one runs alone, as without
coalescing. How a group runs is the router's; :func:`served` (pure) decides which members a
replay check covers. ``note(outcome, member)`` hears of the reads that never reach a group:
``alone`` (no company) and ``withdrawn`` (its caller was cancelled before the send).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.abc import Params, Query

from .execution import Rows, Setups

#: most reads in one group (one connection serves them one after another)
MAX_GROUP_READS = 16


@dataclass(eq=False)
class Member:
    """One read of a group: its statement, the replay position it needs (None: any),
    where its rows go (None: the read runs alone instead), its operation and when it
    joined (time.monotonic())."""

    query: Query
    params: Params | None
    lsn: int | None
    future: asyncio.Future[Rows | None]
    operation: str = ""
    joined_at: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class Group:
    """The reads of one host and setup that started in the same loop step."""

    host: str
    setup: Setups | None
    members: list[Member] = field(default_factory=list)


def check_lsn(members: Sequence[Member]) -> int | None:
    """The position the group's replay check must show: the highest any member needs
    (None: no member needs one, the group runs without a check)."""
    need = [m.lsn for m in members if m.lsn is not None]
    return max(need) if need else None


def served(members: Sequence[Member], seen: int | None) -> list[bool]:
    """Which members the group's rows may answer, given the replay position ``seen`` by the
    check before the reads (None: no check ran, or it did not answer): a member needing no
    position always; one needing ``lsn`` only if ``seen >= lsn`` (the others wait alone)."""
    return [m.lsn is None or (seen is not None and seen >= m.lsn) for m in members]


class ReadGroups:
    """The open groups of one router (one event loop). ``start(group)`` runs a group of two
    or more and settles each member's future; it must not raise. ``note(outcome, member)``
    (``alone`` or ``withdrawn``) must not raise either."""

    def __init__(
        self,
        start: Callable[[Group], Any],
        max_reads: int = MAX_GROUP_READS,
        note: Callable[[str, Member], Any] | None = None,
    ) -> None:
        self._start = start
        self._max = max_reads
        self._note = note
        self._open: list[Group] = []

    def join(
        self,
        host: str,
        setup: Setups | None,
        query: Query,
        params: Params | None,
        lsn: int | None,
        operation: str = "",
    ) -> asyncio.Future[Rows | None]:
        """Add a read to the open group of ``host`` and ``setup`` (or a new one, sent at the
        next loop step); the future gives its rows, or None: run it alone."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Rows | None] = loop.create_future()
        group = None
        for g in self._open:  # a loop, not next(genexpr): no closure per read
            if g.host == host and g.setup == setup:
                group = g
                break
        if group is None:
            group = Group(host, setup)
            self._open.append(group)
            loop.call_soon(self._send, group)
        group.members.append(Member(query, params, lsn, fut, operation))
        if len(group.members) >= self._max:
            self._close(group)
        return fut

    def _close(self, group: Group) -> None:
        if group in self._open:
            self._open.remove(group)

    def _send(self, group: Group) -> None:
        self._close(group)
        live = [m for m in group.members if not m.future.done()]
        if self._note is not None:
            for m in group.members:
                if m.future.done():
                    self._note("withdrawn", m)
        if len(live) == 1:
            if self._note is not None:
                self._note("alone", live[0])
            live[0].future.set_result(None)  # alone: its own path, as without coalescing
        elif live:
            group.members = live
            self._start(group)
