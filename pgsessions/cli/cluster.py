"""`pgsessions cluster up|down|status`: the local cluster from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..devcluster.archive import archive_settings, prepare_archive, start_archiving
from ..devcluster.backup_tools import make_tool, parse_backup_arg
from ..devcluster.backups import Backup, BackupTool
from ..devcluster.cluster import STATE_FILE, LocalCluster
from ..devcluster.errors import ClusterError
from ..devcluster.local import DEFAULT_DIR, default_dir, ensure_local_cluster
from ..devcluster.patroni import STATE_FILE as PATRONI_STATE
from ..devcluster.patroni import PatroniCluster
from ..devcluster.pgbouncer import Bouncer, load_bouncers, start_bouncers, stop_bouncers
from ..devcluster.shards import shard_dirs, shards_command
from ..router.settings import count, flag
from .common import print_status_table


def add_cluster_command(sub: Any) -> None:
    p = sub.add_parser("cluster", help="start, inspect or stop the local replicated cluster")
    csub = p.add_subparsers(dest="cluster_cmd", required=True)
    up = csub.add_parser("up", help="start a primary + N streaming replicas and leave them running")
    up.add_argument(
        "--replicas", type=flag(count(0, 16)), default=2, help="number of replicas (default 2)"
    )
    up.add_argument("--sync", action="store_true", help="synchronous replication (ANY 1)")
    up.add_argument(
        "--dir", type=Path, default=None, help=f"state directory (default {DEFAULT_DIR})"
    )
    up.add_argument("--json", action="store_true", help="print the DSNs as JSON")
    up.add_argument(
        "--pgbouncer",
        action="store_true",
        help="also put one PgBouncer (transaction mode) in front of each node; print its DSNs",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="a CA and a certificate per node; only TLS with a SCRAM password is accepted "
        "(password: PGPASSWORD, else a random one, written to a passfile; DSNs verify-full)",
    )
    up.add_argument(
        "--archive",
        type=Path,
        metavar="DIR",
        help="archive WAL into DIR/wal (archive_command) and take a base backup into DIR/base",
    )
    up.add_argument(
        "--backup",
        metavar="TOOL[=DIR]",
        help="back up with pgbackrest or barman (repository in DIR, default next to the state "
        "directory): WAL archived by the tool, a first full backup taken from a replica",
    )
    up.add_argument(
        "--patroni",
        action="store_true",
        help="instead: one etcd and three Patroni members (synchronous_mode, ttl 10, loop_wait 2)",
    )
    up.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="instead: N clusters (s1..sN), each a primary + the replicas; prints "
        "PGSESSIONS_SHARDS for a ShardedRouter",
    )
    st = csub.add_parser("status", help="one line per node: port, role, replay lag")
    st.add_argument("--dir", type=Path, default=None)
    st.add_argument("--json", action="store_true")
    down = csub.add_parser("down", help="stop the servers and delete the state directory")
    down.add_argument("--dir", type=Path, default=None)
    down.add_argument("--keep-data", action="store_true", help="stop, but keep the data")
    p.set_defaults(func=run_cluster_command)


def start_backups(tool: BackupTool, cluster: LocalCluster, started: bool) -> Backup | None:
    """Configure ``tool`` for a cluster this call started and take its first full backup;
    for one already running, check it archives with ``tool`` (no new backup)."""
    if not started:
        if not tool.is_configured(cluster):
            raise ClusterError(
                f"the cluster in {cluster.base_dir} runs without {tool.name} into {tool.root}: "
                f"`pgsessions cluster down` it first, then `cluster up --backup {tool.name}`"
            )
        return None
    print(f"[backup] {tool.name}: setting up {tool.root} and checking archiving", file=sys.stderr)
    tool.configure(cluster)
    print(f"[backup] {tool.name}: first full backup (from a replica)", file=sys.stderr)
    return tool.backup(cluster, "full")


def _bouncers_for_up(cluster: LocalCluster, wanted: bool) -> list[Bouncer]:
    """The cluster's running bouncers; with ``wanted``, started when there are none."""
    running = [b for b in load_bouncers(cluster.base_dir) if b.is_running()]
    if running or not wanted:
        return running
    stop_bouncers(cluster.base_dir)  # leftovers of a killed run
    return start_bouncers(cluster)


def _bouncer_row(b: Bouncer) -> dict[str, Any]:
    return {
        "node": b.node,
        "port": b.port,
        "target_port": b.target_port,
        "pool_mode": b.pool_mode,
        "dsn": b.dsn,
        "running": b.is_running(),
    }


def _patroni_command(args: argparse.Namespace, base: Path) -> int:
    """`cluster up --patroni`, and status/down of a Patroni cluster."""
    if args.cluster_cmd == "up":
        if getattr(args, "pgbouncer", False) or getattr(args, "tls", False):
            raise ClusterError("--pgbouncer and --tls cannot be combined with --patroni yet")
        if (base / PATRONI_STATE).exists():
            pc = PatroniCluster.load(base)
            started = False
            if not any(r["running"] for r in pc.status()):
                raise ClusterError(f"a stopped Patroni cluster is in {base}: `cluster down` it")
        elif (base / STATE_FILE).exists():
            raise ClusterError(f"a pg_ctl cluster runs in {base}: `cluster down` it, or --dir")
        else:
            t0 = time.monotonic()
            pc = PatroniCluster(3, base_dir=base, keep=True).start()
            started = True
            print(
                f"Patroni cluster started in {time.monotonic() - t0:.1f}s in {base}",
                file=sys.stderr,
            )
        info = {
            "dir": str(base),
            "started": started,
            "etcd": pc.etcd_url,
            "members": {m.name: {"dsn": m.dsn, "rest": m.rest_url} for m in pc.members},
            "hosts": ",".join(pc.dsns()),
            "patroni": pc.rest_urls(),
        }
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"etcd     {pc.etcd_url}")
            for m in pc.members:
                print(f"{m.name}  {m.dsn}  REST {m.rest_url}")
            print(f"\nexport PGSESSIONS_HOSTS={info['hosts']}")
        return 0
    pc = PatroniCluster.load(base)
    if args.cluster_cmd == "status":
        rows = pc.status()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print_status_table(rows, ("member", "port", "rest", "role", "state", "timeline", "lag"))
        return 0
    if args.cluster_cmd == "down":
        pc.stop(delete=not args.keep_data)
        print(f"Patroni cluster in {base} stopped" + ("" if args.keep_data else " and deleted"))
        return 0
    return 2


def run_cluster_command(args: argparse.Namespace) -> int:
    base = (args.dir or default_dir()).resolve()
    try:
        if (base / PATRONI_STATE).exists() or getattr(args, "patroni", False):
            return _patroni_command(args, base)
        if getattr(args, "shards", None) is not None or shard_dirs(base):
            return shards_command(args, base)
        if args.cluster_cmd == "up":
            if args.tls and args.pgbouncer:
                raise ClusterError("--tls and --pgbouncer cannot be combined yet")
            t0 = time.monotonic()
            if args.backup and (args.archive or args.tls):
                raise ClusterError("--backup cannot be combined with --archive or --tls")
            archive = prepare_archive(args.archive) if args.archive else None
            tool = None
            if args.backup:
                name, repo = parse_backup_arg(args.backup, base.parent)
                tool = make_tool(name, repo)
            settings = archive_settings(archive) if archive else None
            cluster, started = ensure_local_cluster(
                base,
                replicas=args.replicas,
                sync=args.sync,
                tls=args.tls,
                settings=tool.settings() if tool is not None else settings,
            )
            backup = start_archiving(cluster, archive, new=started) if archive else None
            tool_backup = start_backups(tool, cluster, started) if tool is not None else None
            bouncers = _bouncers_for_up(cluster, args.pgbouncer)
            took = time.monotonic() - t0
            info: dict[str, Any] = {
                "dir": str(base),
                "started": started,
                "seconds": round(took, 2),
                "primary": cluster.primary.dsn,
                "replicas": [r.dsn for r in cluster.replicas],
                "hosts": ",".join(cluster.dsns()),
                "sync": cluster.sync,
            }
            if cluster.tls is not None:
                info["passfile"] = str(cluster.tls.passfile)
                info["sslrootcert"] = str(cluster.tls.ca_cert)
            if backup is not None:
                info["archive"] = {"dir": str(archive), **asdict(backup)}
            if tool is not None:
                info["backup"] = {
                    "tool": tool.name,
                    "dir": str(tool.root),
                    "full": asdict(tool_backup) if tool_backup is not None else None,
                }
            if bouncers:
                info["direct_hosts"] = info["hosts"]
                info["pgbouncer"] = {b.node: b.dsn for b in bouncers}
                info["hosts"] = ",".join(b.dsn for b in bouncers)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                verb = f"started in {took:.1f}s" if started else "already running"
                print(f"cluster {verb} in {base}")
                print(f"primary  {cluster.primary.dsn}")
                for r in cluster.replicas:
                    print(f"replica  {r.dsn}")
                for b in bouncers:
                    print(f"pgbouncer ({b.pool_mode}) for {b.node}  {b.dsn}")
                if backup is not None:
                    print(f"archive  WAL to {archive}/wal; base backup {backup.path}")
                if tool is not None:
                    print(f"backup   {tool.name} repository in {tool.root}")
                    if tool_backup is not None:
                        print(f"         full backup {tool_backup.label} from "
                              f"{tool_backup.source}")  # fmt: skip
                # quoted: a TLS DSN's query string holds '&'
                print(f"\nexport PGSESSIONS_HOSTS={shlex.quote(info['hosts'])}")
                if cluster.tls is not None:
                    print(f"export PGPASSFILE={shlex.quote(str(cluster.tls.passfile))}")
            return 0
        cluster = LocalCluster.load(base)
        if args.cluster_cmd == "status":
            rows = cluster.status()
            bouncers = load_bouncers(base)
            if args.json:
                print(
                    json.dumps(rows, indent=2)
                    if not bouncers
                    else json.dumps(
                        {"nodes": rows, "pgbouncer": [_bouncer_row(b) for b in bouncers]}, indent=2
                    )
                )
            else:
                print_status_table(rows)
                for b in bouncers:
                    row = _bouncer_row(b)
                    print(
                        f"pgbouncer for {b.node}: port {b.port} -> {b.target_port}, "
                        f"{b.pool_mode} mode, {'running' if row['running'] else 'NOT running'}"
                    )
            return 0
        if args.cluster_cmd == "down":
            n = stop_bouncers(base)
            if n:
                print(f"stopped {n} pgbouncer(s)")
            cluster.stop(delete=not args.keep_data)
            print(f"cluster in {base} stopped" + ("" if args.keep_data else " and deleted"))
            return 0
    except ClusterError as exc:
        print(f"pgsessions cluster: {exc}", file=sys.stderr)
        return 1
    return 2
