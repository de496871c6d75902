"""The ``--patroni`` options of ``pgsessions drill``."""

from __future__ import annotations

import argparse
from typing import Any

from ..router.settings import count, flag
from .patroni_scenarios import PATRONI_SCENARIOS, patroni_failover_budget

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
