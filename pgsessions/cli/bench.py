"""`pgsessions bench`: the benchmark against the peers (the harness lives in the repo's bench/).

The harness is not part of the installed package: it is found next to this package in a
clone (``pip install -e``, as `make setup` does). Its options and code live in bench/cli.py.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

_REPO = Path(__file__).resolve().parent.parent.parent


_NEEDS_CLONE = (
    "pgsessions bench needs the repository's bench/ directory, which the installed package "
    "does not hold: run it from a clone after `make setup` (pip install -e '.[dev,bench,plot]')"
)


def _harness() -> ModuleType | None:
    """bench.cli from the clone this package lives in, or None outside a clone."""
    if (_REPO / "bench" / "cli.py").is_file():
        if str(_REPO) not in sys.path:
            sys.path.insert(0, str(_REPO))
        return importlib.import_module("bench.cli")
    return None


def _run(args: argparse.Namespace) -> int:
    harness = _harness()
    if harness is None:
        print(_NEEDS_CLONE, file=sys.stderr)
        return 2
    return int(harness.main(args))


def add_bench_command(sub: Any) -> None:
    """Add `bench` to the `pgsessions` sub-commands (``func`` returns the exit code)."""
    summary = "benchmark pgsessions against SQLAlchemySession, SQLite and a raw psycopg floor"
    harness = _harness()
    if harness is None:
        # outside a clone the options are unknown: take any arguments (also -h) as they come,
        # so that every `pgsessions bench ...` gets the message rather than a usage error
        p = sub.add_parser(
            "bench", help=summary + " (in a clone)", prefix_chars="+", add_help=False
        )
        p.add_argument("ignored", nargs="*")
        p.set_defaults(func=_run)
        return
    p = sub.add_parser(
        "bench",
        help=summary,
        description="Runs every contender on the same cluster (by default a fresh temporary "
        "local cluster, fsync on), interleaved in rounds, and prints ratios against "
        "pgsessions-routed. Exit code 1 when a contender fails the correctness guard.",
    )
    harness.add_arguments(p)
    p.set_defaults(func=_run)
