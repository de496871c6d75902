"""Drills where Patroni moves the primary (``pgsessions drill --patroni``).

Each scenario runs on a fresh Patroni cluster of its own (one etcd, three members, each
member reaching etcd through a TCP proxy so that one can be cut off). The scenario makes the
fault and waits, with deadlines, for what Patroni does about it; Patroni alone decides who
leads. A :class:`PatroniWatch` records what Patroni's REST API says ten times a second, so
the report can say when Patroni promoted (its ``/history``) and when pgsessions wrote again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psycopg

from ..devcluster.patroni import PatroniCluster
from ..router.dsn import host_label
from .options import DrillOptions
from .patroni_deploy import PatroniDeployment, last_timeline
from .scenarios import DrillContext, Scenario

#: how long a scenario waits for Patroni to act (a loaded 2-core machine is slow)
SETTLE_TIMEOUT = 90.0


def patroni_failover_budget(ttl: float, loop_wait: float, margin: float = 10.0) -> float:
    """Seconds a write should be willing to wait through a Patroni failover.

    The leader key lives ``ttl`` seconds after the leader's last update, which came up to
    ``loop_wait`` before the fault; a replica then needs a loop and a promotion. Measured
    here: ttl 30 + loop_wait 10 promoted after 28.3-30.4 s, ttl 10 + loop_wait 2 after
    8.5-10.6 s. ``ttl + loop_wait + margin`` covers it with room for a slow promotion.
    """
    return float(ttl + loop_wait + margin)


def _dep(ctx: DrillContext) -> PatroniDeployment:
    if not isinstance(ctx.deployment, PatroniDeployment):
        raise RuntimeError("this scenario needs a Patroni cluster (pgsessions drill --patroni)")
    return ctx.deployment


def _begin(ctx: DrillContext) -> tuple[PatroniDeployment, PatroniCluster, str]:
    """The deployment, its cluster and the leader's name, just before the fault."""
    dep = _dep(ctx)
    pc = dep.begin(ctx)
    assert dep.leader_before is not None
    return dep, pc, dep.leader_before


def _writable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=1) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and not row[0]
    except psycopg.Error:
        return False


async def _until(cond: Callable[[], Any], within: float, what: str) -> Any:
    """Poll the blocking ``cond`` in a thread until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        got = await asyncio.to_thread(cond)
        if got:
            return got
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


async def _writable_leader(pc: PatroniCluster, other_than: str | None = None) -> str:
    """The member Patroni calls leader once its PostgreSQL accepts writes."""

    def check() -> str | None:
        leader = pc.leader()
        if leader is None or leader.name == other_than:
            return None
        return leader.name if _writable(leader.dsn) else None

    what = "a writable Patroni leader" + (f" other than {other_than}" if other_than else "")
    name: str = await _until(check, SETTLE_TIMEOUT, what)
    return name


async def _settled(ctx: DrillContext, other_than: str | None = None) -> str:
    """Wait for a writable leader; mark ``promoted`` when Patroni made a new timeline (or
    ``healed`` when it restarted the old primary in place) and note the switch position."""
    dep = _dep(ctx)
    pc = dep.cluster
    name = await _writable_leader(pc, other_than)
    info = await asyncio.to_thread(pc.cluster_info)
    rows: list[dict[str, Any]] = (info or {}).get("members", [])
    row = next((r for r in rows if r.get("name") == name), {})
    timeline = int(row.get("timeline") or 0)
    if name == dep.leader_before and timeline <= dep.timeline_before:
        ctx.role_change_is_promotion = False
        ctx.mark("healed", f"Patroni restarted PostgreSQL on {name} in place: no other leader")
        return name
    ctx.promoted = name
    ctx.mark("promoted", f"Patroni promoted {name}")

    def switch() -> list[list[Any]] | None:  # the new leader publishes it a loop later
        history = pc.history()
        return history if last_timeline(history) > dep.timeline_before else None

    history = await _until(switch, SETTLE_TIMEOUT, "Patroni's /history to show the promotion")
    ctx.received[name] = int(history[-1][1])  # all WAL the promoted member had
    return name


async def _replica_streaming(ctx: DrillContext, name: str) -> None:
    """Wait until ``name`` is a streaming replica again (Patroni's view and the server's)."""
    pc = _dep(ctx).cluster

    def check() -> bool:
        info = pc.cluster_info() or {}
        row: dict[str, Any] = next(
            (r for r in info.get("members", []) if r.get("name") == name), {}
        )
        ok_state = row.get("state") in ("streaming", "running")
        return bool(row.get("role") in ("replica", "sync_standby") and ok_state) and (
            not _writable(pc.member(name).dsn)
        )

    await _until(check, SETTLE_TIMEOUT, f"{name} to stream as a replica")


def _rewound(pc: PatroniCluster, name: str) -> bool:
    return "pg_rewind" in pc.member_log(name)


# ---------------------------------------------------------------------------- scenarios
async def postmaster_kill(ctx: DrillContext) -> None:
    _, pc, old = _begin(ctx)
    ctx.mark("fault", f"kill -9 the postmaster of {old} (leader); its Patroni keeps running")
    await asyncio.to_thread(pc.kill_postmaster, old)
    await _settled(ctx)


async def node_kill(ctx: DrillContext) -> None:
    _, pc, old = _begin(ctx)
    ctx.mark("fault", f"kill -9 {old} (leader): Patroni and PostgreSQL at once")
    await asyncio.to_thread(pc.kill_member, old)
    await _settled(ctx, other_than=old)


async def switchover(ctx: DrillContext) -> None:
    _, pc, old = _begin(ctx)
    ctx.expect_no_loss = True
    rows = pc.status()
    candidate = next(
        (r["member"] for r in rows if r["role"] == "sync_standby"),
        next(r["member"] for r in rows if r["member"] != old),
    )
    ctx.mark("fault", f"patronictl switchover --leader {old} --candidate {candidate} --force")
    proc = await asyncio.to_thread(pc.switchover, candidate)
    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-2:])
    ctx.mark("trigger_done", f"patronictl exit {proc.returncode}: {tail}")
    if proc.returncode != 0:
        ctx.notes.append(f"the trigger patronictl switchover exited {proc.returncode}: {tail}")
        return
    await _settled(ctx, other_than=old)
    await _replica_streaming(ctx, old)
    ctx.mark("healed", f"{old} streams from the new leader")


async def etcd_partition(ctx: DrillContext) -> None:
    dep, pc, old = _begin(ctx)
    ctx.mark("fault", f"cut {old} (leader) off from etcd: its etcd proxy drops every packet")
    await asyncio.to_thread(pc.cut_etcd, old)
    await _until(lambda: not _writable(pc.member(old).dsn), SETTLE_TIMEOUT, f"{old} to demote")
    ctx.mark("demoted", f"Patroni demoted {old}: it cannot reach etcd")
    dep.figures["demoted_at_s"] = ctx.ledger.now()
    await _settled(ctx, other_than=old)
    await asyncio.sleep(ctx.hold)
    await asyncio.to_thread(pc.heal_etcd, old)
    ctx.mark("etcd_healed", f"{old} reaches etcd again")
    await _replica_streaming(ctx, old)
    dep.figures["rewound"] = _rewound(pc, old)
    ctx.mark("healed", f"{old} rejoined as a replica")


async def etcd_down(ctx: DrillContext) -> None:
    dep, pc, old = _begin(ctx)
    ctx.mark("fault", "kill -9 etcd: the whole DCS is gone (failsafe_mode off)")
    await asyncio.to_thread(pc.stop_etcd)

    def none_writable() -> bool:
        return not any(_writable(m.dsn) for m in pc.members)

    await _until(none_writable, SETTLE_TIMEOUT, "Patroni to demote the leader")
    ctx.mark("demoted", f"Patroni demoted {old}: no member accepts writes while etcd is down")
    dep.figures["demoted_at_s"] = ctx.ledger.now()
    await asyncio.sleep(ctx.hold)
    await asyncio.to_thread(pc.start_etcd)
    ctx.mark("etcd_back", "etcd restarted")
    dep.figures["etcd_back_at_s"] = ctx.ledger.now()
    await _settled(ctx)


async def rejoin(ctx: DrillContext) -> None:
    await node_kill(ctx)
    dep = _dep(ctx)
    pc, old = dep.cluster, dep.leader_before
    assert old is not None
    await asyncio.sleep(ctx.hold)
    ctx.mark("restart", f"start {old}'s Patroni again")
    t_restart = ctx.ledger.now()
    await asyncio.to_thread(pc.start_member, old)
    await _replica_streaming(ctx, old)
    ctx.mark("rejoined", f"{old} streams as a replica")
    dep.figures["restart_at_s"] = t_restart
    dep.figures["rejoined_at_s"] = ctx.ledger.now()
    dep.figures["rewound"] = _rewound(pc, old)
    label = host_label(pc.member(old).dsn)

    def eligible_again() -> bool:
        return any(
            e.kind == "topology"
            and e.t >= t_restart
            and e.detail.startswith(f"{label}:")
            and e.detail.endswith("-> replica/up/eligible")
            for e in ctx.ledger.events
        )

    await _until(eligible_again, SETTLE_TIMEOUT, f"the router to take {old} back into rotation")
    t_back = ctx.ledger.now()
    ctx.mark("healed", f"{old} back in the router's rotation")
    dep.figures["back_in_rotation_at_s"] = t_back

    def served_reads() -> bool:
        return (
            sum(1 for r in ctx.ledger.reads if r.ok and r.host == label and r.start > t_back) >= 5
        )

    await _until(served_reads, 30, f"reads served by {old}")
    dep.figures["rejoined_member"] = old
    dep.figures["rejoined_host"] = label


async def deploy(opts: DrillOptions) -> PatroniDeployment:
    """Start the Patroni cluster a scenario runs on."""
    mode = "synchronous_mode" if opts.sync else "asynchronous"
    opts.log(
        f"starting Patroni: etcd + 3 members ({mode}, ttl {opts.patroni_ttl}, "
        f"loop_wait {opts.patroni_loop_wait})"
    )
    pc = PatroniCluster(
        3,
        sync=opts.sync,
        fsync=opts.fsync,
        keep=opts.keep_cluster,
        ttl=opts.patroni_ttl,
        loop_wait=opts.patroni_loop_wait,
        etcd_proxies=True,
    )
    await asyncio.to_thread(pc.start)
    return PatroniDeployment(pc, rest=opts.patroni_rest)


PATRONI_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "leader-postmaster-kill",
            "kill -9 the leader's postmaster (Patroni restarts it in place)",
            postmaster_kill,
            deploy=deploy,
        ),
        Scenario(
            "leader-node-kill",
            "kill -9 the leader's Patroni and PostgreSQL",
            node_kill,
            deploy=deploy,
        ),
        Scenario(
            "switchover", "patronictl switchover to the sync standby", switchover, deploy=deploy
        ),
        Scenario(
            "etcd-partition",
            "cut the leader off from etcd: Patroni demotes it, another member leads",
            etcd_partition,
            deploy=deploy,
        ),
        Scenario("etcd-down", "kill etcd, restart it after the demotion", etcd_down, deploy=deploy),
        Scenario(
            "rejoin",
            "kill the leader's node, restart it: pg_rewind, back as a replica in rotation",
            rejoin,
            deploy=deploy,
        ),
    )
}
