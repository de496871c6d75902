"""`pgsessions cluster up|status|down --shards N`: N local replicated clusters, one per shard.

Shard ``sI`` lives in ``DIR/sI`` (a local cluster of its own: primary + replicas); `up`
prints ``PGSESSIONS_SHARDS`` for :meth:`pgsessions.ShardedRouter.from_env`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path
from typing import Any

from .cluster import STATE_FILE, LocalCluster
from .errors import ClusterError

#: what a shard needs for `pgsessions shard move` (pgsessions.shards.move)
MOVE_SETTINGS = {"wal_level": "logical"}


def shard_dirs(base: Path) -> list[Path]:
    """The shard directories of a sharded layout in ``base`` (empty: not one)."""
    found = [p for p in base.glob("s*") if p.is_dir() and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0)


def shards_command(args: argparse.Namespace, base: Path) -> int:
    """`cluster up --shards N`, and status/down of a sharded layout."""
    from ..cli.common import print_status_table
    from ..router.shard_env import render_shards
    from .local import ensure_local_cluster

    if args.cluster_cmd == "up":
        if args.shards < 1:
            raise ClusterError(f"--shards must be >= 1, got {args.shards}")
        if args.tls or args.pgbouncer or args.archive:
            raise ClusterError(
                "--shards cannot be combined with --tls, --pgbouncer or --archive yet"
            )
        if (base / STATE_FILE).exists():
            raise ClusterError(f"a single cluster runs in {base}: `cluster down` it, or --dir")
        t0 = time.monotonic()
        shards: dict[str, list[str]] = {}
        started: dict[str, bool] = {}
        for i in range(1, args.shards + 1):
            name = f"s{i}"
            # wal_level = logical: buckets move between shards by logical replication
            cluster, started[name] = ensure_local_cluster(
                base / name, replicas=args.replicas, sync=args.sync, settings=MOVE_SETTINGS
            )
            shards[name] = cluster.dsns()
        took = time.monotonic() - t0
        env = render_shards(shards)
        info: dict[str, Any] = {
            "dir": str(base),
            "seconds": round(took, 2),
            "shards": {n: {"hosts": ",".join(d), "started": started[n]} for n, d in shards.items()},
            "env": {"PGSESSIONS_SHARDS": env},
        }
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print(f"{len(shards)} shards in {base} ({took:.1f}s)")
            for n, dsns in shards.items():
                state = "started" if started[n] else "already running"
                print(f"{n} ({state})  primary {dsns[0]}")
                for d in dsns[1:]:
                    print(f"{' ' * len(n)}  replica {d}")
            print(f"\nexport PGSESSIONS_SHARDS={shlex.quote(env)}")
        return 0
    dirs = shard_dirs(base)
    if args.cluster_cmd == "status":
        report = {d.name: LocalCluster.load(d).status() for d in dirs}
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for name, rows in report.items():
                print(f"shard {name}")
                print_status_table(rows)
        return 0
    if args.cluster_cmd == "down":
        for path in dirs:
            LocalCluster.load(path).stop(delete=not args.keep_data)
        if not args.keep_data and base.is_dir() and not any(base.iterdir()):
            base.rmdir()
        kept = "" if args.keep_data else " and deleted"
        print(f"{len(dirs)} shards in {base} stopped{kept}")
        return 0
    return 2
