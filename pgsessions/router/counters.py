"""What the router counts (``stats()``) and tells its observers (monitoring/)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .events import RouterObserver
from .hosts import Host

log = logging.getLogger(__name__)


class Counters:
    """Plain counters keyed by tuples, plus the observers every event is sent to."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, ...]] = Counter()
        self.observers: list[RouterObserver] = []

    def add(self, *key: str) -> None:
        self.counts[key] += 1

    def emit(self, hook: str, *args: Any) -> None:
        for obs in list(self.observers):
            try:
                getattr(obs, hook)(*args)
            except Exception:  # an observer must never break a request
                log.debug("observer %r failed in %s", obs, hook, exc_info=True)

    def stats(self, hosts: Iterable[Host]) -> dict[str, Any]:
        """The plain counters: ``reads`` is {role: {reason: n}}, ``retries`` {kind: {reason: n}}."""
        reads: dict[str, dict[str, int]] = {}
        retries: dict[str, dict[str, int]] = {}
        for key, n in self.counts.items():
            if key[0] == "read":
                reads.setdefault(key[1], {})[key[2]] = n
            elif key[0] == "retry":
                retries.setdefault(key[1], {})[key[2]] = n
        c = self.counts
        hosts = list(hosts)
        return {
            "reads": reads,
            "reads_total": sum(sum(v.values()) for v in reads.values()),
            "reads_on_replicas": sum(reads.get("replica", {}).values()),
            "writes": c[("write",)],
            "read_errors": c[("read_error",)],
            "write_errors": c[("write_error",)],
            "retries": retries,
            "failovers": c[("failover",)],
            "split_brain_refusals": c[("split_brain",)],
            "connections_lost": c[("connection_lost",)],
            "bans": c[("ban",)],
            "overloaded": c[("overloaded",)],
            "tokens_capped": c[("token_capped",)],
            "in_flight": {h.label: h.in_flight for h in hosts},
            "reads_by_host": {h.label: h.reads for h in hosts},
        }
