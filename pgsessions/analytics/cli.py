"""`pgsessions usage`: token and request reports, run on replicas."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ..hostargs import NoHostsError, add_hosts_arguments, command_hosts
from .queries import REPORTS

TITLES = {
    "by_day": "tokens and requests by day (UTC)",
    "by_model": "by model",
    "by_session": "sessions using the most tokens",
    "busiest": "busiest sessions (most turns)",
    "largest": "largest conversations active in the range",
}


def add_usage_command(sub: Any) -> None:
    p = sub.add_parser(
        "usage",
        help="tokens and requests by day, model and session; largest and busiest sessions",
        description="Usage reports over a time range, read from a caught-up replica through "
        "the router (as fresh as its last health check). Every statement is bounded by the "
        "range and index-backed; see the README for the SQL.",
    )
    add_hosts_arguments(p)
    p.add_argument(
        "--schema", default=None, help="schema (default PGSESSIONS_SCHEMA or pgsessions)"
    )
    p.add_argument("--since", default="7d", help="start: 7d (ago), 2026-11-01, ... (default 7d)")
    p.add_argument("--until", default="now", help="end (exclusive; default now)")
    p.add_argument("--top", type=int, default=10, help="rows per ranking (default 10)")
    p.add_argument(
        "--report",
        action="append",
        choices=REPORTS,
        help="only this report (repeatable; default all)",
    )
    p.add_argument("--explain", action="store_true", help="print each report's query plan")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=run_usage_command)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(cols: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    table = [list(cols)] + [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def run_usage_command(args: argparse.Namespace) -> int:
    from .timerange import parse_instant

    try:
        since, until = parse_instant(args.since), parse_instant(args.until)
        with command_hosts("usage", args.hosts, local=args.local) as hosts:
            return asyncio.run(_usage(args, hosts, since, until))
    except (NoHostsError, ValueError) as exc:
        print(f"pgsessions usage: {exc}", file=sys.stderr)
        return 2


async def _usage(args: argparse.Namespace, hosts: list[str], since: Any, until: Any) -> int:
    import psycopg

    from ..router import RouterConfig, RouterError, SessionRouter
    from .report import columns, explain_report, usage_report

    overrides: dict[str, object] = {"hosts": hosts}
    if args.schema:
        overrides["schema"] = args.schema
    names = args.report or list(REPORTS)
    try:
        async with SessionRouter(RouterConfig.from_env(**overrides)) as router:
            if args.explain:
                for name in names:
                    plan = await explain_report(
                        router, name, since=since, until=until, top=args.top
                    )
                    print(f"== {name}\n{plan}\n")
                return 0
            report = await usage_report(
                router, since=since, until=until, top=args.top, reports=names
            )
    except (RouterError, psycopg.Error) as exc:
        print(f"pgsessions usage: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        return 0
    print(f"usage from {since.isoformat()} to {until.isoformat()}")
    for name in names:
        print(f"\n== {TITLES[name]} (read on the {report.served_by.get(name, '?')})")
        rows = report.reports[name]
        if rows:
            print_table(columns(name), rows)
        else:
            print("(none in this range)")
    return 0
