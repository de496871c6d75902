"""What the router counts (``stats()``) and tells its observers: the observer interface
that monitoring/ implements. The router calls the hooks on the request path, so
implementations must be cheap and must never raise."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from .hosts import Host

log = logging.getLogger(__name__)


class RouterObserver(Protocol):
    def on_route(self, operation: str, role: str, reason: str) -> None:
        """A statement was sent to a node of ``role`` for ``reason`` (replica, token_ahead, ...)."""

    def on_operation(self, operation: str, role: str, seconds: float, error: str | None) -> None:
        """An operation finished (error is a short class name, or None on success)."""

    def on_retry(self, operation: str, reason: str) -> None:
        """An attempt failed with a retryable error and will be retried."""

    def on_pool_wait(self, host: str, role: str, seconds: float) -> None:
        """A connection was checked out of a pool after waiting ``seconds``."""

    def on_connection_lost(self, host: str, role: str) -> None:
        """A pooled connection was found broken."""

    def on_failover(self, seconds: float) -> None:
        """A new primary was found ``seconds`` after the old one was suspected."""

    def on_split_brain(self) -> None:
        """Writes were refused because more than one host is writable."""

    def on_token_capped(self) -> None:
        """A consistency token beyond the primary's position was capped at it."""

    def on_overload(self, operation: str, host: str, role: str) -> None:
        """A busy host refused a request (pool timeout, full queue or SQLSTATE class 53)."""

    def on_write_batch(self, size: int, outcome: str) -> None:
        """A batch of ``size`` coalesced writes was sent in one transaction: ``committed``,
        ``failed`` (its writes then ran alone) or ``refused`` (overload, split brain, closed:
        nothing was sent)."""

    def on_batch_wait(self, operation: str, seconds: float) -> None:
        """A write waited ``seconds`` in the queue before its batch was sent."""

    def on_write_coalescing(self, operation: str, outcome: str) -> None:
        """What became of one write under coalescing: ``alone`` (nothing in flight: sent at
        once), ``batched`` (committed in a batch), ``fallback`` (ran alone after its batch
        failed), ``refused`` (its batch was refused) or ``withdrawn`` (its caller was
        cancelled while it was queued: never sent)."""


class ReadCoalescingObserver(Protocol):
    """Hooks of read coalescing that an observer may have besides RouterObserver's (the
    router skips an observer without them): monitoring/ counts them."""

    def on_read_group(self, size: int, outcome: str) -> None:
        """A group of ``size`` replica reads was sent on one connection in one round trip:
        ``served`` (its rows came back) or ``failed`` (its reads then ran alone)."""

    def on_read_group_wait(self, operation: str, seconds: float) -> None:
        """A replica read waited ``seconds`` for its group to be sent."""

    def on_read_coalescing(self, operation: str, outcome: str) -> None:
        """What became of one replica read under coalescing: ``alone`` (no company: its own
        path), ``grouped`` (answered by its group), ``waited`` (answered by its group after
        the group waited for the replica to replay its position), ``uncovered`` (the replica
        did not get there within ``catch_up_wait``: it read the primary), ``fallback`` (its
        group failed: it ran alone) or ``withdrawn`` (its caller was cancelled before its
        rows came)."""


class Counters:
    """Plain counters keyed by tuples, plus the observers every event is sent to."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, ...]] = Counter()
        self.observers: list[RouterObserver] = []

    def add(self, *key: str) -> None:
        self.counts[key] += 1

    def emit(self, hook: str, *args: Any) -> None:
        for obs in list(self.observers):
            fn = getattr(obs, hook, None)
            if fn is None:  # an optional hook (ReadCoalescingObserver) it does not have
                continue
            try:
                fn(*args)
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
