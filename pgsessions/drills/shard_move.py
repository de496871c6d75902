"""The bucket-move drill (``pgsessions drill shard-move``).

Two local shards (``wal_level = logical``) are set up and a third cluster is started and
added as shard s3, owning no bucket; the drill workload (the ledger) writes through one
ShardedRouter over the three, so on s1 and s2, while :func:`~pgsessions.shards.rebalance`
moves a third of the buckets onto s3. Afterwards the ledger is checked over every shard
(lost, duplicated, stale reads: all 0) and the write pause of each move is measured from the
callers' side: the longest write, started during the move, of a session in a moving bucket.

Variants: the mover killed in a phase and run again (``kill_mover``); a writer with a stale
directory paused across the flips (``stale-writer``); the primary of the first move's source
crashed mid-copy and its replica promoted (``source-crash``). ``history_mb`` preloads history
into the buckets that will move, so that the moving rate is measured on a real volume.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from ..router import RouterConfig, ShardedRouter, shard_tokens
from ..router.placement import bucket_of
from ..sessions import PostgresSession, migrate
from ..shards import (
    MoveProgress,
    abort_move,
    add_shard,
    leftovers,
    plan_rebalance,
    rebalance,
    shard_status,
)
from ..shards import move_sql as msql
from .history import load_history
from .ledger import Ledger, LedgerObserver
from .options import DrillOptions
from .runner import _wait_until
from .scenarios import DrillContext, _promote_most_caught_up
from .shards import ShardClusters, load_stored_shards, owners_of
from .verify import StoredItems, analyse, find_writable, load_stored
from .workload import make_batch

NAME = "shard-move"
#: the bucket count of the drill's set-up, and the most buckets moved at once
BUCKETS = 64
MOVE_LIMIT = 8
#: targets per move, from the callers' side (seconds)
PAUSE_P99_TARGET = 1.0
PAUSE_MAX_TARGET = 2.0
#: the variants of ``--variant``
VARIANTS = ("stale-writer", "source-crash")
#: sessions of each planned move the stale writer writes to
STALE_PER_MOVE = 2


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
    return sessions_in(prefix, wanted, buckets)


def sessions_in(prefix: str, wanted: list[int], buckets: int) -> list[str]:
    """A session id ``prefix-III-J`` in each bucket of ``wanted`` (the ``i``-th in the
    ``i``-th bucket)."""
    out: list[str] = []
    for i, b in enumerate(wanted):
        j = 0
        while bucket_of(f"{prefix}-{i:03d}-{j}", buckets) != b:
            j += 1
        out.append(f"{prefix}-{i:03d}-{j}")
    return out


def bucket_sizes(
    clusters: ShardClusters, schema: str, owners: dict[int, str]
) -> dict[int, tuple[int, int]]:
    """bucket -> (rows, bytes) of the session tables' rows of each bucket of ``owners``
    (bucket -> shard), read on its owner's primary (``pg_column_size`` of the rows)."""
    out: dict[int, tuple[int, int]] = {}
    for shard in sorted(set(owners.values())):
        node = clusters.clusters[shard].primary
        mine = [b for b, o in owners.items() if o == shard]
        for (t,) in node.execute(msql.SESSION_TABLES, (schema,)):
            for b, n, size in node.execute(
                f"SELECT bucket, count(*), coalesce(sum(pg_column_size(x.*)), 0)::bigint"
                f' FROM "{schema}"."{t}" x WHERE bucket = ANY(%s) GROUP BY bucket',
                (mine,),
            ):
                rows, nbytes = out.get(b, (0, 0))
                out[b] = (rows + int(n), nbytes + int(size))
    return out


def moving_rate(done: list[dict[str, Any]], sizes: dict[int, tuple[int, int]]) -> dict[str, Any]:
    """MB/s and rows/s of the initial copies (the ``copied`` phase) of the moves this run
    copied from the start (not resumed ones), over the rows and bytes their buckets held
    before the rebalance (``sizes``, see :func:`bucket_sizes`)."""
    measured = [r for r in done if not r.get("resumed") and r["phases"].get("copied")]
    copy_s = sum(float(r["phases"]["copied"]) for r in measured)
    rows = sum(sizes.get(b, (0, 0))[0] for r in measured for b in r["buckets"])
    nbytes = sum(sizes.get(b, (0, 0))[1] for r in measured for b in r["buckets"])
    return {
        "moves_measured": len(measured),
        "copy_s": round(copy_s, 3),
        "mb": round(nbytes / 1e6, 3),
        "rows": rows,
        "mb_per_s": round(nbytes / 1e6 / copy_s, 2) if copy_s else None,
        "rows_per_s": round(rows / copy_s) if copy_s else None,
    }


class StaleWriter:
    """A second ShardedRouter whose directory is read once (at open: ``directory_interval``
    3600 s) writing to sessions of the moving buckets: batch 1 of each before the rebalance;
    paused across the flips; then batch 2 of each at once (every first attempt goes to the
    old owner, which must refuse it). Its writes are in the drill's ledger."""

    def __init__(self, configs: dict[str, RouterConfig], ledger: Ledger, sids: list[str]):
        self.router = ShardedRouter(dict(configs), buckets=BUCKETS, directory_interval=3600)
        self.ledger = ledger
        self.sids = sids
        #: session -> the shard that owned it when the writer first wrote
        self.owner_before: dict[str, str] = {}

    async def _write(self, sid: str, n: int) -> bool:
        w = self.ledger.write_started(sid, n)
        s = PostgresSession(sid, self.router)
        try:
            await s.add_items(make_batch(sid, n))
        except Exception as exc:
            self.ledger.write_failed(w, exc)
            return False
        self.ledger.write_acked(w, s.consistency_token)
        return True

    async def write(self, n: int) -> int:
        """Batch ``n`` of every session at once; how many were acknowledged."""
        got = await asyncio.gather(*(self._write(sid, n) for sid in self.sids))
        return sum(got)

    def stale(self) -> int:
        """How many of its sessions its directory still places on their old owner."""
        d = self.router.directory
        assert d is not None
        return sum(1 for s in self.sids if d.owners[bucket_of(s, BUCKETS)] == self.owner_before[s])


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


async def run_shard_move(
    opts: DrillOptions,
    *,
    kill_mover: str | None = None,
    variant: str | None = None,
    history_mb: float = 0.0,
) -> dict[str, Any]:
    """Run the drill once and return its report (``passed``, ``failures``, the figures).
    ``kill_mover`` (a phase of :data:`KILL_PHASES`): the rebalance runs in a process of its
    own, killed (SIGKILL) at the first step of that phase of its first move, then run again,
    which resumes the move and does the rest. ``variant`` (one of :data:`VARIANTS`):
    ``stale-writer`` adds a :class:`StaleWriter`; ``source-crash`` crashes the primary of the
    first move's source at its copy, promotes its replica, aborts the move and rebalances
    again. ``history_mb``: about that many MB of history loaded into the moving buckets."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"no variant {variant!r}: {', '.join(VARIANTS)}")
    if variant and kill_mover:
        raise ValueError("a variant and kill_mover do not go together")
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
        #: move id -> the move's result (MoveResult's fields)
        moved: dict[str, dict[str, Any]] = {}
        failures: list[str] = []
        killed: dict[str, Any] | None = None
        crashed: dict[str, Any] | None = None
        #: the crash of the source's primary (source-crash), once done
        crash: dict[str, Any] = {}
        stale: StaleWriter | None = None
        stale_report: dict[str, Any] | None = None
        history: dict[str, Any] | None = None

        def progress(p: MoveProgress) -> None:
            t = ledger.now()
            w = windows.get(p.move_id)
            if w is None:
                w = windows[p.move_id] = MoveWindow(p.move_id, p.buckets, p.source, p.target, t)
                ledger.event("note", f"move {p.move_id} of {len(p.buckets)} buckets started")
            w.phases.setdefault(p.phase, t)
            if p.phase in ("done", "aborted"):
                w.end = t
                took = f" in {p.seconds:.2f}s" if p.phase == "done" else ""
                log(f"[{NAME}] move {p.move_id} {p.source} -> {p.target} {p.phase}{took}")
            if variant == "source-crash" and p.phase == "copying" and not crash:
                # here, before the mover goes on (a second's stall of the event loop at most):
                # the crash lands in the copy, every time
                crash.update(_crash_source(clusters, ctx, p))

        from .workload import DrillWorkload

        async with ShardedRouter(dict(configs), buckets=BUCKETS) as router:
            router.add_observer(LedgerObserver(ledger))
            before = router.stats()["buckets"]
            directory = router.directory
            assert directory is not None
            plan = plan_rebalance(directory, list(router.shards), limit=MOVE_LIMIT)
            planned = {b: str(directory.owners[b]) for batch, _ in plan for b in batch}
            if history_mb > 0:
                history = await _load_history(clusters, opts.schema, planned, history_mb, log)
            workload = DrillWorkload(router, ledger, prefix=prefix, sessions=opts.sessions)
            # sessions in the buckets that will move, and in those that stay
            workload.session_ids = spread_sessions(
                prefix, opts.sessions, [batch for batch, _ in plan], BUCKETS
            )
            workload.start()
            try:
                total = len(workload.session_ids)
                await _wait_until(lambda: ledger.sessions_acked_since(0) >= total, 30)
                if variant == "stale-writer":
                    wanted = [
                        batch[j % len(batch)] for batch, _ in plan for j in range(STALE_PER_MOVE)
                    ]
                    stale = StaleWriter(
                        configs, ledger, sessions_in(f"{prefix}-stale", wanted, BUCKETS)
                    )
                    await stale.router.open()
                    stale.owner_before = {s: planned[bucket_of(s, BUCKETS)] for s in stale.sids}
                    acked = await stale.write(1)
                    log(f"[{NAME}] stale writer: {acked}/{len(stale.sids)} writes before the moves")
                await asyncio.sleep(max(0.0, opts.warmup - ledger.now()))
                # what the moving buckets hold as the moves start (the rate's volume)
                sizes = await asyncio.to_thread(bucket_sizes, clusters, opts.schema, planned)
                log(f"[{NAME}] rebalancing onto s3 (at most {MOVE_LIMIT} buckets a move)")
                t0 = ledger.now()
                if kill_mover:
                    killed = await _killed_and_resumed(
                        router, configs, kill_mover, progress, failures, log
                    )
                    moved = killed.pop("moved")
                elif variant == "source-crash":
                    crashed = await _crashed_and_rebalanced(router, ctx, crash, progress, failures)
                    moved = crashed.pop("moved")
                else:
                    results = await rebalance(router, limit=MOVE_LIMIT, progress=progress)
                    moved = {r.move_id: dataclasses.asdict(r) for r in results}
                rebalance_s = ledger.now() - t0
                if stale is not None:
                    stale_report = await _stale_after(stale, log)
                await asyncio.sleep(opts.after)
            finally:
                await workload.finish()
                if stale is not None:
                    await stale.router.close()
            after = router.stats()["buckets"]
            sids = workload.session_ids + (stale.sids if stale else [])
            owners = owners_of(router, sids)
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
            r = moved.get(m["move_id"], {})
            m["rows_moved"] = r.get("rows_moved")
            cut = r.get("pause")
            m["cutover_s"] = round(cut, 4) if cut is not None else None
            m["aborted"] = m["move_id"] in (crashed or {}).get("aborted", [])
        # the pause of a move that no session's write hit is no measurement: left out; nor
        # is the killed move's (it lasts until the mover runs again: reported per move), nor
        # the crashed move's (aborted)
        broken = set(killed["resumed"]) if killed else set()
        if crashed:
            broken |= set(crashed["aborted"]) | {crash.get("move_id", "")}
        pauses = [
            float(m["pause_s"]) for m in moves if m["writes_during"] and m["move_id"] not in broken
        ]
        pause = {
            "p50_s": round(percentile(pauses, 0.5), 4),
            "p99_s": round(percentile(pauses, 0.99), 4),
            "max_s": round(max(pauses, default=0.0), 4),
            "moves_measured": len(pauses),
        }
        rows_moved = sum(int(r["rows_moved"]) for r in moved.values())
        bytes_s3 = int(status["shards"]["s3"]["bytes"])
        left = leftovers(status)
        if stale is not None and stale_report is not None:
            stale_report["landed_once_on_new_owner"] = await asyncio.to_thread(
                _landed_once, clusters, opts.schema, f"{prefix}-stale", stale, owners
            )
            failures += _stale_failures(stale_report)
        if crashed is not None:
            crashed["writes_after_promotion"] = _acked_after(
                ledger, crashed.get("promoted_at_s"), owners, crash.get("source")
            )
            elsewhere = lost_off_shard(ledger, stored, crash.get("source"))
            if elsewhere:  # the promoted replica's WAL explains no loss on another shard
                failures.append(
                    f"{elsewhere} acknowledged writes lost on a shard that did not crash"
                )
            if not crashed["writes_after_promotion"]:
                failures.append(
                    "no write of a session staying on the crashed source was acknowledged "
                    "after its replica's promotion"
                )
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
                "variant": variant or (f"kill-mover {kill_mover}" if kill_mover else None),
                "buckets": BUCKETS,
                "buckets_before": before,
                "buckets_after": after,
                "moves": moves,
                "move_count": len(moved),
                "mover_killed": killed,
                "stale_writer": stale_report,
                "source_crash": crashed,
                "write_pause": pause,
                "targets": {"p99_s": PAUSE_P99_TARGET, "max_s": PAUSE_MAX_TARGET},
                "rows_moved": rows_moved,
                "bytes_on_s3_after": bytes_s3,
                "history": history,
                "moving_rate": moving_rate(list(moved.values()), sizes),
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


async def _load_history(
    clusters: ShardClusters,
    schema: str,
    planned: dict[int, str],
    mb: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """About ``mb`` MB of history into the buckets that will move (``planned``: bucket ->
    its shard now), shared out by bucket count, on each shard's primary."""
    t0 = time.monotonic()
    loaded = 0
    for shard in sorted(set(planned.values())):
        mine = [b for b, o in planned.items() if o == shard]
        loaded += await asyncio.to_thread(
            load_history,
            clusters.clusters[shard].primary,
            schema,
            mine,
            mb * len(mine) / len(planned),
            total_buckets=BUCKETS,
            prefix="history",
        )
    out = {"mb_asked": mb, "mb_loaded": round(loaded / 1e6, 1)}
    out["load_s"] = round(time.monotonic() - t0, 1)
    log(f"[{NAME}] loaded {out['mb_loaded']} MB of history in {out['load_s']}s")
    return out


def _crash_source(clusters: ShardClusters, ctx: DrillContext, p: MoveProgress) -> dict[str, Any]:
    """Crash the primary of move ``p``'s source (its replica has replayed the move's record
    first: it is what the promoted primary has to abort)."""
    c = clusters.clusters[p.source]
    ctx.cluster, ctx.shard = c, p.source
    t0 = time.monotonic()
    try:
        c.wait_caught_up(10)
    except Exception as exc:  # the crash goes ahead: the drill's checks say what it cost
        ctx.log(f"the source's replica did not catch up before the crash: {exc}")
    old = c.primary
    ctx.old_primary = old.name
    ctx.mark("fault", f"crash {old.name} (primary of move {p.move_id}'s source) at {p.phase}")
    c.crash(old)
    return {
        "move_id": p.move_id,
        "source": p.source,
        "node": old.name,
        "phase": p.phase,
        # how long the event loop (the workload's too) stood still for the crash
        "stall_s": round(time.monotonic() - t0, 3),
    }


async def _crashed_and_rebalanced(
    router: ShardedRouter,
    ctx: DrillContext,
    crash: dict[str, Any],
    progress: Callable[[MoveProgress], None],
    failures: list[str],
) -> dict[str, Any]:
    """The rebalance, whose first move's source primary crashes at its copy (see
    :func:`_crash_source`); the most caught-up replica is promoted, the move aborted, and
    the rebalance run again from the new primary: what happened (``moved``: the results)."""
    moved: dict[str, dict[str, Any]] = {}
    error = None
    try:
        results = await rebalance(router, limit=MOVE_LIMIT, progress=progress)
        moved.update((r.move_id, dataclasses.asdict(r)) for r in results)
        failures.append("the mover did not stop when its source's primary crashed")
    except Exception as exc:
        error = type(exc).__name__ + (f": {str(exc).splitlines()[0]}" if str(exc) else "")
        ctx.log(f"the mover stopped: {error}")
    if not crash:
        failures.append("no move reached its copy: the source was never crashed")
        return {"mover_error": error, "aborted": [], "moved": moved}
    promoted = await _promote_most_caught_up(ctx)
    t_promoted = ctx.ledger.now()
    left = (await shard_status(router))["in_progress"]
    aborted = await abort_move(router, progress=progress)
    ctx.log(f"aborted {', '.join(aborted) or 'nothing'}; rebalancing again")
    if crash["move_id"] not in aborted:
        failures.append(f"the crashed move {crash['move_id']} was not aborted")
    results = await rebalance(router, limit=MOVE_LIMIT, progress=progress)
    moved.update((r.move_id, dataclasses.asdict(r)) for r in results)
    if not results:
        failures.append("the rebalance run again after the failover moved nothing")
    return {
        **crash,
        "mover_error": error,
        "promoted": promoted.name,
        "promoted_at_s": round(t_promoted, 3),
        "in_progress_after_crash": left,
        "aborted": aborted,
        "moves_after_failover": len(results),
        "moved": moved,
    }


def _acked_after(ledger: Ledger, t: float | None, owners: dict[str, str], shard: str | None) -> int:
    """Writes acknowledged after ``t`` of the sessions ``shard`` owns at the end."""
    if t is None or shard is None:
        return 0
    return sum(
        1
        for w in ledger.writes
        if w.ok and w.end is not None and w.end > t and owners.get(w.session) == shard
    )


def lost_off_shard(ledger: Ledger, stored: StoredItems, shard: str | None) -> int:
    """Acknowledged batches missing from ``stored`` whose token has no part for ``shard``
    (the crashed source): a loss the crash cannot explain, in async mode too."""
    have = {(sid, n) for sid, items in stored.items() for n, _ in items}
    out = 0
    for w in ledger.writes:
        if w.ok and (w.session, w.n) not in have:
            try:
                mine = shard in shard_tokens.parse(w.token or "")
            except ValueError:
                mine = False
            out += not mine
    return out


async def _stale_after(stale: StaleWriter, log: Callable[[str], None]) -> dict[str, Any]:
    """The stale writer's writes after the flips (batch 2 of each session at once)."""
    n = len(stale.sids)
    at_resume = stale.stale()
    redirects = stale.router.redirects
    acked = await stale.write(2)
    got = stale.router.redirects - redirects
    log(f"[{NAME}] stale writer: {acked}/{n} writes after the flips, {got} redirects")
    return {
        "sessions": n,
        "stale_at_resume": at_resume,
        "writes_after_flip": n,
        "acknowledged_after_flip": acked,
        "redirects": got,
    }


def _landed_once(
    clusters: ShardClusters, schema: str, prefix: str, stale: StaleWriter, owners: dict[str, str]
) -> int:
    """How many of the stale writer's sessions now owned by another shard hold batch 2 once,
    whole, on that shard (read on its writable server)."""
    stored: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for shard in sorted({owners[s] for s in stale.sids}):
        _, dsn = find_writable(clusters.shard_node_dsns(shard))
        stored[shard] = load_stored(dsn, schema, prefix)
    landed = 0
    for sid in stale.sids:
        new = owners[sid]
        items = stored[new].get(sid, [])
        if new != stale.owner_before[sid] and sorted(x for x in items if x[0] == 2) == [
            (2, 0),
            (2, 1),
        ]:
            landed += 1
    return landed


def _stale_failures(r: dict[str, Any]) -> list[str]:
    n = r["sessions"]
    out = []
    if r["stale_at_resume"] != n:
        out.append(
            f"the stale writer's directory was fresh for {n - r['stale_at_resume']} sessions"
        )
    if r["acknowledged_after_flip"] != n:
        out.append(f"the stale writer: {r['acknowledged_after_flip']} of {n} writes acknowledged")
    if r["redirects"] != n:
        out.append(
            f"the stale writer's {n} writes after the flips met {r['redirects']} refusals "
            "(one each expected: the old owner refuses each)"
        )
    if r.get("landed_once_on_new_owner") != n:
        out.append(
            f"{r.get('landed_once_on_new_owner')} of the stale writer's {n} writes are stored "
            "once on the new owner"
        )
    return out


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
        "moved": {r["move_id"]: r for r in results},
    }


def format_shard_move(r: dict[str, Any]) -> str:
    """The human-readable report."""
    if "moves" not in r:
        return f"{NAME}: FAILED: {'; '.join(r.get('failures', []))}"
    p = r["write_pause"]
    lines = [
        f"{NAME}{' [' + r['variant'] + ']' if r.get('variant') else ''} "
        f"({r['mode']}, {r['sessions']} sessions, {r['buckets']} buckets): "
        f"{'PASSED' if r['passed'] else 'FAILED'}",
        f"  buckets before {r['buckets_before']}, after {r['buckets_after']}",
        f"  {r['move_count']} moves in {r['rebalance_s']}s, {r['rows_moved']} rows moved, "
        f"s3 holds {r['bytes_on_s3_after']} bytes; {r['redirects']} redirects",
        f"  write pause per move: p50 {p['p50_s']}s, p99 {p['p99_s']}s, max {p['max_s']}s "
        f"(targets: p99 < {r['targets']['p99_s']}s, max < {r['targets']['max_s']}s)",
    ]
    rate = r.get("moving_rate") or {}
    if rate.get("moves_measured"):
        lines.append(
            f"  moving rate (initial copies of {rate['moves_measured']} moves, "
            f"{rate['mb']} MB, {rate['rows']} rows in {rate['copy_s']}s): "
            f"{rate['mb_per_s']} MB/s, {rate['rows_per_s']} rows/s"
        )
    h = r.get("history")
    if h:
        lines.append(
            f"  history preloaded into the moving buckets: {h['mb_loaded']} MB "
            f"(asked {h['mb_asked']}) in {h['load_s']}s"
        )
    st = r.get("stale_writer")
    if st:
        lines.append(
            f"  stale writer ({st['sessions']} sessions, directory stale for "
            f"{st['stale_at_resume']} at resume): {st['writes_after_flip']} writes after the "
            f"flips, {st['acknowledged_after_flip']} acknowledged, {st['redirects']} redirects, "
            f"{st.get('landed_once_on_new_owner')} stored once on the new owner"
        )
    c = r.get("source_crash")
    if c:
        lines.append(
            f"  source crash: {c.get('node')} (primary of {c.get('source')}) crashed at "
            f"{c.get('phase')} of move {c.get('move_id')} (a {c.get('stall_s')}s stall); "
            "the mover stopped: "
            f"{c.get('mover_error') or 'no'}; {c.get('promoted')} promoted; aborted "
            f"{', '.join(c.get('aborted', [])) or 'nothing'}; {c.get('moves_after_failover')} "
            f"moves after the failover; {c.get('writes_after_promotion')} writes on the "
            "promoted primary"
        )
    k = r.get("mover_killed")
    if k:
        lines.append(
            f"  mover killed (SIGKILL) at {k['phase']}: exit {k['exit_status']}, "
            f"{len(k['in_progress_after_kill'])} move left in progress, "
            f"{len(k['resumed'])} resumed by the next run"
        )
    for m in r["moves"]:
        if m.get("aborted"):
            lines.append(
                f"    {m['source']} -> {m['target']} {len(m['buckets'])} buckets: aborted "
                f"after {m['seconds']}s, {m['writes_during']} writes during"
            )
            continue
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
