"""The drill scenarios: what each one breaks, and how it puts the cluster right again.

A scenario runs while the workload keeps going. It marks ``fault`` when it breaks something,
``promoted`` when a new primary accepts writes, ``healed`` when the fault is over. Cluster
operations are blocking: they run in threads so the workload never stops.
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..router.lsn import parse_lsn
from .ledger import Ledger

if TYPE_CHECKING:
    from ..devcluster import LocalCluster, Node
    from ..devcluster.proxy import TcpProxy


@dataclass
class DrillContext:
    """What a scenario may touch, and what it reports back."""

    ledger: Ledger
    log: Callable[[str], None]
    cluster: LocalCluster | None = None
    proxies: dict[str, TcpProxy] = field(default_factory=dict)
    trigger: str | None = None
    hold: float = 2.5
    sync: bool = False
    #: the cluster a scenario brought (``Scenario.deploy``), e.g. a Patroni cluster
    deployment: Any = None
    # filled in by the scenario
    old_primary: str | None = None
    promoted: str | None = None
    #: WAL position each replica had received when the primary died (async loss analysis)
    received: dict[str, int] = field(default_factory=dict)
    #: a clean switchover must lose nothing even with asynchronous replication
    expect_no_loss: bool = False
    #: a role change means a failover (False when the scenario makes a rogue primary)
    role_change_is_promotion: bool = True
    notes: list[str] = field(default_factory=list)
    #: the shard whose cluster the scenario breaks (``--shards``): its steps name it
    shard: str | None = None

    def need_cluster(self) -> LocalCluster:
        if self.cluster is None:
            raise RuntimeError("this scenario needs the local cluster (no --hosts)")
        return self.cluster

    def mark(self, kind: str, detail: str) -> None:
        if self.shard is not None and kind not in ("recovered", "not_recovered"):
            detail = f"shard {self.shard}: {detail}"  # the workload's recovery is every shard's
        e = self.ledger.event(kind, detail)
        self.log(f"+{e.t:5.2f}s {kind}: {detail}")


ScenarioFunc = Callable[[DrillContext], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    run: ScenarioFunc
    #: the workload goes through a proxy per host (network faults)
    proxied: bool = False
    #: starts the scenario's own cluster instead of the local one (``pgsessions drill
    #: --patroni``): takes the DrillOptions, returns an object with ``node_dsns``,
    #: ``router_hosts``, ``router_config(config)``, ``add_to_report(report, ledger, ctx)`` and
    #: ``stop()``
    deploy: Callable[[Any], Awaitable[Any]] | None = None


def _received(node: Node) -> int | None:
    try:
        rows = node.execute(
            "SELECT coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text"
        )
    except Exception:
        return None
    return parse_lsn(rows[0][0]) if rows and rows[0][0] else None


async def _promote_most_caught_up(ctx: DrillContext) -> Node:
    """Promote the replica that received the most WAL; the other replicas follow it."""
    c = ctx.need_cluster()
    candidates = [r for r in c.replicas if r.is_running()]
    positions = await asyncio.gather(*(asyncio.to_thread(_received, r) for r in candidates))
    for r, pos in zip(candidates, positions, strict=True):
        if pos is not None:
            ctx.received[r.name] = pos
    best = max(candidates, key=lambda r: ctx.received.get(r.name, -1))
    ctx.log(
        "received WAL: "
        + ", ".join(f"{n} {v >> 32:X}/{v & 0xFFFFFFFF:X}" for n, v in ctx.received.items())
        + f"; promoting {best.name}"
    )
    await asyncio.to_thread(c.promote, best, follow=False)
    ctx.promoted = best.name
    ctx.mark("promoted", f"{best.name} accepts writes")
    for other in c.replicas:
        if other.name != best.name and other.is_running():
            await asyncio.to_thread(c.follow, other, best)
            ctx.mark("followed", f"{other.name} now streams from {best.name}")
    return best


async def primary_crash(ctx: DrillContext) -> None:
    c = ctx.need_cluster()
    old = c.primary
    ctx.old_primary = old.name
    ctx.mark("fault", f"crash {old.name} (primary): immediate stop, no checkpoint")
    await asyncio.to_thread(c.crash, old)
    await _promote_most_caught_up(ctx)


async def switchover(ctx: DrillContext) -> None:
    c = ctx.need_cluster()
    old = c.primary
    ctx.old_primary = old.name
    ctx.expect_no_loss = True
    ctx.mark("fault", f"planned switchover: clean stop of {old.name} (primary)")
    # a fast shutdown sends all WAL to connected standbys before it exits
    await asyncio.to_thread(c.stop_node, old, "fast")
    await _promote_most_caught_up(ctx)
    await asyncio.to_thread(c.rejoin_as_replica, old)
    ctx.mark("healed", f"{old.name} rejoined as a replica")


async def replica_crash(ctx: DrillContext) -> None:
    c = ctx.need_cluster()
    victim = c.replicas[0]
    ctx.mark("fault", f"crash {victim.name} (replica)")
    await asyncio.to_thread(c.crash, victim)
    await asyncio.sleep(ctx.hold)  # the outage lasts this long
    await asyncio.to_thread(c.start_node, victim)
    ctx.mark("healed", f"{victim.name} restarted")


async def replica_lag(ctx: DrillContext) -> None:
    c = ctx.need_cluster()
    victim = c.replicas[0]
    ctx.mark("fault", f"pause WAL replay on {victim.name} (replica)")
    await asyncio.to_thread(c.pause_replay, victim)
    await asyncio.sleep(ctx.hold)
    await asyncio.to_thread(c.resume_replay, victim)
    ctx.mark("healed", f"replay resumed on {victim.name}")


async def network_partition(ctx: DrillContext) -> None:
    c = ctx.need_cluster()
    old = c.primary
    proxy = ctx.proxies[old.name]
    ctx.old_primary = old.name
    ctx.mark("fault", f"partition {old.name} (primary) from the application: packets dropped")
    proxy.blackhole()
    await asyncio.sleep(ctx.hold * 0.6)
    closed = proxy.cut()
    proxy.reject()
    ctx.mark("cut", f"{closed} connections to {old.name} reset; new ones refused")
    await asyncio.sleep(ctx.hold * 0.4)
    proxy.resume()
    ctx.mark("healed", f"{old.name} reachable again")


async def split_brain(ctx: DrillContext) -> None:
    c = ctx.need_cluster()
    rogue = c.replicas[-1]
    ctx.old_primary = c.primary.name
    ctx.role_change_is_promotion = False
    ctx.mark("fault", f"promote {rogue.name} while {c.primary.name} still accepts writes")
    await asyncio.to_thread(rogue.execute, "SELECT pg_promote(true, 60)", timeout=70)
    await asyncio.sleep(ctx.hold)
    await asyncio.to_thread(c.stop_node, rogue, "immediate")
    ctx.mark("healed", f"stopped the rogue {rogue.name}; {c.primary.name} is the only primary")


async def trigger(ctx: DrillContext) -> None:
    """Run the operator's command (``--trigger``), e.g. a ``patronictl switchover``."""
    assert ctx.trigger is not None
    ctx.mark("fault", f"trigger: {ctx.trigger}")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ctx.trigger or "", shell=True, capture_output=True, text=True, timeout=600
        )

    proc = await asyncio.to_thread(run)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    ctx.mark("trigger_done", f"exit {proc.returncode}" + (f": {' | '.join(tail)}" if tail else ""))
    if proc.returncode != 0:
        ctx.notes.append(f"the trigger {shlex.quote(ctx.trigger)} exited {proc.returncode}")


# deliberately broken routers/sessions (see .broken) the drill must catch
BREAKS = ("skip-token-check", "drop-batch")

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "primary-crash", "crash the primary, promote the most caught-up replica", primary_crash
        ),
        Scenario("switchover", "clean planned promotion, old primary rejoins", switchover),
        Scenario("replica-crash", "crash a replica, restart it", replica_crash),
        Scenario("replica-lag", "pause replay on a replica, then resume", replica_lag),
        Scenario(
            "network-partition",
            "cut the primary off through a TCP proxy, then heal",
            network_partition,
            proxied=True,
        ),
        Scenario("split-brain", "promote a replica while the primary still runs", split_brain),
    )
}
TRIGGER = Scenario("trigger", "the operator's --trigger command", trigger)
