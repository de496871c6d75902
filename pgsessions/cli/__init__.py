"""The `pgsessions` command: one module per sub-command (cluster, migrate, status, demo,
drill, bench, serve-metrics, export and import, usage, prune), listed in :data:`COMMANDS`;
:mod:`.common` holds what they share (which hosts, the local cluster on request, tables)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from . import (
    bench,
    cluster,
    demo,
    drill,
    export,
    migrate,
    prune,
    serve_metrics,
    shard,
    status,
    usage,
)

#: every sub-command: the module that defines it and the function that adds its parser.
#: Each module imports only the standard library at import time (``--help`` stays fast) and
#: loads what its command needs when it runs.
COMMANDS = (
    (cluster, cluster.add_cluster_command),
    (migrate, migrate.add_migrate_command),
    (status, status.add_status_command),
    (demo, demo.add_demo_command),
    (drill, drill.add_drill_command),
    (bench, bench.add_bench_command),
    (serve_metrics, serve_metrics.add_serve_metrics_command),
    (export, export.add_export_commands),
    (usage, usage.add_usage_command),
    (prune, prune.add_prune_command),
    (shard, shard.add_shard_command),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgsessions",
        description="Agents SDK sessions on a replicated PostgreSQL cluster. With no hosts "
        "given (--hosts or PGSESSIONS_HOSTS), migrate, status, serve-metrics, export, import, "
        "usage, prune and demo run on the shards of PGSESSIONS_SHARDS if it is set; "
        "otherwise demo, drill and bench use the local cluster in .pgsessions/, and the "
        "others refuse unless given --local.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for _module, add in COMMANDS:
        add(sub)
    return parser


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM: unwind like Ctrl-C so clusters we started are stopped
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
