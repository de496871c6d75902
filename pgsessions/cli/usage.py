"""`pgsessions usage`: token and request reports, run on replicas."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from ..router.settings import count, flag
from ..sessions.sql.reports import REPORTS
from .common import (
    add_hosts_arguments,
    add_schema_argument,
    fail,
    print_status_table,
    run_on_router,
)

if TYPE_CHECKING:
    from ..router.protocol import Router

TITLES = {
    "by_day": "tokens and requests by day (UTC)",
    "by_model": "by model",
    "by_branch": "by conversation branch",
    "by_tool": "tool calls by tool",
    "by_session": "sessions using the most tokens",
    "busiest": "busiest sessions (most turns)",
    "largest": "largest conversations active in the range",
}


def add_usage_command(sub: Any) -> None:
    p = sub.add_parser(
        "usage",
        help="tokens and requests by day, model, branch and session; tool calls by tool; "
        "largest and busiest sessions",
        description="Usage reports over a time range, read from a caught-up replica through "
        "the router (as fresh as its last health check). Every statement is bounded by the "
        "range and index-backed; see docs/backups-export-analytics.md for the SQL.",
    )
    add_hosts_arguments(p)
    add_schema_argument(p)
    p.add_argument("--since", default="7d", help="start: 7d (ago), 2026-11-01, ... (default 7d)")
    p.add_argument("--until", default="now", help="end (exclusive; default now)")
    p.add_argument(
        "--top", type=flag(count(1, 10_000)), default=10, help="rows per ranking (default 10)"
    )
    p.add_argument(
        "--report",
        action="append",
        choices=REPORTS,
        help="only this report (repeatable; default all)",
    )
    p.add_argument("--explain", action="store_true", help="print each report's query plan")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=run_usage_command)


def run_usage_command(args: argparse.Namespace) -> int:
    from ..analytics.timerange import parse_instant

    try:
        since, until = parse_instant(args.since), parse_instant(args.until)
    except ValueError as exc:
        return fail("usage", exc)
    return run_on_router(
        "usage", args, lambda router: _usage(args, router, since, until), schema=args.schema
    )


async def _usage(args: argparse.Namespace, router: Router, since: Any, until: Any) -> int:
    from ..analytics.report import columns, explain_report, usage_report

    names = args.report or list(REPORTS)
    if args.explain:
        for name in names:
            plan = await explain_report(router, name, since=since, until=until, top=args.top)
            print(f"== {name}\n{plan}\n")
        return 0
    report = await usage_report(router, since=since, until=until, top=args.top, reports=names)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        return 0
    print(f"usage from {since.isoformat()} to {until.isoformat()}")
    for name in names:
        print(f"\n== {TITLES[name]} (read on the {report.served_by.get(name, '?')})")
        rows = report.reports[name]
        if rows:
            print_status_table(rows, columns(name))
        else:
            print("(none in this range)")
    return 0
