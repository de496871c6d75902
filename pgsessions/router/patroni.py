"""Patroni's view of the cluster (``RouterConfig(patroni=[REST URLs])``), as a second opinion.

Each health check also reads Patroni's ``GET /cluster`` (leader, members, their role, state,
lag and timeline). What it may decide, and nothing more:

- a replica Patroni calls starting, stopped, crashed, restarting, being rebuilt or rewound,
  or whose lag Patroni cannot tell, stays out of rotation even when its SQL probe looks
  healthy; one Patroni no longer lists (its Patroni died, the node left) too. It comes back
  through the usual hysteresis (``healthy_for``) once both sources agree;
- when Patroni names a leader that is not the router's primary, the router checks every host
  again at once instead of a check interval later.

The SQL probe stays the authority on writes: a host is the primary only when it answers
writable, whatever Patroni says; Patroni never makes a host eligible on its own. Members are
matched to router hosts by ``host:port``: when no router host matches any member (e.g. the
router goes through PgBouncer ports), Patroni's view is ignored.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .health import Health

#: Patroni member states in which a replica may serve reads ("streaming" from Patroni 3.0.4)
SERVING_STATES = ("running", "streaming")


@dataclass(frozen=True)
class PatroniMember:
    name: str
    host: str  # host:port, as the router labels hosts
    role: str  # leader, sync_standby, replica, standby_leader...
    state: str
    lag: int | None  # bytes behind the leader; None when Patroni cannot tell
    timeline: int | None


@dataclass(frozen=True)
class PatroniView:
    """One ``/cluster`` answer: members by ``host:port`` and the running leader's."""

    members: dict[str, PatroniMember]
    leader: str | None


def parse_cluster(doc: Any) -> PatroniView:
    """A :class:`PatroniView` of a ``/cluster`` document; ValueError if it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("members"), list):
        raise ValueError("not a Patroni /cluster document (no members list)")
    members: dict[str, PatroniMember] = {}
    leader = None
    for row in doc["members"]:
        if not isinstance(row, dict) or "host" not in row or "name" not in row:
            raise ValueError("a /cluster member without name or host")
        host = f"{row['host']}:{row.get('port', 5432)}"
        lag = row.get("lag")
        tl = row.get("timeline")
        m = PatroniMember(
            name=str(row["name"]),
            host=host,
            role=str(row.get("role", "")),
            state=str(row.get("state", "")),
            lag=lag if isinstance(lag, int) and not isinstance(lag, bool) else None,
            timeline=tl if isinstance(tl, int) and not isinstance(tl, bool) else None,
        )
        members[host] = m
        if m.role in ("leader", "standby_leader") and m.state in SERVING_STATES:
            leader = host
    return PatroniView(members, leader)


def replica_veto(view: PatroniView | None, host: str, hosts: list[str]) -> str | None:
    """Why Patroni keeps replica ``host`` out of rotation, or None (no objection).

    ``hosts`` are all the router's hosts: a view that matches none of them says nothing.
    """
    if view is None or not any(h in view.members for h in hosts):
        return None
    m = view.members.get(host)
    if m is None:
        return "patroni: not a member of the cluster"
    if m.role in ("leader", "standby_leader"):
        return None  # being promoted: the SQL probe's replay position decides meanwhile
    if m.state not in SERVING_STATES:
        return f"patroni: {m.state or 'no state'}"
    if m.lag is None:
        return "patroni: lag unknown"
    return None


def leader_moved(view: PatroniView | None, primary: str | None, hosts: list[str]) -> bool:
    """Patroni names a running leader among ``hosts`` that is not the router's primary."""
    return (
        view is not None
        and view.leader is not None
        and view.leader in hosts
        and view.leader != primary
    )


def veto(health: Health, reason: str) -> None:
    """Take a replica out of rotation; it returns through the usual hysteresis."""
    health.eligible = False
    health.healthy_since = None
    health.ever_unhealthy = True
    health.reason = reason


def _get(url: str, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/cluster", timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"null")


class PatroniSource:
    """Reads ``/cluster`` from the members' REST URLs, the one that answered last first.

    One request per poll while that member answers: every router polls, so a fleet of agent
    servers must not multiply Patroni's load by the number of members. A member cut off from
    its DCS can take ``http_timeout`` to answer: the others are tried next, and the next
    poll starts with whichever answered.
    """

    def __init__(self, urls: Sequence[str], http_timeout: float) -> None:
        self.urls = list(urls)
        self.http_timeout = http_timeout
        self._first = 0

    async def fetch(self) -> PatroniView | None:
        """The first valid answer; None when no member answers."""
        n = len(self.urls)
        for i in range(n):
            k = (self._first + i) % n
            try:
                view = parse_cluster(await asyncio.to_thread(_get, self.urls[k], self.http_timeout))
            except (OSError, ValueError, http.client.HTTPException):
                continue
            self._first = k
            return view
        return None
