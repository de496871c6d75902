"""`pgsessions prune --older-than 30d`: delete expired conversations and old operation ids."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from ..router.settings import count, flag
from .common import (
    add_hosts_arguments,
    add_schema_argument,
    fail,
    run_on_router,
)

if TYPE_CHECKING:
    from ..router.protocol import Router


def add_prune_command(sub: Any) -> None:
    p = sub.add_parser(
        "prune",
        help="delete conversations idle longer than --older-than, and old operation ids",
        description="Delete every conversation whose last write is older than --older-than "
        "(items, usage rows and all), in small transactions that skip rows other servers "
        "hold, then operation ids older than --ops-older-than. Safe to run from cron on "
        "every server at once: each run reports only what it removed.",
    )
    add_hosts_arguments(p)
    add_schema_argument(p)
    p.add_argument("--older-than", required=True, help="idle time: 30d, 12h, 2w, ...")
    p.add_argument(
        "--ops-older-than", default="1h", help="operation ids older than this (default 1h)"
    )
    p.add_argument(
        "--batch", type=flag(count(1, 100_000)), default=100, help="conversations per listing (100)"
    )
    p.add_argument(
        "--item-batch",
        type=flag(count(1, 1_000_000)),
        default=1000,
        help="items per transaction (1000)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_prune_command)


def run_prune_command(args: argparse.Namespace) -> int:
    from ..analytics.timerange import parse_duration

    try:
        older = parse_duration(args.older_than)
        ops = parse_duration(args.ops_older_than)
    except ValueError as exc:
        return fail("prune", exc)
    return run_on_router(
        "prune", args, lambda router: _prune(args, router, older, ops), schema=args.schema
    )


async def _prune(args: argparse.Namespace, router: Router, older: Any, ops: Any) -> int:
    import psycopg

    from ..retention.prune import PruneSummary, prune
    from ..router import RouterError
    from .progress import Progress

    bar = Progress()

    def show(s: PruneSummary) -> None:
        bar.show(f"deleted {s.conversations_deleted} conversations, {s.items_deleted} items")

    try:
        summary = await prune(
            router,
            older_than=older,
            ops_older_than=ops,
            batch=args.batch,
            item_batch=args.item_batch,
            progress=show,
        )
    except (RouterError, psycopg.Error) as exc:
        print(f"pgsessions prune: {exc}", file=sys.stderr)
        return 1
    bar.show("", final=True)
    if args.json:
        print(json.dumps(summary.as_dict()))
        return 0
    print(
        f"pruned conversations idle since before {summary.cutoff}: deleted "
        f"{summary.conversations_deleted} ({summary.items_deleted} items, "
        f"{summary.usage_rows_deleted} usage rows); kept "
        f"{summary.conversations_kept_written_again} written again meanwhile; skipped "
        f"{summary.conversations_skipped_locked} locked; "
        f"{summary.op_ids_deleted} operation ids, {summary.branch_tombstones_deleted} branch "
        f"tombstones; {summary.transactions} transactions in "
        f"{summary.seconds:.2f}s"
    )
    return 0
