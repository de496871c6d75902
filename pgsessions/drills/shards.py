"""Drills on a sharded set-up (``pgsessions drill SCENARIO --shards N``).

Each shard is a local cluster of its own (primary + 2 replicas); the workload writes through
one :class:`~pgsessions.router.ShardedRouter`, so its sessions land on every shard. The
scenario's fault hits the first shard only. The ledger is then checked over every shard
(each session's items read from its owner's writable server, and from the other shards,
where none may be), and per shard: the untouched shards must have served every write and
read of their sessions without an error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..devcluster import LocalCluster
from .ledger import Ledger
from .scenarios import DrillContext
from .verify import StoredItems, analyse, find_writable, load_stored

if TYPE_CHECKING:
    from ..router import ShardedRouter
    from .options import DrillOptions

#: the shard a scenario breaks; the others must not notice
FAULTED = "s1"


def shard_names(n: int) -> list[str]:
    return [f"s{i + 1}" for i in range(n)]


@dataclass
class ShardClusters:
    """The local clusters of a sharded drill, by shard name (the first one is faulted)."""

    clusters: dict[str, LocalCluster] = field(default_factory=dict)

    @property
    def faulted(self) -> LocalCluster:
        return self.clusters[FAULTED]

    def node_dsns(self) -> dict[str, str]:
        """``shard/node`` -> DSN of every server of every shard."""
        return {f"{s}/{n.name}": n.dsn for s, c in self.clusters.items() for n in c.nodes}

    def shard_node_dsns(self, shard: str) -> dict[str, str]:
        return {f"{shard}/{n.name}": n.dsn for n in self.clusters[shard].nodes}

    def stop(self) -> None:
        for c in self.clusters.values():
            c.stop()


async def start_shard_clusters(opts: DrillOptions) -> ShardClusters:
    """Start one local cluster per shard, one after the other (a failure stops those
    already started)."""
    out = ShardClusters()
    try:
        for name in shard_names(opts.shards):
            c = LocalCluster(replicas=2, sync=opts.sync, fsync=opts.fsync, keep=opts.keep_cluster)
            out.clusters[name] = c
            await asyncio.to_thread(c.start)
    except BaseException:
        await asyncio.to_thread(out.stop)
        raise
    return out


def owners_of(router: ShardedRouter, session_ids: list[str]) -> dict[str, str]:
    """session id -> the name of the shard that owns its bucket (the router's directory)."""
    by_router = {id(r): name for name, r in router.shards.items()}
    return {sid: by_router[id(router.cluster_for(sid))] for sid in session_ids}


def load_stored_shards(
    clusters: ShardClusters, schema: str, prefix: str, owners: Mapping[str, str]
) -> tuple[StoredItems, dict[str, str], int]:
    """Every shard's stored items of the drill, merged; which server each shard was read
    from; and how many items lie on a shard that does not own their session."""
    merged: StoredItems = {}
    verified: dict[str, str] = {}
    misplaced = 0
    for shard in clusters.clusters:
        name, dsn = find_writable(clusters.shard_node_dsns(shard))
        verified[shard] = name
        for sid, items in load_stored(dsn, schema, prefix).items():
            merged.setdefault(sid, []).extend(items)
            if owners.get(sid) != shard:
                misplaced += len(items)
    return merged, verified, misplaced


def _sub_ledger(ledger: Ledger, sessions: set[str]) -> Ledger:
    """The part of ``ledger`` about ``sessions`` (events are shared: the router's)."""
    sub = Ledger()
    sub.t0, sub.wall0 = ledger.t0, ledger.wall0
    sub.writes = [w for w in ledger.writes if w.session in sessions]
    sub.reads = [r for r in ledger.reads if r.session in sessions]
    sub.events = list(ledger.events)
    for s in sessions:
        if s in ledger.last_ack:
            sub.last_ack[s] = ledger.last_ack[s]
        if s in ledger.last_ack_at:
            sub.last_ack_at[s] = ledger.last_ack_at[s]
    return sub


def per_shard_reports(
    ledger: Ledger,
    stored: StoredItems,
    ctx: DrillContext,
    owners: Mapping[str, str],
    *,
    recovered: bool,
    host_names: dict[str, str],
    failover_timeout: float,
) -> tuple[dict[str, Any], list[str]]:
    """The figures of each shard's sessions, and the failures they add to the report.

    The faulted shard is judged as one cluster is (its context: promotion, WAL received);
    on every other shard no write or read may fail, and nothing may be lost, duplicated or
    stale (a loss there has no failover to explain it)."""
    out: dict[str, Any] = {}
    failures: list[str] = []
    shards = sorted(set(owners.values()) | {FAULTED})
    for shard in shards:
        sessions = {s for s, o in owners.items() if o == shard}
        faulted = shard == FAULTED
        sub_ctx = ctx if faulted else DrillContext(ledger=ledger, log=ctx.log, sync=ctx.sync)
        sub = analyse(
            _sub_ledger(ledger, sessions),
            {s: items for s, items in stored.items() if s in sessions},
            sub_ctx,
            scenario=shard,
            recovered=recovered,
            host_names=host_names,
            failover_timeout=failover_timeout,
        )
        w, rd = sub["writes"], sub["reads"]
        out[shard] = {
            "faulted": faulted,
            "sessions": len(sessions),
            "writes_acknowledged": w["acknowledged"],
            "writes_failed": w["failed"],
            "writes_waited": w["waited"],
            "max_write_wait_s": w["max_wait_s"],
            "reads_ok": rd["ok"],
            "reads_failed": rd["failed"],
            "reads_by_role": rd["by_role"],
            "lost": sub["lost"],
            "duplicated": sub["duplicated"],
            "reordered": sub["reordered"],
            "torn": sub["torn"],
            "stale_reads": sub["stale_reads"],
            "longest_write_gap_s": sub["timings"]["longest_write_gap_s"],
            "failures": sub["failures"],
        }
        if not sessions:
            failures.append(f"shard {shard}: no session of the workload landed on it")
        if faulted:
            continue
        errors = w["failed"] + rd["failed"]
        if errors:
            why = f" ({', '.join(w['failed_errors'])})" if w["failed_errors"] else ""
            failures.append(
                f"shard {shard} (not faulted): {w['failed']} writes and {rd['failed']} reads "
                f"failed{why}"
            )
        failures.extend(f"shard {shard} (not faulted): {f}" for f in sub["failures"])
    return out, failures
