"""Running drill scenarios: cluster, router, workload, fault, recovery, verification."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..devcluster import LocalCluster
from ..devcluster.proxy import TcpProxy
from ..router import RouterConfig, SessionRouter, ShardedRouter
from ..router.dsn import host_label
from ..sessions import migrate
from .broken import DroppingSession, TokenIgnoringRouter
from .ledger import Ledger, LedgerObserver, short_error
from .options import DrillOptions
from .sampler import NodeSampler, TopologyWatcher
from .scenarios import SCENARIOS, TRIGGER, DrillContext, Scenario
from .shards import (
    FAULTED,
    ShardClusters,
    load_stored_shards,
    owners_of,
    per_shard_reports,
    start_shard_clusters,
)
from .verify import analyse, find_writable, load_stored
from .workload import DrillWorkload, SessionFactory


def router_config(hosts: list[str], opts: DrillOptions, name: str) -> RouterConfig:
    kwargs: dict[str, Any] = {
        "hosts": hosts,
        "schema": opts.schema,
        "check_interval": opts.check_interval,
        "failover_timeout": opts.failover_timeout,
        "name": name,
        "connect_timeout": 2.0,
        # tight enough that a paused replica leaves rotation while the fault lasts
        "max_lag_seconds": 1.0,
    }
    known = {f.name for f in dataclasses.fields(RouterConfig)}
    if "healthy_for" in known:
        kwargs["healthy_for"] = 1.0
    return RouterConfig(**{k: v for k, v in kwargs.items() if k in known})


def make_router(config: RouterConfig, opts: DrillOptions) -> SessionRouter:
    if opts.break_router == "skip-token-check":
        return TokenIgnoringRouter(config)
    return SessionRouter(config)


def _drill_router(
    config: RouterConfig, opts: DrillOptions, shard_hosts: dict[str, list[str]]
) -> SessionRouter | ShardedRouter:
    """The drill's router: over one cluster, or a ShardedRouter over ``shard_hosts``."""
    if not shard_hosts:
        return make_router(config, opts)
    configs = {
        s: dataclasses.replace(config, hosts=hosts, name=f"{config.name}-{s}")
        for s, hosts in shard_hosts.items()
    }
    return ShardedRouter(configs)


async def _proxied_hosts(cluster: LocalCluster, proxies: dict[str, TcpProxy]) -> list[str]:
    """A TCP proxy per node of ``cluster`` (kept in ``proxies``): the DSNs through them."""
    hosts = []
    for n in cluster.nodes:
        proxy = await TcpProxy("127.0.0.1", n.port).start()
        proxies[n.name] = proxy
        hosts.append(n.dsn.replace(f":{n.port}/", f":{proxy.port}/"))
    return hosts


def session_factory(opts: DrillOptions) -> SessionFactory | None:
    if opts.break_router == "drop-batch":
        return lambda sid, router: DroppingSession(sid, router)
    return None


async def run_drill(opts: DrillOptions) -> list[dict[str, Any]]:
    """Run each scenario in turn (each on a fresh local cluster) and return their reports."""
    reports = []
    names = ["trigger"] if opts.trigger else opts.scenarios
    for name in names:
        scenario = TRIGGER if name == "trigger" else scenario_table(opts)[name]
        try:
            reports.append(await run_scenario(scenario, opts))
        except Exception as exc:  # a drill that cannot run has failed, the others still run
            opts.log(f"[{name}] the drill itself failed: {short_error(exc)}")
            reports.append(error_report(name, opts, exc))
    return reports


def scenario_table(opts: DrillOptions) -> dict[str, Scenario]:
    if not opts.patroni:
        return SCENARIOS
    from .patroni_scenarios import PATRONI_SCENARIOS

    return PATRONI_SCENARIOS


def error_report(name: str, opts: DrillOptions, exc: BaseException) -> dict[str, Any]:
    """The report of a scenario that could not run to the end."""
    return {
        "scenario": name,
        "mode": "sync" if opts.sync else "async",
        "passed": False,
        "error": short_error(exc),
        "failures": [f"the drill could not run: {short_error(exc)}"],
    }


def quiet_pool_logs() -> None:
    """psycopg_pool logs every failed reconnect at WARNING: a drill makes many on purpose."""
    logging.getLogger("psycopg").setLevel(logging.ERROR)


async def _progress(name: str, ledger: Ledger, log: Callable[[str], None]) -> None:
    """One line a second: what the workload did in that second."""
    w_seen = r_seen = 0
    while True:
        await asyncio.sleep(1.0)
        writes, reads = ledger.writes[w_seen:], ledger.reads[r_seen:]
        w_seen, r_seen = w_seen + len(writes), r_seen + len(reads)
        ok = sum(1 for w in writes if w.ok)
        failed = sum(1 for w in writes if w.ok is False)
        roles = Counter(r.role or "?" for r in reads if r.ok)
        rfail = sum(1 for r in reads if r.ok is False)
        by_role = " ".join(f"{k} {v}" for k, v in sorted(roles.items())) or "none"
        log(
            f"[{name} +{ledger.now():5.1f}s] writes ok {ok} failed {failed}; "
            f"reads {by_role} failed {rfail}"
        )


async def _wait_until(cond: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def run_scenario(scenario: Scenario, opts: DrillOptions) -> dict[str, Any]:
    log = opts.log
    mode = "sync" if opts.sync else "async"
    cluster: LocalCluster | None = None
    shard_clusters: ShardClusters | None = None
    shard_hosts: dict[str, list[str]] = {}
    owners: dict[str, str] = {}
    proxies: dict[str, TcpProxy] = {}
    deployment: Any = None
    t_start = time.monotonic()
    try:
        if opts.hosts:
            node_dsns = {host_label(d): d for d in opts.hosts}
            router_hosts = list(opts.hosts)
            log(f"[{scenario.name}] on {', '.join(node_dsns)} (nothing is started or stopped)")
        elif scenario.deploy is not None:
            deployment = await scenario.deploy(
                dataclasses.replace(opts, log=lambda line: log(f"[{scenario.name}] {line}"))
            )
            node_dsns, router_hosts = deployment.node_dsns, deployment.router_hosts
        elif opts.shards > 1:
            log(
                f"[{scenario.name}] starting {opts.shards} local clusters (one per shard): "
                f"primary + 2 replicas each ({mode}); the fault hits shard {FAULTED}"
            )
            shard_clusters = await start_shard_clusters(opts)
            cluster = shard_clusters.faulted
            node_dsns = shard_clusters.node_dsns()
            shard_hosts = {s: [n.dsn for n in c.nodes] for s, c in shard_clusters.clusters.items()}
            if scenario.proxied:
                shard_hosts[FAULTED] = await _proxied_hosts(cluster, proxies)
            router_hosts = shard_hosts[FAULTED]  # each shard's config gets its own hosts
        else:
            log(f"[{scenario.name}] starting a local cluster: primary + 2 replicas ({mode})")
            cluster = LocalCluster(
                replicas=2, sync=opts.sync, fsync=opts.fsync, keep=opts.keep_cluster
            )
            await asyncio.to_thread(cluster.start)
            node_dsns = {n.name: n.dsn for n in cluster.nodes}
            router_hosts = [n.dsn for n in cluster.nodes]
            if scenario.proxied:
                router_hosts = await _proxied_hosts(cluster, proxies)
        host_names = {host_label(d): name for name, d in node_dsns.items()}
        in_shard = f"{FAULTED}/" if shard_clusters is not None else ""
        for name, p in proxies.items():
            host_names[f"127.0.0.1:{p.port}"] = f"{in_shard}{name} via proxy"

        ledger = Ledger()
        sampler = NodeSampler(node_dsns, ledger)
        await asyncio.to_thread(sampler.start)
        run_id = uuid.uuid4().hex[:8]
        prefix = f"drill-{scenario.name}-{run_id}"
        config = router_config(router_hosts, opts, f"drill-{scenario.name}-{run_id}")
        if deployment is not None:
            config = deployment.router_config(config)
        ctx = DrillContext(
            ledger=ledger,
            log=lambda line: log(f"[{scenario.name}] {line}"),
            cluster=cluster,
            proxies=proxies,
            trigger=opts.trigger,
            hold=opts.hold,
            sync=opts.sync,
            deployment=deployment,
            shard=FAULTED if shard_clusters is not None else None,
        )
        recovered = False
        try:
            async with _drill_router(config, opts, shard_hosts) as router:
                await migrate(router)
                router.add_observer(LedgerObserver(ledger))
                watcher = TopologyWatcher(router, ledger)
                watcher.start()
                workload = DrillWorkload(
                    router,
                    ledger,
                    prefix=prefix,
                    sessions=opts.sessions,
                    session_factory=session_factory(opts),
                )
                workload.start()
                progress = asyncio.create_task(_progress(scenario.name, ledger, log))
                try:
                    total = len(workload.session_ids)
                    await _wait_until(lambda: ledger.sessions_acked_since(0) >= total, 30)
                    # let the monitor find the replicas caught up, so reads use them
                    await _wait_until(lambda: bool(router.topology().eligible()), opts.warmup)
                    await asyncio.sleep(max(0.0, opts.warmup - ledger.now()))
                    await scenario.run(ctx)
                    t_done = ledger.now()
                    recovered = await _wait_until(
                        lambda: ledger.sessions_acked_since(t_done) >= total, opts.recover_timeout
                    )
                    ctx.mark(
                        "recovered" if recovered else "not_recovered",
                        f"{ledger.sessions_acked_since(t_done)}/{total} sessions wrote again",
                    )
                    await asyncio.sleep(opts.after)
                finally:
                    progress.cancel()
                    await workload.finish()
                    await watcher.stop()
                if isinstance(router, ShardedRouter):
                    owners = owners_of(router, workload.session_ids)
        finally:
            await asyncio.to_thread(sampler.stop)
            for p in proxies.values():
                await p.stop()
            proxies.clear()

        misplaced = 0
        if shard_clusters is not None:
            stored, verified, misplaced = await asyncio.to_thread(
                load_stored_shards, shard_clusters, opts.schema, prefix, owners
            )
            verify_name = ", ".join(verified.values())
        else:
            verify_name, verify_dsn = await asyncio.to_thread(find_writable, node_dsns)
            stored = await asyncio.to_thread(load_stored, verify_dsn, opts.schema, prefix)
        report = analyse(
            ledger,
            stored,
            ctx,
            scenario=scenario.name,
            recovered=recovered,
            host_names=host_names,
            failover_timeout=config.failover_timeout,
        )
        if deployment is not None:
            await asyncio.to_thread(deployment.add_to_report, report, ledger, ctx)
        if shard_clusters is not None:
            report["shards"], shard_failures = per_shard_reports(
                ledger,
                stored,
                ctx,
                owners,
                recovered=recovered,
                host_names=host_names,
                failover_timeout=config.failover_timeout,
            )
            report["misplaced_items"] = misplaced
            report["faulted_shard"] = FAULTED
            if misplaced:
                shard_failures.append(
                    f"{misplaced} items stored on a shard that does not own their session"
                )
            report["failures"].extend(shard_failures)
            report["passed"] = not report["failures"]
        report["verified_on"] = verify_name
        report["duration_s"] = round(time.monotonic() - t_start, 1)
        report["mode"] = mode
        report["broken"] = opts.break_router
        report["timeline"] = _timeline(ledger, sampler)
        kept = cluster or (deployment.cluster if deployment is not None else None)
        if kept is not None and opts.keep_cluster:
            report["cluster_dir"] = str(kept.base_dir)
        if shard_clusters is not None and opts.keep_cluster:
            report["cluster_dirs"] = {
                s: str(c.base_dir) for s, c in shard_clusters.clusters.items()
            }
        return report
    finally:
        for p in proxies.values():
            await p.stop()
        if shard_clusters is not None and not opts.keep_cluster:
            await asyncio.to_thread(shard_clusters.stop)
        elif cluster is not None and not opts.keep_cluster:
            await asyncio.to_thread(cluster.stop)
        if deployment is not None and not opts.keep_cluster:
            await asyncio.to_thread(deployment.stop)


def _timeline(ledger: Ledger, sampler: NodeSampler) -> dict[str, Any]:
    """Raw series for the plot: writes and reads per 100 ms, lag per replica."""
    end = ledger.now()
    bins = int(end / 0.1) + 1
    w_ok, w_fail = [0] * bins, [0] * bins
    for w in ledger.writes:
        if w.end is None:
            continue
        b = min(int(w.end / 0.1), bins - 1)
        if w.ok:
            w_ok[b] += 1
        else:
            w_fail[b] += 1
    reads: dict[str, list[int]] = {}
    for r in ledger.reads:
        if r.end is None:
            continue
        key = (r.role or "unknown") if r.ok else "failed"
        series = reads.setdefault(key, [0] * bins)
        series[min(int(r.end / 0.1), bins - 1)] += 1
    lag: dict[str, list[tuple[float, int | None]]] = {}
    primary_lsn: int | None = None
    for s in sampler.samples:
        if s.role == "primary":
            primary_lsn = s.lsn
        elif s.role == "replica" and s.lsn is not None and primary_lsn is not None:
            lag.setdefault(s.node, []).append((round(s.t, 2), max(0, primary_lsn - s.lsn)))
    return {
        "bin_s": 0.1,
        "writes_ok": w_ok,
        "writes_failed": w_fail,
        "reads": reads,
        "lag_bytes": lag,
        "events": [
            {"t": round(e.t, 3), "kind": e.kind, "detail": e.detail}
            for e in ledger.events
            if e.kind in ("fault", "promoted", "healed", "cut", "role", "recovered")
        ],
    }
