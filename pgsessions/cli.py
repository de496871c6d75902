"""The `pgsessions` command: cluster, migrate, status, demo, drill, bench, serve-metrics,
export, import, usage, prune."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from types import FrameType

# (module, function adding the sub-command): each area owns its own command
COMMANDS = [
    ("pgsessions.devcluster.cli", "add_cluster_command"),
    ("pgsessions.sessions.cli", "add_migrate_command"),
    ("pgsessions.router.status_cli", "add_status_command"),
    ("pgsessions.demo.cli", "add_demo_command"),
    ("pgsessions.drills.cli", "add_drill_command"),
    ("pgsessions.benchcli", "add_bench_command"),
    ("pgsessions.monitoring.cli", "add_serve_metrics_command"),
    ("pgsessions.export.cli", "add_export_commands"),
    ("pgsessions.analytics.cli", "add_usage_command"),
    ("pgsessions.retention.cli", "add_prune_command"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgsessions",
        description="Agents SDK sessions on a replicated PostgreSQL cluster. With no hosts "
        "given (--hosts or PGSESSIONS_HOSTS), demo, drill and bench use the local cluster in "
        ".pgsessions/; migrate, status, serve-metrics, export, import, usage and prune refuse "
        "unless given --local.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, func_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # that area has not landed in this build
            raise
        getattr(module, func_name)(sub)
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
