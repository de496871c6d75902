"""The scrape-time collector: one per registry, exposing every instrumented router.

Gauges come from the router's topology snapshot and its pools' ``get_stats()`` at scrape
time (no query, no polling loop); counters and histograms come from each router's
:class:`~.metrics.RouterMetrics`. Every series carries ``router`` (RouterConfig.name), and
the series of a ShardedRouter's shards also ``shard`` (the shard's name).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from .metrics import METRICS, SPECS, RouterMetrics, safe_host
from .moves import MoveWatch

if TYPE_CHECKING:
    from ..router import Topology
    from ..router.protocol import Router
    from ..router.sharded import ShardedRouter

log = logging.getLogger(__name__)

#: pgsessions' own registry: what :func:`serve` and :func:`metrics_app` expose by default
REGISTRY = CollectorRegistry(auto_describe=False)

_collectors: weakref.WeakKeyDictionary[CollectorRegistry, PgSessionsCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def router_is_open(router: Router) -> bool:
    """Whether ``router`` is open (a closed router stops reporting)."""
    return not router.closed


def pool_stats(router: Router, topology: Topology) -> dict[str, Mapping[str, int]]:
    """``host:port`` -> psycopg_pool ``get_stats()``-style dict, for the hosts with a pool.

    Read live from ``router.pool_stats()``; should that fail (a pool replaced while we read
    it from the scrape thread), the pool fields of the last snapshot stand in.
    """
    try:
        return {safe_host(str(k)): v for k, v in router.pool_stats().items()}
    except Exception:
        log.debug("pool_stats() failed; using the snapshot", exc_info=True)
    return {
        h.host: {
            "pool_size": h.pool_size,
            "pool_available": h.pool_available,
            "requests_waiting": h.pool_waiting,
        }
        for h in topology.hosts
        if h.pool_size or h.pool_available or h.pool_waiting
    }


def known_primary(topology: Topology) -> str | None:
    """The primary (``host:port``) if one is known and its last check reached it."""
    if topology.primary is None or topology.split_brain:
        return None
    for h in topology.hosts:
        if h.host == topology.primary and not h.up:
            return None
    return topology.primary


class PgSessionsCollector:
    """Exposes the routers instrumented into one registry, without clashing names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, RouterMetrics] = {}
        #: the move checks of the ShardedRouters instrumented here
        self._watches: list[MoveWatch] = []

    def add(self, metrics: RouterMetrics) -> None:
        """Add a router's metrics; a live router of the same name is an error."""
        with self._lock:
            old = self._entries.get(metrics.name)
            if old is not None and old is not metrics:
                router = old.router
                if not old.detached and router is not None and router_is_open(router):
                    raise ValueError(
                        f"a router named {metrics.name!r} is already instrumented in this "
                        "registry: give each router its own RouterConfig(name=...)"
                    )
                old.detach()
            self._entries[metrics.name] = metrics

    def watch(self, router: ShardedRouter) -> MoveWatch:
        """The move check of ``router`` (made on first use)."""
        with self._lock:
            for w in self._watches:
                if w.router is router:
                    return w
            w = MoveWatch(router)
            self._watches.append(w)
            return w

    def unwatch(self, router: Router) -> None:
        with self._lock:
            self._watches = [w for w in self._watches if w.router not in (None, router)]

    def watches(self) -> list[MoveWatch]:
        """The move checks of open ShardedRouters (those of collected ones are dropped)."""
        with self._lock:
            self._watches = [w for w in self._watches if w.router is not None]
            return [w for w in self._watches if w.router is not None and not w.router.closed]

    def remove(self, metrics: RouterMetrics) -> None:
        with self._lock:
            if self._entries.get(metrics.name) is metrics:
                del self._entries[metrics.name]

    def get(self, router: Router) -> RouterMetrics | None:
        with self._lock:
            m = self._entries.get(router.config.name)
        return m if m is not None and m.router is router and not m.detached else None

    def active(self) -> list[tuple[RouterMetrics, Router]]:
        """Instrumented routers that are alive, attached and open."""
        out = []
        with self._lock:
            for name, m in list(self._entries.items()):
                router = m.router
                if router is None or m.detached:
                    del self._entries[name]
                elif router_is_open(router):
                    out.append((m, router))
        return out

    def describe(self) -> Iterable[Metric]:
        return [Metric(s.name.removesuffix("_total"), s.help, s.type) for s in METRICS]

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {
            s.name: Metric(s.name.removesuffix("_total"), s.help, s.type) for s in METRICS
        }
        for metrics, router in self.active():
            for fam in metrics.families():
                target = families[fam.name + "_total" if fam.type == "counter" else fam.name]
                target.samples.extend(s for s in fam.samples if not s.name.endswith("_created"))
            try:
                snapshot = _snapshot_families(metrics, router)
            except Exception:  # one broken router must not break the scrape of the others
                log.warning(
                    "pgsessions: cannot read router %r's state", metrics.name, exc_info=True
                )
                continue
            for fam in snapshot:
                key = fam.name + "_total" if fam.type == "counter" else fam.name
                families[key].samples.extend(fam.samples)
        for watch in self.watches():
            try:
                watch.request()  # a check on the router's loop: the scrape does not wait
                for fam in watch.families():
                    families[fam.name].samples.extend(fam.samples)
            except Exception:
                log.warning("pgsessions: cannot report the moves", exc_info=True)
        return list(families.values())


def _archiver_families(metrics: RouterMetrics, topo: Topology) -> list[Metric]:
    """The primary's WAL archiving health (pg_stat_archiver, read by the health check)."""

    def counter(metric: str) -> CounterMetricFamily:
        spec = SPECS[metric]
        return CounterMetricFamily(metric, spec.help, labels=(*metrics.base_names, *spec.labels))

    def gauge(metric: str) -> GaugeMetricFamily:
        spec = SPECS[metric]
        return GaugeMetricFamily(metric, spec.help, labels=(*metrics.base_names, *spec.labels))

    archived = counter("pgsessions_archive_archived_total")
    failed = counter("pgsessions_archive_failed_total")
    age = gauge("pgsessions_archive_last_archived_age_seconds")
    pending = gauge("pgsessions_archive_pending_segments")
    for h in topo.hosts:
        a = h.archiver
        if a is None or h.role != "primary":
            continue
        labels = (*metrics.base, safe_host(h.host))
        archived.add_metric(labels, float(a.archived_count))
        failed.add_metric(labels, float(a.failed_count))
        if a.last_archived_age is not None:
            age.add_metric(labels, max(0.0, a.last_archived_age))
        if a.pending_segments is not None:
            pending.add_metric(labels, float(a.pending_segments))
    return [archived, failed, age, pending]


def _snapshot_families(metrics: RouterMetrics, router: Router) -> list[Metric]:
    topo = router.topology()
    base = metrics.base

    def gauge(metric: str) -> GaugeMetricFamily:
        spec = SPECS[metric]
        return GaugeMetricFamily(metric, spec.help, labels=(*metrics.base_names, *spec.labels))

    up, eligible = gauge("pgsessions_host_up"), gauge("pgsessions_replica_eligible")
    lag_b, lag_s = (
        gauge("pgsessions_replication_lag_bytes"),
        gauge("pgsessions_replication_lag_seconds"),
    )
    size, avail = gauge("pgsessions_pool_size"), gauge("pgsessions_pool_available")
    waiting = gauge("pgsessions_pool_requests_waiting")
    known, writable = gauge("pgsessions_primary_known"), gauge("pgsessions_writable_hosts")
    roles = {}
    for h in topo.hosts:
        host = safe_host(h.host)
        roles[host] = h.role
        up.add_metric((*base, host, h.role), 1.0 if h.up else 0.0)
        if h.role == "replica":
            eligible.add_metric((*base, host), 1.0 if h.eligible and not h.banned else 0.0)
            if h.lag_bytes is not None:
                lag_b.add_metric((*base, host), float(max(h.lag_bytes, 0)))
            if h.lag_seconds is not None:
                lag_s.add_metric((*base, host), float(max(h.lag_seconds, 0.0)))
    for host, stats in pool_stats(router, topo).items():
        labels = (*base, host, roles.get(host, "unknown"))
        size.add_metric(labels, float(stats.get("pool_size", 0)))
        avail.add_metric(labels, float(stats.get("pool_available", 0)))
        waiting.add_metric(labels, float(stats.get("requests_waiting", 0)))
    primary = known_primary(topo)
    known.add_metric(base, 1.0 if primary else 0.0)
    n_writable = len(topo.split_brain) or (1 if primary else 0)
    writable.add_metric(base, float(n_writable))
    return [
        up,
        eligible,
        lag_b,
        lag_s,
        size,
        avail,
        waiting,
        known,
        writable,
        *_archiver_families(metrics, topo),
    ]


def collector_for(registry: CollectorRegistry) -> PgSessionsCollector:
    """The registry's pgsessions collector, registered on first use."""
    with _collectors_lock:
        c = _collectors.get(registry)
        if c is None:
            c = PgSessionsCollector()
            registry.register(c)
            _collectors[registry] = c
        return c


def instrument(router: Router, registry: CollectorRegistry | None = None) -> RouterMetrics:
    """Observe ``router`` and expose it in ``registry`` (default: :data:`REGISTRY`).

    Idempotent per router and registry. Several routers share a registry when their
    ``RouterConfig.name`` differ; a closed router stops reporting. A router over several
    clusters (a ShardedRouter) is instrumented cluster by cluster: each shard's series carry
    ``shard=<the shard's name>`` and ``router=<its RouterConfig.name>`` (the shard's name
    unless set); the first's are returned.
    """
    from ..router.sharded import ShardedRouter

    if isinstance(router, ShardedRouter):
        collector_for(registry if registry is not None else REGISTRY).watch(router)
    clusters = router.clusters()
    if len(clusters) != 1 or clusters[0] is not router:
        made = [_instrument_one(c, registry, shard) for shard, c in shards_of(router)]
        return made[0]
    return _instrument_one(router, registry, None)


def shards_of(router: Router) -> list[tuple[str, Router]]:
    """(shard name, cluster router) of each cluster a router over several reaches.

    A ShardedRouter names its shards (``.shards``); a router that reaches several clusters
    without naming them gets each cluster's ``RouterConfig.name``.
    """
    named = getattr(router, "shards", None)
    clusters = router.clusters()
    if isinstance(named, Mapping):
        by_id = {id(r): name for name, r in named.items()}
        return [(by_id.get(id(c), c.config.name), c) for c in clusters]
    return [(c.config.name, c) for c in clusters]


def _instrument_one(
    router: Router, registry: CollectorRegistry | None, shard: str | None
) -> RouterMetrics:
    collector = collector_for(registry if registry is not None else REGISTRY)
    existing = collector.get(router)
    if existing is not None and (shard is None or existing.shard == shard):
        return existing  # a shard instrumented on its own keeps its shard label
    if existing is not None:  # the same cluster, now known as a shard: relabel its series
        existing.detach()
        collector.remove(existing)
    metrics = RouterMetrics(router, shard)
    collector.add(metrics)
    router.add_observer(metrics)
    return metrics


def move_watch(
    router: ShardedRouter,
    registry: CollectorRegistry | None = None,
    *,
    interval: float | None = None,
    timeout: float | None = None,
) -> MoveWatch:
    """The periodic check of ``router``'s moves that feeds the move gauges in ``registry``
    (made by :func:`instrument`, or here); ``interval`` and ``timeout`` change its own."""
    watch = collector_for(registry if registry is not None else REGISTRY).watch(router)
    if interval is not None:
        watch.interval = interval
    if timeout is not None:
        watch.timeout = timeout
    return watch


def uninstrument(router: Router, registry: CollectorRegistry | None = None) -> None:
    """Stop observing ``router`` (each of its clusters); its series disappear from
    ``registry``."""
    collector_for(registry if registry is not None else REGISTRY).unwatch(router)
    clusters = router.clusters()
    if len(clusters) != 1 or clusters[0] is not router:
        for c in clusters:
            uninstrument(c, registry)
        return
    collector = collector_for(registry if registry is not None else REGISTRY)
    metrics = collector.get(router)
    if metrics is not None:
        metrics.detach()
        collector.remove(metrics)


def routers_in(registry: CollectorRegistry | None = None) -> list[Router]:
    """The open routers exposed by ``registry``."""
    return [r for _, r in collector_for(registry or REGISTRY).active()]
