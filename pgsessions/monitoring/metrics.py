"""Metric names (a contract: dashboards and alert rules use them; docs/monitoring.md lists
them) and the per-router observer that counts.

:class:`RouterMetrics` implements the router's ``RouterObserver``: each hook updates one
prometheus-client child in well under a microsecond's worth of work and never raises. The
metric objects are not registered anywhere; :mod:`.collector` exposes them with a ``router``
label so several routers share one registry without clashing.
"""

from __future__ import annotations

import functools
import logging
import re
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

from ..router.dsn import host_label

if TYPE_CHECKING:
    from ..router.protocol import Router

log = logging.getLogger(__name__)

PREFIX = "pgsessions_"


@dataclass(frozen=True)
class MetricSpec:
    """One exposed metric: its full name, Prometheus type, labels and meaning."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


#: Every metric pgsessions exposes. Each also carries a ``router`` label (RouterConfig.name).
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "pgsessions_pool_size",
        "gauge",
        ("host", "role"),
        "Connections currently open in the host's pool (psycopg_pool get_stats).",
    ),
    MetricSpec(
        "pgsessions_pool_available",
        "gauge",
        ("host", "role"),
        "Idle connections ready in the host's pool.",
    ),
    MetricSpec(
        "pgsessions_pool_requests_waiting",
        "gauge",
        ("host", "role"),
        "Requests queued for a connection of the host's pool.",
    ),
    MetricSpec(
        "pgsessions_pool_connections_lost_total",
        "counter",
        ("host", "role"),
        "Pooled connections found broken.",
    ),
    MetricSpec(
        "pgsessions_pool_wait_seconds",
        "histogram",
        ("host", "role"),
        "Time to check a connection out of the host's pool.",
    ),
    MetricSpec(
        "pgsessions_host_up",
        "gauge",
        ("host", "role"),
        "1 if the monitor's last check reached the host, else 0.",
    ),
    MetricSpec(
        "pgsessions_replica_eligible",
        "gauge",
        ("host",),
        "1 if the replica is in read rotation (caught up, streaming, healthy), else 0.",
    ),
    MetricSpec(
        "pgsessions_replication_lag_bytes",
        "gauge",
        ("host",),
        "WAL bytes between the primary's flush position and the replica's replay position.",
    ),
    MetricSpec(
        "pgsessions_replication_lag_seconds",
        "gauge",
        ("host",),
        "Seconds the replica's replay is behind (0 when it has replayed everything).",
    ),
    MetricSpec(
        "pgsessions_routed_total",
        "counter",
        ("operation", "role", "reason"),
        "Statements routed, by operation, the role that ran them and why.",
    ),
    MetricSpec(
        "pgsessions_operation_duration_seconds",
        "histogram",
        ("operation", "role"),
        "Duration of router operations, retries included.",
    ),
    MetricSpec(
        "pgsessions_operation_errors_total",
        "counter",
        ("operation", "error"),
        "Operations that failed, by error class.",
    ),
    MetricSpec(
        "pgsessions_retries_total",
        "counter",
        ("operation", "reason"),
        "Attempts that failed with a retryable error and were retried.",
    ),
    MetricSpec(
        "pgsessions_failovers_total",
        "counter",
        (),
        "Times a new primary was found after the old one was suspected.",
    ),
    MetricSpec(
        "pgsessions_failover_duration_seconds",
        "histogram",
        (),
        "Seconds from suspecting the primary to routing writes to the new one.",
    ),
    MetricSpec(
        "pgsessions_split_brain_total",
        "counter",
        (),
        "Writes refused because more than one host was writable.",
    ),
    MetricSpec(
        "pgsessions_primary_known",
        "gauge",
        (),
        "1 while the router knows a writable primary, else 0.",
    ),
    MetricSpec(
        "pgsessions_writable_hosts",
        "gauge",
        (),
        "Hosts the monitor found writable (more than 1 is split brain).",
    ),
    MetricSpec(
        "pgsessions_overloaded_total",
        "counter",
        ("operation", "host", "role"),
        "Requests a busy host could not take (pool timeout, full queue, SQLSTATE class 53):"
        " a read moved to another host, or the caller got OverloadedError; never a ban.",
    ),
    MetricSpec(
        "pgsessions_tokens_capped_total",
        "counter",
        (),
        "Consistency tokens beyond the primary's WAL position (forged, or from a lost"
        " timeline) capped at that position.",
    ),
    MetricSpec(
        "pgsessions_archive_archived_total",
        "counter",
        ("host",),
        "WAL files the primary's archive_command archived (pg_stat_archiver, since its"
        " statistics were reset); only while archive_mode is on.",
    ),
    MetricSpec(
        "pgsessions_archive_failed_total",
        "counter",
        ("host",),
        "Failed attempts of the primary's archive_command (pg_stat_archiver.failed_count).",
    ),
    MetricSpec(
        "pgsessions_archive_last_archived_age_seconds",
        "gauge",
        ("host",),
        "Seconds since the primary last archived a WAL file (absent until it first does).",
    ),
    MetricSpec(
        "pgsessions_archive_pending_segments",
        "gauge",
        ("host",),
        "Finished WAL segments on the primary not archived yet (0 on an idle primary).",
    ),
    MetricSpec(
        "pgsessions_write_batch_size",
        "histogram",
        (),
        "Writes per coalesced batch (one transaction, one round trip) sent to the primary.",
    ),
    MetricSpec(
        "pgsessions_write_batches_total",
        "counter",
        ("outcome",),
        "Coalesced batches by outcome: committed, failed (its writes then ran alone),"
        " refused (nothing sent).",
    ),
    MetricSpec(
        "pgsessions_write_batch_wait_seconds",
        "histogram",
        ("operation",),
        "Time a write waited in the queue for its batch (writes sent at once not counted).",
    ),
    MetricSpec(
        "pgsessions_coalesced_writes_total",
        "counter",
        ("operation", "outcome"),
        "Writes by what coalescing did with them: alone, batched, fallback, refused,"
        " withdrawn (caller cancelled while queued, never sent).",
    ),
    MetricSpec(
        "pgsessions_read_group_size",
        "histogram",
        (),
        "Replica reads per group (one connection checkout, one replay check, one round trip).",
    ),
    MetricSpec(
        "pgsessions_read_groups_total",
        "counter",
        ("outcome",),
        "Read groups by outcome: served (rows came back), failed (its reads then ran alone).",
    ),
    MetricSpec(
        "pgsessions_read_group_wait_seconds",
        "histogram",
        ("operation",),
        "Time a replica read waited for its group to be sent (reads run alone not counted).",
    ),
    MetricSpec(
        "pgsessions_coalesced_reads_total",
        "counter",
        ("operation", "outcome"),
        "Replica reads by what coalescing did with them: alone, grouped, waited (answered by"
        " its group after the group waited for the replica), uncovered (the replica did not"
        " replay its position within catch_up_wait: read the primary), fallback (its group"
        " failed: ran alone), withdrawn (caller cancelled before its rows came).",
    ),
    MetricSpec(
        "pgsessions_redirects_total",
        "counter",
        ("operation",),
        "Statements this shard refused (SQLSTATE PGS01: it does not own the bucket, a move"
        " took it) and the ShardedRouter sent again to the owner.",
    ),
    MetricSpec(
        "pgsessions_moves_in_progress",
        "gauge",
        ("target", "phase"),
        "Bucket moves from this shard (the source) to target in each phase (copying, fenced,"
        " flipped); 0 when none.",
    ),
    MetricSpec(
        "pgsessions_move_phase_seconds",
        "gauge",
        ("target", "phase"),
        "Seconds the move from this shard to target has been in its current phase.",
    ),
    MetricSpec(
        "pgsessions_move_lag_bytes",
        "gauge",
        ("target",),
        "WAL bytes between this shard's (the source's) current WAL position and what the"
        " move's replication slot confirmed (the target flushed).",
    ),
    MetricSpec(
        "pgsessions_move_leftovers",
        "gauge",
        ("kind",),
        "Replication slots, publications and subscriptions of moves (pgs_move_*) on this"
        " shard that belong to no move in progress.",
    ),
    MetricSpec(
        "pgsessions_move_leftover_retained_bytes",
        "gauge",
        (),
        "WAL bytes this shard retains for leftover replication slots of moves.",
    ),
    MetricSpec(
        "pgsessions_move_check_up",
        "gauge",
        (),
        "1 if the last periodic check of this shard's moves reached its primary, else 0"
        " (the move gauges of the shard are then absent).",
    ),
)

SPECS = {m.name: m for m in METRICS}

#: the metrics only a ShardedRouter's shards expose (the redirects, the move gauges)
SHARD_ONLY = frozenset(
    {
        "pgsessions_redirects_total",
        "pgsessions_moves_in_progress",
        "pgsessions_move_phase_seconds",
        "pgsessions_move_lag_bytes",
        "pgsessions_move_leftovers",
        "pgsessions_move_leftover_retained_bytes",
        "pgsessions_move_check_up",
    }
)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
POOL_WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
BATCH_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FAILOVER_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

_SAFE_HOST = re.compile(r"^[\w.\-\[\]:/]+$")


@functools.lru_cache(maxsize=1024)
def safe_host(host: str) -> str:
    """``host:port`` for a label: anything DSN-like is reduced so no credential leaks."""
    if _SAFE_HOST.match(host) and "://" not in host:
        return host
    return host_label(host)


def base_labels(shard: str | None) -> tuple[str, ...]:
    """The labels every series of a router carries: ``router``, and ``shard`` for a shard
    of a ShardedRouter (a plain SessionRouter's series have no ``shard`` label)."""
    return ("router", "shard") if shard is not None else ("router",)


def _counter(spec_name: str, labels: tuple[str, ...], base: tuple[str, ...]) -> Counter:
    spec = SPECS[spec_name]
    name = spec_name.removesuffix("_total")
    return Counter(name, spec.help, (*base, *labels), registry=None)


def _histogram(
    spec_name: str, labels: tuple[str, ...], buckets: tuple[float, ...], base: tuple[str, ...]
) -> Histogram:
    spec = SPECS[spec_name]
    return Histogram(spec_name, spec.help, (*base, *labels), buckets=buckets, registry=None)


class RouterMetrics:
    """Counters and histograms of one router, fed by the router's observer hooks.

    Create it with :func:`pgsessions.monitoring.instrument`. It holds the router weakly;
    :meth:`detach` removes the observer and stops the router's reporting. ``shard``: the
    shard's name when the router is one shard of a ShardedRouter (every series then carries
    ``shard=<name>`` beside ``router``).
    """

    def __init__(self, router: Router, shard: str | None = None) -> None:
        self.name = router.config.name
        self.shard = shard
        #: label names and values every series of this router starts with
        self.base_names = base_labels(shard)
        self.base: tuple[str, ...] = (self.name, shard) if shard is not None else (self.name,)
        base = self.base_names
        self._router = weakref.ref(router)
        self.detached = False
        self.routed = _counter("pgsessions_routed_total", ("operation", "role", "reason"), base)
        self.duration = _histogram(
            "pgsessions_operation_duration_seconds", ("operation", "role"), LATENCY_BUCKETS, base
        )
        self.errors = _counter("pgsessions_operation_errors_total", ("operation", "error"), base)
        self.retries = _counter("pgsessions_retries_total", ("operation", "reason"), base)
        self.pool_wait = _histogram(
            "pgsessions_pool_wait_seconds", ("host", "role"), POOL_WAIT_BUCKETS, base
        )
        self.connections_lost = _counter(
            "pgsessions_pool_connections_lost_total", ("host", "role"), base
        )
        self.failovers = _counter("pgsessions_failovers_total", (), base)
        self.failover_duration = _histogram(
            "pgsessions_failover_duration_seconds", (), FAILOVER_BUCKETS, base
        )
        self.split_brain = _counter("pgsessions_split_brain_total", (), base)
        self.overloaded = _counter(
            "pgsessions_overloaded_total", ("operation", "host", "role"), base
        )
        self.tokens_capped = _counter("pgsessions_tokens_capped_total", (), base)
        self.batch_size = _histogram("pgsessions_write_batch_size", (), BATCH_SIZE_BUCKETS, base)
        self.batches = _counter("pgsessions_write_batches_total", ("outcome",), base)
        self.batch_wait = _histogram(
            "pgsessions_write_batch_wait_seconds", ("operation",), BATCH_WAIT_BUCKETS, base
        )
        self.coalesced = _counter(
            "pgsessions_coalesced_writes_total", ("operation", "outcome"), base
        )
        self.group_size = _histogram("pgsessions_read_group_size", (), BATCH_SIZE_BUCKETS, base)
        self.groups = _counter("pgsessions_read_groups_total", ("outcome",), base)
        self.group_wait = _histogram(
            "pgsessions_read_group_wait_seconds", ("operation",), BATCH_WAIT_BUCKETS, base
        )
        self.coalesced_reads = _counter(
            "pgsessions_coalesced_reads_total", ("operation", "outcome"), base
        )
        self.redirects = _counter("pgsessions_redirects_total", ("operation",), base)
        # unlabelled series exist (at 0) from the start, so rate() and alerts see them
        self._failovers = self.failovers.labels(*self.base)
        self._failover_duration = self.failover_duration.labels(*self.base)
        self._split_brain = self.split_brain.labels(*self.base)
        self._tokens_capped = self.tokens_capped.labels(*self.base)
        self._batch_size = self.batch_size.labels(*self.base)
        self._group_size = self.group_size.labels(*self.base)

    @property
    def router(self) -> Router | None:
        """The router, or None once it has been garbage-collected."""
        return self._router()

    def detach(self) -> None:
        """Stop observing the router; its series disappear from the next scrape."""
        self.detached = True
        router = self._router()
        if router is not None:
            router.remove_observer(self)

    def families(self) -> Iterable[Metric]:
        """The observer-fed metric families (``_created`` series left out)."""
        for metric in (
            self.routed,
            self.duration,
            self.errors,
            self.retries,
            self.pool_wait,
            self.connections_lost,
            self.failovers,
            self.failover_duration,
            self.split_brain,
            self.overloaded,
            self.tokens_capped,
            self.batch_size,
            self.batches,
            self.batch_wait,
            self.coalesced,
            self.group_size,
            self.groups,
            self.group_wait,
            self.coalesced_reads,
            self.redirects,
        ):
            yield from metric.collect()

    # RouterObserver hooks: cheap, never raise -----------------------------------------------
    def on_route(self, operation: str, role: str, reason: str) -> None:
        try:
            self.routed.labels(*self.base, operation, role, reason).inc()
        except Exception:  # pragma: no cover - a metric must never break a request
            log.debug("on_route failed", exc_info=True)

    def on_operation(self, operation: str, role: str, seconds: float, error: str | None) -> None:
        try:
            self.duration.labels(*self.base, operation, role).observe(seconds)
            if error is not None:
                self.errors.labels(*self.base, operation, error).inc()
        except Exception:  # pragma: no cover
            log.debug("on_operation failed", exc_info=True)

    def on_retry(self, operation: str, reason: str) -> None:
        try:
            self.retries.labels(*self.base, operation, reason).inc()
        except Exception:  # pragma: no cover
            log.debug("on_retry failed", exc_info=True)

    def on_pool_wait(self, host: str, role: str, seconds: float) -> None:
        try:
            self.pool_wait.labels(*self.base, safe_host(host), role).observe(seconds)
        except Exception:  # pragma: no cover
            log.debug("on_pool_wait failed", exc_info=True)

    def on_connection_lost(self, host: str, role: str) -> None:
        try:
            self.connections_lost.labels(*self.base, safe_host(host), role).inc()
        except Exception:  # pragma: no cover
            log.debug("on_connection_lost failed", exc_info=True)

    def on_failover(self, seconds: float) -> None:
        try:
            self._failovers.inc()
            self._failover_duration.observe(seconds)
        except Exception:  # pragma: no cover
            log.debug("on_failover failed", exc_info=True)

    def on_split_brain(self) -> None:
        try:
            self._split_brain.inc()
        except Exception:  # pragma: no cover
            log.debug("on_split_brain failed", exc_info=True)

    def on_overload(self, operation: str, host: str, role: str) -> None:
        try:
            self.overloaded.labels(*self.base, operation, safe_host(host), role).inc()
        except Exception:  # pragma: no cover
            log.debug("on_overload failed", exc_info=True)

    def on_token_capped(self) -> None:
        try:
            self._tokens_capped.inc()
        except Exception:  # pragma: no cover
            log.debug("on_token_capped failed", exc_info=True)

    def on_write_batch(self, size: int, outcome: str) -> None:
        try:
            self._batch_size.observe(size)
            self.batches.labels(*self.base, outcome).inc()
        except Exception:  # pragma: no cover
            log.debug("on_write_batch failed", exc_info=True)

    def on_batch_wait(self, operation: str, seconds: float) -> None:
        try:
            self.batch_wait.labels(*self.base, operation).observe(seconds)
        except Exception:  # pragma: no cover
            log.debug("on_batch_wait failed", exc_info=True)

    def on_write_coalescing(self, operation: str, outcome: str) -> None:
        try:
            self.coalesced.labels(*self.base, operation, outcome).inc()
        except Exception:  # pragma: no cover
            log.debug("on_write_coalescing failed", exc_info=True)

    def on_read_group(self, size: int, outcome: str) -> None:
        try:
            self._group_size.observe(size)
            self.groups.labels(*self.base, outcome).inc()
        except Exception:  # pragma: no cover
            log.debug("on_read_group failed", exc_info=True)

    def on_read_group_wait(self, operation: str, seconds: float) -> None:
        try:
            self.group_wait.labels(*self.base, operation).observe(seconds)
        except Exception:  # pragma: no cover
            log.debug("on_read_group_wait failed", exc_info=True)

    def on_read_coalescing(self, operation: str, outcome: str) -> None:
        try:
            self.coalesced_reads.labels(*self.base, operation, outcome).inc()
        except Exception:  # pragma: no cover
            log.debug("on_read_coalescing failed", exc_info=True)

    def on_redirect(self, operation: str) -> None:
        try:
            self.redirects.labels(*self.base, operation).inc()
        except Exception:  # pragma: no cover
            log.debug("on_redirect failed", exc_info=True)
