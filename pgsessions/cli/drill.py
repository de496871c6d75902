"""``pgsessions drill``: failover drills with a pass/fail report."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ..drills.patroni_scenarios import PATRONI_SCENARIOS, patroni_failover_budget
from ..drills.pitr import add_pitr_arguments, run_pitr_command
from ..drills.report import format_scenario, format_summary
from ..drills.scenarios import BREAKS, SCENARIOS
from ..router.dsn import split_hosts
from ..router.settings import count, flag, non_negative

if TYPE_CHECKING:
    from ..drills.options import DrillOptions


PATRONI_NAMES = list(PATRONI_SCENARIOS)


def add_patroni_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Patroni",
        "With --patroni each scenario runs on a fresh Patroni cluster (one etcd, three "
        f"members; --sync: synchronous_mode): {', '.join(PATRONI_NAMES)}.",
    )
    g.add_argument(
        "--patroni",
        action="store_true",
        help="Patroni moves the primary: run the Patroni scenarios instead",
    )
    g.add_argument(
        "--patroni-rest",
        action="store_true",
        help="the router also reads Patroni's REST API (RouterConfig.patroni)",
    )
    g.add_argument(
        "--ttl", type=flag(count(5, 3600)), default=10, help="Patroni's ttl (default 10)"
    )
    g.add_argument(
        "--loop-wait", type=flag(count(1, 3600)), default=2, help="Patroni's loop_wait (default 2)"
    )


def patroni_options(args: argparse.Namespace) -> dict[str, Any]:
    """DrillOptions keywords for --patroni; the router waits through Patroni's own timing."""
    if not args.patroni:
        if args.ttl != 10 or args.loop_wait != 2 or args.patroni_rest:
            raise ValueError("--ttl, --loop-wait and --patroni-rest need --patroni")
        return {}
    if args.trigger or args.hosts:
        raise ValueError("--patroni starts its own clusters: leave --hosts and --trigger out")
    if args.ttl < 5 or args.loop_wait < 1 or args.ttl <= args.loop_wait:
        raise ValueError("Patroni needs --ttl >= 5, --loop-wait >= 1 and ttl > loop_wait")
    return {
        "patroni": True,
        "patroni_ttl": args.ttl,
        "patroni_loop_wait": args.loop_wait,
        "patroni_rest": args.patroni_rest,
        "failover_timeout": max(20.0, patroni_failover_budget(args.ttl, args.loop_wait)),
    }


def add_drill_command(sub: Any) -> None:
    names = ", ".join(SCENARIOS)
    p = sub.add_parser(
        "drill",
        help="failover drills: a live workload through a fault, checked against the database",
        description=(
            f"Scenarios: {names}, or all. Each runs on a fresh local cluster (started and "
            "stopped here) while sessions write and read through the router; afterwards every "
            "acknowledged write and every read is checked against the database. Exit status 0 "
            "only when every invariant held. On a real deployment give --hosts (or "
            "PGSESSIONS_HOSTS) and --trigger: the drill runs the workload, calls the trigger "
            "and checks the same invariants; it never stops or promotes a server itself."
        ),
    )
    p.add_argument(
        "scenario",
        nargs="?",
        default="all",
        choices=[
            *SCENARIOS,
            *(n for n in PATRONI_NAMES if n not in SCENARIOS),
            "pitr",
            "shard-move",
            "all",
        ],
        help="which scenario (default: all failover scenarios; pitr: point-in-time recovery; "
        "shard-move: two shards, a third added and the buckets rebalanced onto it while "
        "the workload writes)",
    )
    add_patroni_arguments(p)
    p.add_argument(
        "--sync",
        action="store_true",
        help="synchronous replication: no acknowledged write may be lost",
    )
    p.add_argument(
        "--sessions",
        type=flag(count(1, 10_000)),
        default=24,
        help="concurrent sessions (default 24)",
    )
    p.add_argument(
        "--warmup",
        type=flag(non_negative(3600.0)),
        default=2.0,
        help="seconds of workload before the fault",
    )
    p.add_argument(
        "--hold",
        type=flag(non_negative(3600.0)),
        default=2.5,
        help="how long a fault lasts (seconds)",
    )
    p.add_argument(
        "--after",
        type=flag(non_negative(3600.0)),
        default=1.5,
        help="seconds of workload after recovery",
    )
    p.add_argument(
        "--shards",
        type=flag(count(1, 8)),
        default=1,
        help="run on N local shards (a cluster each, one ShardedRouter); the fault hits "
        "shard s1, and the sessions of the other shards must see no error (default 1)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--plot", metavar="FILE.png", help="draw a timeline (needs matplotlib)")
    p.add_argument(
        "--keep-cluster",
        action="store_true",
        help="leave each scenario's cluster running (its directory is reported)",
    )
    p.add_argument(
        "--hosts",
        nargs="+",
        metavar="DSN",
        help="a real deployment (with --trigger); default: PGSESSIONS_HOSTS",
    )
    p.add_argument(
        "--trigger",
        metavar="COMMAND",
        help="shell command that causes the failover, e.g. 'patronictl switchover'",
    )
    p.add_argument(
        "--schema",
        default="pgsessions_drill",
        help="schema for the drill's sessions (default pgsessions_drill)",
    )
    p.add_argument("--no-fsync", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--break-router",
        choices=BREAKS,
        help="test the drill itself: break the router on purpose (must FAIL)",
    )
    p.add_argument(
        "--kill-mover",
        nargs="?",
        const="copying",
        choices=["copying", "caught-up", "fenced", "flipped"],
        metavar="PHASE",
        help="shard-move: run the rebalance in a process of its own, kill it (SIGKILL) at "
        "the first step of PHASE (copying, caught-up, fenced, flipped; default copying) "
        "and run it again to resume",
    )
    p.add_argument(
        "--variant",
        choices=["stale-writer", "source-crash"],
        help="shard-move: stale-writer: a second router whose directory stays stale writes "
        "to sessions of the moving buckets before the moves, pauses across the flips and "
        "writes again: each write must be refused by the old owner once (a redirect) and "
        "stored once on the new owner; source-crash: the primary of the first move's source "
        "crashes during its copy, its replica is promoted, the move must stop and be "
        "aborted, and the rebalance runs again from the new primary (use --sync: with "
        "asynchronous replication only writes beyond what the replica received may be lost)",
    )
    p.add_argument(
        "--history-mb",
        type=flag(non_negative(100_000.0)),
        default=0.0,
        metavar="N",
        help="shard-move: preload about N MB of history (1 kB messages) into the buckets "
        "that will move, so that the moving rate (MB/s, rows/s of the copies) is measured "
        "on a real volume (default 0)",
    )
    add_pitr_arguments(p)
    p.set_defaults(func=run_drill_command)


def options_from_args(args: argparse.Namespace) -> DrillOptions:
    hosts: list[str] = []
    if args.trigger:
        raw = args.hosts or os.environ.get("PGSESSIONS_HOSTS", "")
        hosts = split_hosts(raw if isinstance(raw, str) else list(raw))
        if not hosts:
            raise ValueError("--trigger needs --hosts (or PGSESSIONS_HOSTS)")
        if args.scenario != "all":
            raise ValueError("with --trigger the scenario is the trigger: leave SCENARIO out")
    elif args.hosts:
        raise ValueError(
            "--hosts needs --trigger: the drill never breaks servers it did not start "
            "(without --hosts it starts its own local clusters)"
        )
    from ..drills.options import DrillOptions

    patroni = patroni_options(args)
    if args.shards > 1:
        if args.patroni or args.trigger:
            raise ValueError(
                "--shards starts its own local clusters: leave --patroni and --trigger out"
            )
        if args.break_router:
            raise ValueError("--break-router breaks one cluster's router: leave --shards out")
        if args.sessions < 2 * args.shards:
            raise ValueError(f"--shards {args.shards} needs --sessions >= {2 * args.shards}")
    table = PATRONI_NAMES if args.patroni else list(SCENARIOS)
    if args.scenario not in (*table, "all"):
        flag = "with" if args.patroni else "without"
        raise ValueError(f"{args.scenario!r} is no scenario {flag} --patroni: {', '.join(table)}")
    scenarios = list(table) if args.scenario == "all" else [args.scenario]
    return DrillOptions(
        scenarios=scenarios,
        sync=args.sync,
        sessions=args.sessions,
        warmup=args.warmup,
        hold=args.hold,
        after=args.after,
        hosts=hosts,
        trigger=args.trigger,
        schema=args.schema,
        keep_cluster=args.keep_cluster,
        fsync=not args.no_fsync,
        break_router=args.break_router,
        shards=args.shards,
        **patroni,
    )


def run_drill_command(args: argparse.Namespace) -> int:
    if args.scenario == "pitr":
        return run_pitr_command(args)
    if args.scenario == "shard-move":
        return run_shard_move_command(args)
    if args.kill_mover or args.variant or args.history_mb:
        print(
            "pgsessions drill: --kill-mover, --variant and --history-mb are for shard-move",
            file=sys.stderr,
        )
        return 2
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        print(f"pgsessions drill: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            from ..drills.plot import MISSING

            print(f"pgsessions drill: {MISSING}", file=sys.stderr)
            return 2
    from ..drills.runner import quiet_pool_logs, run_drill  # loads the Agents SDK (~2 s)

    quiet_pool_logs()
    reports = asyncio.run(run_drill(opts))
    if args.plot:
        from ..drills.plot import plot_reports

        plot_reports(reports, args.plot)
        print(f"timeline written to {args.plot}", file=sys.stderr)
    ok = all(r["passed"] for r in reports)
    if args.json:
        print(json.dumps({"passed": ok, "scenarios": reports}, indent=2))
    else:
        for r in reports:
            print(format_scenario(r))
            print()
        print(format_summary(reports))
    return 0 if ok else 1


def run_shard_move_command(args: argparse.Namespace) -> int:
    """``pgsessions drill shard-move``: its own local shards, the moves under the workload."""
    if args.hosts or args.trigger or args.patroni or args.break_router or args.shards != 1:
        print(
            "pgsessions drill: shard-move starts its own three local shards: leave --hosts, "
            "--trigger, --patroni, --break-router and --shards out",
            file=sys.stderr,
        )
        return 2
    if args.kill_mover and args.variant:
        print("pgsessions drill: --kill-mover and --variant go one at a time", file=sys.stderr)
        return 2
    from ..drills.options import DrillOptions
    from ..drills.runner import quiet_pool_logs
    from ..drills.shard_move import format_shard_move, run_shard_move

    quiet_pool_logs()
    opts = DrillOptions(
        scenarios=["shard-move"],
        sync=args.sync,
        sessions=args.sessions,
        warmup=args.warmup,
        after=args.after,
        schema=args.schema,
        keep_cluster=args.keep_cluster,
        fsync=not args.no_fsync,
    )
    report = asyncio.run(
        run_shard_move(
            opts, kill_mover=args.kill_mover, variant=args.variant, history_mb=args.history_mb
        )
    )
    if args.json:
        print(json.dumps({"passed": report["passed"], "scenarios": [report]}, indent=2))
    else:
        print(format_shard_move(report))
    return 0 if report["passed"] else 1
