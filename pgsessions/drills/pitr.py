"""``pgsessions drill pitr``: a point-in-time recovery drill with the live workload's ledger.

1. A local cluster archives its WAL into a backup tool's repository (``--tool``: a plain
   ``cp`` archive, pgBackRest's ``archive-push`` or Barman's incoming directory).
2. The drill workload writes and reads through the router; online backups are taken while it
   runs (cp: pg_basebackup from the primary; pgBackRest: full, differential and incremental
   from a replica; Barman: a full streaming backup from a replica).
3. A restore target is recorded between writes: the primary's WAL flush position and clock.
4. The workload goes on past the target, then the disaster: a bad deploy runs a
   ``clear_session`` loop over every session.
5. The tool restores the newest backup plus the archived WAL into a new data directory,
   stopped at the target, and promotes it (pgBackRest: then a delta restore over it).
6. The ledger is checked against it: every batch acknowledged before the target is there,
   exactly once, whole and in order; nothing written after the target is; and the router
   reads every session from it.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .ledger import WriteRecord

if TYPE_CHECKING:
    from ..devcluster.backups import BackupKind

TARGETS = ("lsn", "time")
TOOLS = ("cp", "pgbackrest", "barman")  # devcluster.backups.TOOLS, without importing it here


@dataclass
class PitrOptions:
    """What ``pgsessions drill pitr`` was asked to do."""

    target: str = "lsn"
    #: cp (archive_command + pg_basebackup), pgbackrest or barman
    tool: str = "cp"
    sync: bool = False
    sessions: int = 16
    warmup: float = 2.0
    after: float = 1.5
    schema: str = "pgsessions_drill"
    keep: bool = False
    fsync: bool = True
    #: test the drill itself: restore to the end of the archive instead of the target
    break_target: bool = False
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr))


def check_restore(
    writes: Sequence[WriteRecord],
    stored: dict[str, list[tuple[int, int]]],
    t_before: float,
    t_after: float,
    items_per_batch: int = 2,
) -> dict[str, Any]:
    """Compare the ledger with what the restored server holds.

    Writes acknowledged before ``t_before`` (ledger time, just before the target was read)
    must be present exactly once, whole, in order; writes started after ``t_after`` (just
    after it was read) must be absent; writes in flight across the target may go either way
    but never torn. Returns counts and the list of ``failures``.
    """
    before = [w for w in writes if w.ok and w.end is not None and w.end < t_before]
    after = [w for w in writes if w.start > t_after]
    acked = {id(w) for w in before}  # by identity: `w not in before` was quadratic
    in_flight = [w for w in writes if id(w) not in acked and w.start <= t_after]
    batches: dict[str, Counter[int]] = {}
    duplicated = reordered = 0
    for sid, items in stored.items():
        duplicated += sum(c - 1 for c in Counter(items).values() if c > 1)
        reordered += sum(1 for a, b in itertools.pairwise(items) if b <= a)
        batches[sid] = Counter(n for n, _ in set(items))

    def present(w: WriteRecord) -> int:
        return batches.get(w.session, Counter()).get(w.n, 0)

    lost = [w for w in before if present(w) == 0]
    torn = sum(1 for w in [*before, *in_flight, *after] if 0 < present(w) < items_per_batch)
    leaked = [w for w in after if present(w) > 0]
    known = {(w.session, w.n) for w in writes}
    unexpected = sum(1 for sid, items in stored.items() for n, _ in items if (sid, n) not in known)
    failures = []
    if lost:
        failures.append(f"{len(lost)} batches acknowledged before the target are missing")
    if leaked:
        failures.append(f"{len(leaked)} batches written after the target were restored")
    for label, value in (
        ("duplicated items", duplicated),
        ("reordered items", reordered),
        ("torn batches", torn),
        ("items the workload never wrote", unexpected),
    ):
        if value:
            failures.append(f"{label}: {value}")
    if not before:
        failures.append("no write was acknowledged before the target: nothing was proven")
    if not after:
        failures.append("no write started after the target: nothing was proven")
    return {
        "passed": not failures,
        "failures": failures,
        "before_target": len(before),
        "after_target": len(after),
        "in_flight_at_target": len(in_flight),
        "in_flight_restored": sum(1 for w in in_flight if present(w) == items_per_batch),
        "lost": len(lost),
        "leaked": len(leaked),
        "duplicated": duplicated,
        "reordered": reordered,
        "torn": torn,
        "unexpected": unexpected,
        "lost_examples": [f"{w.session} batch {w.n}" for w in lost[:5]],
        "leaked_examples": [f"{w.session} batch {w.n}" for w in leaked[:5]],
    }


async def _router_reads(dsn: str, schema: str, stored: dict[str, list[tuple[int, int]]],
                        session_ids: list[str]) -> dict[str, Any]:  # fmt: skip
    """Read every session from the restored server through a SessionRouter, and write once."""
    from ..router import RouterConfig, SessionRouter
    from ..sessions import PostgresSession, migrate
    from .workload import item_tag, make_batch

    mismatched = []
    config = RouterConfig(hosts=[dsn], schema=schema, check_interval=0.2, failover_timeout=10)
    async with SessionRouter(config) as router:
        pending = await migrate(router)  # the schema came back whole: nothing to apply
        for sid in session_ids:
            items = await PostgresSession(sid, router).get_items()
            got = [(t[1], t[2]) for t in map(item_tag, items) if t is not None]
            if got != stored.get(sid, []):
                mismatched.append(sid)
        probe = PostgresSession(f"pitr-probe-{uuid.uuid4().hex[:6]}", router)
        await probe.add_items(make_batch(probe.session_id, 1))
        wrote = len(await probe.get_items()) == 2
    return {
        "sessions_read": len(session_ids),
        "mismatched": mismatched,
        "migrations_applied": pending,
        "write_ok": wrote,
    }


def _workdir() -> Path:
    """A fresh directory the server user can reach."""
    base = Path(tempfile.mkdtemp(prefix="pgsessions-pitr-"))
    base.chmod(0o755)
    return base


def backup_plan(tool: str) -> list[BackupKind]:
    """The backups the drill takes while the workload writes: each kind the tool has."""
    return ["full", "diff", "incr"] if tool == "pgbackrest" else ["full"]


def _backup_row(b: Any) -> dict[str, Any]:
    return {
        "label": b.label,
        "kind": b.kind,
        "start_lsn": b.start_lsn,
        "stop_lsn": b.stop_lsn,
        "seconds": round(b.seconds, 3),
        "bytes": b.bytes,
        "stored_bytes": b.stored_bytes,
        "source": b.source,
    }


def _restore_row(restored: Any, replayed: int) -> dict[str, Any]:
    return {
        "seconds": round(restored.seconds, 3),
        "wal_files": restored.wal_files,
        "wal_bytes_replayed": replayed,
        "stopped": restored.stop_message,
    }


def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


async def run_pitr(opts: PitrOptions) -> dict[str, Any]:
    """Run the drill on a local cluster of its own; returns the report (``passed``...)."""
    from ..devcluster import LocalCluster
    from ..devcluster.backup_tools import make_tool
    from ..devcluster.restored import stop_node_dir, stop_restored
    from ..devcluster.target import Target
    from ..router.lsn import parse_lsn
    from ..sessions import PostgresSession, migrate
    from .ledger import Ledger, LedgerObserver
    from .options import DrillOptions
    from .runner import make_router, quiet_pool_logs, router_config
    from .verify import load_stored
    from .workload import DrillWorkload

    log = opts.log
    quiet_pool_logs()
    t_start = time.monotonic()
    base = _workdir()
    repo = base / ("archive" if opts.tool == "cp" else opts.tool)
    mode = "sync" if opts.sync else "async"
    report: dict[str, Any] = {
        "scenario": "pitr",
        "tool": opts.tool,
        "mode": mode,
        "target_kind": opts.target,
    }
    restored = None
    cluster = None
    try:
        tool = make_tool(opts.tool, repo)
        log(f"[pitr] starting a local cluster that archives its WAL with {opts.tool} to {repo}")
        cluster = LocalCluster(
            replicas=2,
            sync=opts.sync,
            fsync=opts.fsync,
            base_dir=base / "cluster",
            keep=True,
            settings=tool.settings(),
        )
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(tool.configure, cluster)
        ledger = Ledger()
        prefix = f"drill-pitr-{uuid.uuid4().hex[:8]}"
        drill_opts = DrillOptions(schema=opts.schema, sessions=opts.sessions)
        config = router_config([n.dsn for n in cluster.nodes], drill_opts, prefix)

        def mark(kind: str, detail: str) -> None:
            e = ledger.event(kind, detail)
            log(f"[pitr] +{e.t:5.2f}s {kind}: {detail}")

        taken = []
        async with make_router(config, drill_opts) as router:
            await migrate(router)
            router.add_observer(LedgerObserver(ledger))
            workload = DrillWorkload(router, ledger, prefix=prefix, sessions=opts.sessions)
            workload.start()
            try:
                deadline = time.monotonic() + 30
                while ledger.sessions_acked_since(0) < opts.sessions:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the workload did not start writing within 30s")
                    await asyncio.sleep(0.05)
                for kind in backup_plan(opts.tool):
                    b = await asyncio.to_thread(tool.backup, cluster, kind)
                    taken.append(b)
                    mark(
                        "backup",
                        f"{kind} backup {b.label} from {b.source}, start {b.start_lsn}: "
                        f"{b.bytes / 2**20:.1f} MiB, {b.stored_bytes / 2**20:.1f} MiB stored, "
                        f"in {b.seconds:.2f}s (writes went on)",
                    )
                backup = taken[-1]
                await asyncio.sleep(opts.warmup)
                t_before = ledger.now()
                row = await asyncio.to_thread(
                    cluster.primary.execute,
                    "SELECT pg_current_wal_flush_lsn()::text, clock_timestamp()::text",
                )
                t_after = ledger.now()
                target_lsn, target_time = row[0]
                mark("target", f"restore target: lsn {target_lsn}, time {target_time}")
                await asyncio.sleep(opts.after)
            finally:
                await workload.finish()
            pre_disaster = await asyncio.to_thread(
                cluster.primary.execute, "SELECT pg_current_wal_flush_lsn()::text"
            )
            mark("disaster", f"a bad deploy runs clear_session on all {opts.sessions} sessions")
            for sid in workload.session_ids:
                await PostgresSession(sid, router).clear_session()
        live = await asyncio.to_thread(load_stored, cluster.primary.dsn, opts.schema, prefix)
        live_items = sum(len(v) for v in live.values())
        mark("damage", f"the live primary now holds {live_items} items of the drill's sessions")
        end_lsn = await asyncio.to_thread(tool.archive_now, cluster)
        mark("archived", f"WAL archived up to {end_lsn}")
        await asyncio.to_thread(cluster.stop, delete=False)
        mark("stopped", "the cluster is stopped: the restore uses the backup repository only")

        target = Target("lsn", target_lsn) if opts.target == "lsn" else Target("time", target_time)
        if opts.break_target:
            target = Target("lsn", pre_disaster[0][0])
            mark("broken", f"restoring past the target on purpose, to {target.value}")
        dest = base / "restore"
        restored = await asyncio.to_thread(tool.restore, backup, dest, target, cluster.bindir)
        mark(
            "restored",
            f"new server on port {restored.node.port} promoted after {restored.seconds:.2f}s "
            f"({restored.wal_files} WAL files from the repository)",
        )

        def replayed_of(r: Any) -> int:
            if r.wal_bytes is not None:
                return int(r.wal_bytes)
            return parse_lsn(target_lsn) - parse_lsn(backup.start_lsn)

        first = _restore_row(restored, replayed_of(restored))
        stored = await asyncio.to_thread(load_stored, restored.dsn, opts.schema, prefix)
        check = check_restore(ledger.writes, stored, t_before, t_after)
        reads = await _router_reads(restored.dsn, opts.schema, stored, workload.session_ids)
        failures = list(check["failures"])
        if live_items:
            failures.append(f"the disaster did not happen: {live_items} items still live")
        if reads["mismatched"]:
            failures.append(
                f"the router read {len(reads['mismatched'])} sessions differently from the table"
            )
        if not reads["write_ok"]:
            failures.append("the restored server did not take a write through the router")

        delta = None
        if opts.tool == "pgbackrest":
            # the restored server took a write: a delta restore puts back only what differs
            await asyncio.to_thread(stop_node_dir, restored.node, cluster.bindir)
            restored = await asyncio.to_thread(
                tool.restore, backup, dest, target, cluster.bindir, delta=True
            )
            mark("delta", f"delta restore over the first one: promoted after "
                 f"{restored.seconds:.2f}s")  # fmt: skip
            again = await asyncio.to_thread(load_stored, restored.dsn, opts.schema, prefix)
            delta_check = check_restore(ledger.writes, again, t_before, t_after)
            failures += [f"delta restore: {f}" for f in delta_check["failures"]]
            if again != stored:
                failures.append("the delta restore holds other items than the full restore")
            delta = {**_restore_row(restored, replayed_of(restored)),
                     "passed": delta_check["passed"] and again == stored}  # fmt: skip
        report.update(
            {
                "passed": not failures,
                "failures": failures,
                "sessions": opts.sessions,
                "target": {"lsn": target_lsn, "time": target_time, "at_s": round(t_before, 3)},
                "backups": [_backup_row(b) for b in taken],
                "base_backup": _backup_row(backup),
                "repository_bytes": _dir_bytes(repo),
                "archived_up_to": end_lsn,
                "restore": first,
                "delta_restore": delta,
                "disaster_items_left_live": live_items,
                "check": {k: v for k, v in check.items() if k not in ("passed", "failures")},
                "router": reads,
                "writes_acknowledged": sum(1 for w in ledger.writes if w.ok),
                "events": [
                    {"t": round(e.t, 3), "kind": e.kind, "detail": e.detail}
                    for e in ledger.events
                    if e.kind
                    in ("backup", "target", "disaster", "damage", "archived", "restored", "delta")
                ],
            }
        )
    except Exception as exc:
        report.update({"passed": False, "failures": [f"the drill could not run: {exc}"]})
    finally:
        if restored is not None and cluster is not None:
            await asyncio.to_thread(stop_restored, restored, cluster.bindir, delete=not opts.keep)
        if cluster is not None:
            await asyncio.to_thread(cluster.stop, delete=not opts.keep)
        if opts.keep:
            report["dir"] = str(base)
        else:
            shutil.rmtree(base, ignore_errors=True)
    report["duration_s"] = round(time.monotonic() - t_start, 1)
    return report


def format_pitr(r: dict[str, Any]) -> str:
    """The report as text."""
    verdict = "PASS" if r.get("passed") else "FAIL"
    head = f"== pitr ({r.get('tool', 'cp')}, {r['mode']}, {r['target_kind']} target) {verdict}"
    if "check" not in r:
        return "\n".join([head, *(f"  FAILED     {f}" for f in r["failures"])])
    c, rs = r["check"], r["restore"]
    lines = [f"{head}  [{r['sessions']} sessions, {r['duration_s']:.1f}s]"]
    for b in r["backups"]:
        lines.append(
            f"  backup     {b['kind']:<4} from {b['source']} at {b['start_lsn']}: "
            f"{b['bytes'] / 2**20:.1f} MiB ({b['stored_bytes'] / 2**20:.1f} MiB stored) "
            f"in {b['seconds']:.2f}s"
        )
    lines += [
        f"  repository {r['repository_bytes'] / 2**20:.1f} MiB after the drill",
        f"  target     +{r['target']['at_s']:.2f}s lsn {r['target']['lsn']}, "
        f"time {r['target']['time']}",
        f"  disaster   clear_session on every session; {r['disaster_items_left_live']} items "
        "left on the live primary",
        _restore_line("restore", rs),
        f"             {rs['stopped'] or '(no stop message)'}",
    ]
    if r.get("delta_restore"):
        lines.append(_restore_line("delta", r["delta_restore"]))
    lines += [
        f"  before     {c['before_target']} batches acknowledged before the target: lost "
        f"{c['lost']}, duplicated {c['duplicated']}, reordered {c['reordered']}, torn {c['torn']}",
        f"  after      {c['after_target']} batches started after it: restored {c['leaked']}",
        f"  in flight  {c['in_flight_at_target']} across the target, "
        f"{c['in_flight_restored']} restored whole",
        f"  router     read {r['router']['sessions_read']} sessions from the restored server, "
        f"{len(r['router']['mismatched'])} differed; a new write "
        + ("succeeded" if r["router"]["write_ok"] else "FAILED"),
    ]
    lines += [f"  FAILED     {f}" for f in r["failures"]]
    return "\n".join(lines)


def _restore_line(label: str, rs: dict[str, Any]) -> str:
    mib = rs["wal_bytes_replayed"] / 2**20
    return (
        f"  {label:<10} {rs['seconds']:.2f}s to a promoted server: {rs['wal_files']} WAL files "
        f"restored, {mib:.1f} MiB of WAL replayed"
    )


def add_pitr_arguments(p: argparse.ArgumentParser) -> None:
    """The drill command's options that only ``pitr`` uses."""
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="lsn",
        help="pitr: restore to an LSN (recovery_target_lsn) or a time (recovery_target_time)",
    )
    p.add_argument(
        "--tool",
        choices=TOOLS,
        default="cp",
        help="pitr: who backs up and restores: cp (archive_command + pg_basebackup, default), "
        "pgbackrest (full, diff, incr from a replica; delta restore) or barman",
    )
    p.add_argument("--break-target", action="store_true", help=argparse.SUPPRESS)


def run_pitr_command(args: argparse.Namespace) -> int:
    if args.hosts or args.trigger:
        print("pgsessions drill pitr: runs on a local cluster of its own (no --hosts)",
              file=sys.stderr)  # fmt: skip
        return 2
    opts = PitrOptions(
        target=args.target,
        tool=args.tool,
        sync=args.sync,
        sessions=args.sessions,
        warmup=args.warmup,
        after=args.after,
        schema=args.schema,
        keep=args.keep_cluster,
        fsync=not args.no_fsync,
        break_target=args.break_target,
    )
    report = asyncio.run(run_pitr(opts))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_pitr(report))
    return 0 if report["passed"] else 1
