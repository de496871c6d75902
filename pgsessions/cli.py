"""The `pgsessions` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .devcluster.cli import add_cluster_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgsessions",
        description="Agents SDK sessions on a replicated PostgreSQL cluster.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_cluster_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
