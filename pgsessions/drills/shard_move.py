"""The bucket-move drill (``pgsessions drill shard-move``).

Two local shards (``wal_level = logical``) are set up and a third cluster is started and
added as shard s3, owning no bucket; the drill workload (the ledger) writes through one
ShardedRouter over the three, so on s1 and s2, while :func:`~pgsessions.shards.rebalance`
moves a third of the buckets onto s3. Afterwards the ledger is checked over every shard
(lost, duplicated, stale reads: all 0) and the write pause of each move is measured from the
callers' side: the longest write, started during the move, of a session in a moving bucket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..devcluster import LocalCluster
from ..router import RouterConfig, ShardedRouter
from ..router.placement import bucket_of
from ..sessions import migrate
from ..shards import (
    MoveProgress,
    add_shard,
    leftovers,
    plan_rebalance,
    rebalance,
    shard_status,
)
from .ledger import Ledger, LedgerObserver
from .options import DrillOptions
from .runner import _wait_until
from .scenarios import DrillContext
from .shards import ShardClusters, load_stored_shards, owners_of
from .verify import analyse

NAME = "shard-move"
#: the bucket count of the drill's set-up, and the most buckets moved at once
BUCKETS = 64
MOVE_LIMIT = 8
#: targets per move, from the callers' side (seconds)
PAUSE_P99_TARGET = 1.0
PAUSE_MAX_TARGET = 2.0


@dataclass
class MoveWindow:
    """When one move ran (from its first progress step to ``done``), as ledger times."""

    move_id: str
    buckets: tuple[int, ...]
    source: str
    target: str
    start: float
    end: float | None = None
    phases: dict[str, float] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values`` by the nearest rank (0 when empty)."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def move_pauses(ledger: Ledger, windows: list[MoveWindow], buckets: int) -> list[dict[str, Any]]:
    """Per move: the longest write of a session in a moving bucket that started during the
    move (a write in flight at the end counts up to then), and the longest gap between two
    acknowledged writes of the moving buckets around the move."""
    out = []
    now = ledger.now()
    for w in windows:
        end = w.end if w.end is not None else now
        moving = set(w.buckets)
        writes = [x for x in ledger.writes if bucket_of(x.session, buckets) in moving]
        during = [x for x in writes if w.start <= x.start <= end]
        longest = max(
            ((x.end if x.end is not None else now) - x.start for x in during), default=0.0
        )
        acks = sorted(x.end for x in writes if x.ok and x.end is not None)
        around = [t for t in acks if w.start <= t <= end]
        before = [t for t in acks if t < w.start][-1:]
        after = [t for t in acks if t > end][:1]
        seq = before + around + after
        gap = max((b - a for a, b in itertools.pairwise(seq)), default=0.0)
        out.append(
            {
                "move_id": w.move_id,
                "source": w.source,
                "target": w.target,
                "buckets": list(w.buckets),
                "seconds": round(end - w.start, 3),
                "writes_during": len(during),
                "writes_failed_during": sum(1 for x in during if x.ok is False),
                "pause_s": round(longest, 4),
                "longest_ack_gap_s": round(gap, 4),
                "phases_at_s": {k: round(v - w.start, 3) for k, v in w.phases.items()},
            }
        )
    return out


def spread_sessions(prefix: str, n: int, moves: list[list[int]], buckets: int) -> list[str]:
    """``n`` session ids starting with ``prefix``: every other one in a bucket of the planned
    ``moves`` (taking the moves in turn, so each move has writers while they last), the
    others in buckets that stay."""
    moving = {b for batch in moves for b in batch}
    staying = [b for b in range(buckets) if b not in moving]
    wanted: list[int] = []
    for i in range(n):
        k = i // 2
        if moves and (i % 2 == 0 or not staying):
            batch = moves[k % len(moves)]
            wanted.append(batch[(k // len(moves)) % len(batch)])
        else:
            wanted.append(staying[(k * 7) % len(staying)])
    out: list[str] = []
    for i, b in enumerate(wanted):
        j = 0
        while bucket_of(f"{prefix}-{i:03d}-{j}", buckets) != b:
            j += 1
        out.append(f"{prefix}-{i:03d}-{j}")
    return out


def _config(cluster: LocalCluster, opts: DrillOptions, name: str) -> RouterConfig:
    return RouterConfig(
        hosts=[n.dsn for n in cluster.nodes],
        schema=opts.schema,
        check_interval=opts.check_interval,
        failover_timeout=opts.failover_timeout,
        name=name,
        connect_timeout=2.0,
    )


async def _start(opts: DrillOptions, clusters: ShardClusters, name: str) -> LocalCluster:
    c = LocalCluster(
        replicas=1,
        sync=opts.sync,
        fsync=opts.fsync,
        keep=opts.keep_cluster,
        settings={"wal_level": "logical"},
    )
    clusters.clusters[name] = c
    await asyncio.to_thread(c.start)
    return c


def _spec(configs: dict[str, RouterConfig], kill_at: str | None) -> dict[str, Any]:
    """What :mod:`.mover_process` needs: the shards' configurations, the plan's limits."""
    keys = ("hosts", "schema", "check_interval", "failover_timeout", "name", "connect_timeout")
    return {
        "shards": {n: {k: getattr(c, k) for k in keys} for n, c in configs.items()},
        "buckets": BUCKETS,
        "limit": MOVE_LIMIT,
        "kill_at": kill_at,
    }


async def run_mover_process(
    spec: dict[str, Any], progress: Callable[[MoveProgress], None]
) -> tuple[int, list[dict[str, Any]], str]:
    """Run the rebalance in a process of its own (:mod:`.mover_process`), passing each of
    its progress steps to ``progress``: its exit status, its results and its stderr's end."""
    with tempfile.TemporaryFile() as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pgsessions.drills.mover_process",
            json.dumps(spec),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
        results: list[dict[str, Any]] = []
        assert proc.stdout is not None
        async for line in proc.stdout:
            msg = json.loads(line)
            if "progress" in msg:
                d = msg["progress"]
                d["buckets"] = tuple(d["buckets"])
                progress(MoveProgress(**d))
            elif "results" in msg:
                results = msg["results"]
        rc = await proc.wait()
        err.seek(0)
        tail = err.read().decode(errors="replace")[-600:]
    return rc, results, tail


#: the phases ``--kill-mover`` can kill the mover in (at the first step of that phase)
KILL_PHASES = ("copying", "caught-up", "fenced", "flipped")


async def run_shard_move(opts: DrillOptions, *, kill_mover: str | None = None) -> dict[str, Any]:
    """Run the drill once and return its report (``passed``, ``failures``, the figures).
    ``kill_mover`` (a phase of :data:`KILL_PHASES`): the rebalance runs in a process of its
    own, killed (SIGKILL) at the first step of that phase of its first move, then run again,
    which resumes the move and does the rest."""
    log = opts.log
    t_begin = time.monotonic()
    clusters = ShardClusters()
    run_id = uuid.uuid4().hex[:8]
    prefix = f"drill-{NAME}-{run_id}"
    try:
        log(f"[{NAME}] starting shards s1 and s2 (primary + 1 replica, wal_level = logical)")
        for s in ("s1", "s2"):
            await _start(opts, clusters, s)
        configs = {
            s: _config(c, opts, f"drill-{NAME}-{run_id}-{s}") for s, c in clusters.clusters.items()
        }
        async with ShardedRouter(dict(configs), buckets=BUCKETS) as two:
            await migrate(two)  # spreads the buckets over s1 and s2
        log(f"[{NAME}] starting shard s3 and adding it (it owns no bucket yet)")
        c3 = await _start(opts, clusters, "s3")
        configs["s3"] = _config(c3, opts, f"drill-{NAME}-{run_id}-s3")
        await add_shard("s3", configs["s3"], buckets=BUCKETS)

        ledger = Ledger()
        ctx = DrillContext(ledger=ledger, log=lambda line: log(f"[{NAME}] {line}"), sync=opts.sync)
        windows: dict[str, MoveWindow] = {}
        #: move id -> (rows moved, the mover's cutover seconds)
        moved: dict[str, tuple[int, float | None]] = {}
        failures: list[str] = []
        killed: dict[str, Any] | None = None

        def progress(p: MoveProgress) -> None:
            t = ledger.now()
            w = windows.get(p.move_id)
            if w is None:
                w = windows[p.move_id] = MoveWindow(p.move_id, p.buckets, p.source, p.target, t)
                ledger.event("note", f"move {p.move_id} of {len(p.buckets)} buckets started")
            w.phases.setdefault(p.phase, t)
            if p.phase == "done":
                w.end = t
                log(f"[{NAME}] move {p.move_id} {p.source} -> {p.target} done in {p.seconds:.2f}s")

        from .workload import DrillWorkload

        async with ShardedRouter(dict(configs), buckets=BUCKETS) as router:
            router.add_observer(LedgerObserver(ledger))
            before = router.stats()["buckets"]
            directory = router.directory
            assert directory is not None
            plan = plan_rebalance(directory, list(router.shards), limit=MOVE_LIMIT)
            workload = DrillWorkload(router, ledger, prefix=prefix, sessions=opts.sessions)
            # sessions in the buckets that will move, and in those that stay
            workload.session_ids = spread_sessions(
                prefix, opts.sessions, [batch for batch, _ in plan], BUCKETS
            )
            workload.start()
            try:
                total = len(workload.session_ids)
                await _wait_until(lambda: ledger.sessions_acked_since(0) >= total, 30)
                await asyncio.sleep(max(0.0, opts.warmup - ledger.now()))
                log(f"[{NAME}] rebalancing onto s3 (at most {MOVE_LIMIT} buckets a move)")
                t0 = ledger.now()
                if kill_mover:
                    killed = await _killed_and_resumed(
                        router, configs, kill_mover, progress, failures, log
                    )
                    moved = killed.pop("moved")
                else:
                    results = await rebalance(router, limit=MOVE_LIMIT, progress=progress)
                    moved = {r.move_id: (r.rows_moved, r.pause) for r in results}
                rebalance_s = ledger.now() - t0
                await asyncio.sleep(opts.after)
            finally:
                await workload.finish()
            after = router.stats()["buckets"]
            owners = owners_of(router, workload.session_ids)
            status = await shard_status(router)

        stored, verified, misplaced = await asyncio.to_thread(
            load_stored_shards, clusters, opts.schema, prefix, owners
        )
        report = analyse(
            ledger,
            stored,
            ctx,
            scenario=NAME,
            recovered=True,
            host_names={},
            failover_timeout=opts.failover_timeout,
        )
        failures = list(report["failures"]) + failures
        moves = move_pauses(ledger, list(windows.values()), BUCKETS)
        for m in moves:
            rows, cut = moved.get(m["move_id"], (None, None))
            m["rows_moved"] = rows
            m["cutover_s"] = round(cut, 4) if cut is not None else None
        # the pause of a move that no session's write hit is no measurement: left out; nor
        # is the killed move's (it lasts until the mover runs again: reported per move)
        crashed = set(killed["resumed"]) if killed else set()
        pauses = [
            float(m["pause_s"]) for m in moves if m["writes_during"] and m["move_id"] not in crashed
        ]
        pause = {
            "p50_s": round(percentile(pauses, 0.5), 4),
            "p99_s": round(percentile(pauses, 0.99), 4),
            "max_s": round(max(pauses, default=0.0), 4),
            "moves_measured": len(pauses),
        }
        rows_moved = sum(rows for rows, _ in moved.values())
        bytes_s3 = int(status["shards"]["s3"]["bytes"])
        left = leftovers(status)
        if not moved:
            failures.append("no bucket was moved")
        if after.get("s3", 0) == 0:
            failures.append("shard s3 owns no bucket after the rebalance")
        if not pauses:
            failures.append("no write of the workload hit a moving bucket during a move")
        if pause["p99_s"] >= PAUSE_P99_TARGET:
            failures.append(f"write pause p99 {pause['p99_s']}s >= {PAUSE_P99_TARGET}s")
        if pause["max_s"] >= PAUSE_MAX_TARGET:
            failures.append(f"write pause max {pause['max_s']}s >= {PAUSE_MAX_TARGET}s")
        if report["writes"]["failed"] or report["reads"]["failed"]:
            failures.append(
                f"{report['writes']['failed']} writes and {report['reads']['failed']} reads "
                "failed during the moves"
            )
        if misplaced:
            failures.append(f"{misplaced} items stored on a shard that does not own their session")
        if status["in_progress"]:
            failures.append(f"moves left in progress: {', '.join(status['in_progress'])}")
        if left:
            failures.append(f"replication objects left behind: {left}")
        report.update(
            {
                "passed": not failures,
                "failures": failures,
                "mode": "sync" if opts.sync else "async",
                "buckets": BUCKETS,
                "buckets_before": before,
                "buckets_after": after,
                "moves": moves,
                "move_count": len(moved),
                "mover_killed": killed,
                "write_pause": pause,
                "targets": {"p99_s": PAUSE_P99_TARGET, "max_s": PAUSE_MAX_TARGET},
                "rows_moved": rows_moved,
                "bytes_on_s3_after": bytes_s3,
                "rebalance_s": round(rebalance_s, 3),
                "redirects": router.redirects,
                "misplaced_items": misplaced,
                "leftovers": [list(x) for x in left],
                "verified_on": ", ".join(verified.values()),
                "duration_s": round(time.monotonic() - t_begin, 1),
            }
        )
        if opts.keep_cluster:
            report["cluster_dirs"] = {s: str(c.base_dir) for s, c in clusters.clusters.items()}
        return report
    finally:
        if not opts.keep_cluster:
            await asyncio.to_thread(clusters.stop)


async def _killed_and_resumed(
    router: ShardedRouter,
    configs: dict[str, RouterConfig],
    phase: str,
    progress: Callable[[MoveProgress], None],
    failures: list[str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The rebalance in a mover process killed by SIGKILL in ``phase``, then in another that
    resumes it: what happened (``moved``: the second run's results by move id)."""
    rc, _, err = await run_mover_process(_spec(configs, phase), progress)
    if rc != -signal.SIGKILL:
        failures.append(f"the mover was not killed at {phase} (exit status {rc}): {err}")
    left = (await shard_status(router))["in_progress"]
    log(f"[{NAME}] mover killed (SIGKILL) at {phase}; moves in progress: {', '.join(left)}")
    if not left:
        failures.append("no move was in progress after the mover was killed")
    rc2, results, err2 = await run_mover_process(_spec(configs, None), progress)
    if rc2 != 0:
        failures.append(f"the mover run again failed (exit status {rc2}): {err2}")
        log(f"[{NAME}] the mover run again failed (exit status {rc2}): {err2}")
    resumed = [r["move_id"] for r in results if r.get("resumed")]
    if left and not set(left) <= set(resumed):
        failures.append(f"the killed move {', '.join(left)} was not resumed")
    log(f"[{NAME}] mover run again: resumed {', '.join(resumed) or 'none'}")
    return {
        "phase": phase,
        "exit_status": rc,
        "in_progress_after_kill": left,
        "resumed": resumed,
        "moved": {r["move_id"]: (int(r["rows_moved"]), r["pause"]) for r in results},
    }


def format_shard_move(r: dict[str, Any]) -> str:
    """The human-readable report."""
    if "moves" not in r:
        return f"{NAME}: FAILED: {'; '.join(r.get('failures', []))}"
    p = r["write_pause"]
    lines = [
        f"{NAME} ({r['mode']}, {r['sessions']} sessions, {r['buckets']} buckets): "
        f"{'PASSED' if r['passed'] else 'FAILED'}",
        f"  buckets before {r['buckets_before']}, after {r['buckets_after']}",
        f"  {r['move_count']} moves in {r['rebalance_s']}s, {r['rows_moved']} rows moved, "
        f"s3 holds {r['bytes_on_s3_after']} bytes; {r['redirects']} redirects",
        f"  write pause per move: p50 {p['p50_s']}s, p99 {p['p99_s']}s, max {p['max_s']}s "
        f"(targets: p99 < {r['targets']['p99_s']}s, max < {r['targets']['max_s']}s)",
    ]
    k = r.get("mover_killed")
    if k:
        lines.append(
            f"  mover killed (SIGKILL) at {k['phase']}: exit {k['exit_status']}, "
            f"{len(k['in_progress_after_kill'])} move left in progress, "
            f"{len(k['resumed'])} resumed by the next run"
        )
    for m in r["moves"]:
        lines.append(
            f"    {m['source']} -> {m['target']} {len(m['buckets'])} buckets: {m['seconds']}s, "
            f"{m['rows_moved']} rows, pause {m['pause_s']}s, cutover "
            f"{'-' if m['cutover_s'] is None else str(m['cutover_s']) + 's'}, "
            f"{m['writes_during']} writes during"
        )
    lines.append(
        f"  writes acknowledged {r['writes']['acknowledged']}, failed {r['writes']['failed']}; "
        f"lost {r['lost']}, duplicated {r['duplicated']}, stale reads {r['stale_reads']}"
    )
    lines += [f"  FAIL: {f}" for f in r["failures"]]
    return "\n".join(lines)
