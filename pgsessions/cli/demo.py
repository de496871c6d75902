"""``pgsessions demo``: agents talking through a replicated cluster, everything measured."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..router import RouterConfig, SessionRouter, ShardedRouter
from ..router.protocol import Router
from ..router.settings import MAX_CONNECTIONS, count, flag, non_negative
from ..sessions import migrate
from .common import shards_given


def add_demo_command(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a live agent workload over the cluster, with metrics and a live view",
        description=(
            "Many concurrent conversations through the Agents SDK Runner (an offline scripted "
            "model, or a real one with OPENAI_API_KEY and --model), stored with "
            "PostgresSession: writes on the primary, history reads on caught-up replicas. "
            "With no --hosts and no PGSESSIONS_HOSTS, the local cluster is started (and "
            "stopped afterwards unless --keep-cluster). Ctrl-C stops and prints the summary."
        ),
    )
    p.add_argument(
        "--duration",
        type=flag(non_negative()),
        default=30.0,
        help="seconds to run (0: until Ctrl-C; default 30)",
    )
    p.add_argument(
        "--sessions",
        type=flag(count(1, 100_000)),
        default=200,
        help="concurrent conversations (default 200)",
    )
    p.add_argument(
        "--think",
        type=flag(non_negative(3600.0)),
        default=1.5,
        help="mean think time between a user's turns, seconds (default 1.5)",
    )
    p.add_argument(
        "--pool",
        type=flag(count(1, MAX_CONNECTIONS)),
        help=(
            "primary pool size (default: sessions/5, between 10 and 40, on the local cluster; "
            "the configuration's own size with --hosts or PGSESSIONS_HOSTS)"
        ),
    )
    p.add_argument("--model", help="a real model name (needs OPENAI_API_KEY)")
    p.add_argument("--hosts", nargs="+", metavar="DSN", help="default: PGSESSIONS_HOSTS")
    p.add_argument(
        "--shards",
        type=flag(count(1, 16)),
        help="run over N local clusters as shards s1..sN (primary + 1 replica each, in the "
        "cluster directory, as `cluster up --shards N` makes them); with no hosts and "
        "PGSESSIONS_SHARDS set, the demo runs over those shards",
    )
    p.add_argument(
        "--keep-cluster", action="store_true", help="leave the local cluster running afterwards"
    )
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument(
        "--metrics-port",
        type=flag(count(0, 65535)),
        default=9464,
        help="port for /metrics (default 9464; a free one if taken)",
    )
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (the live view goes to stderr)",
    )
    p.set_defaults(func=run_demo_command)


def _config(args: argparse.Namespace) -> tuple[RouterConfig | None, str]:
    if args.hosts:
        return _sized(RouterConfig(hosts=args.hosts), args.pool), "given hosts"
    if os.environ.get("PGSESSIONS_HOSTS"):
        return _sized(RouterConfig.from_env(), args.pool), "PGSESSIONS_HOSTS"
    return None, "local cluster"


def demo_pool_size(sessions: int) -> int:
    """The local demo's primary pool: every turn writes several times and each commit waits
    for its WAL flush, so 200 conversations queue behind the default 10 connections (measured
    here: all 10 busy, ~150 waiting, 0.5 s mean checkout wait); more connections share each
    flush (group commit)."""
    return max(10, min(40, sessions // 5))


def _sized(config: RouterConfig, pool: int | None, *, warm: bool = False) -> RouterConfig:
    """``pool`` connections at most on the primary; ``warm``: all opened at the start (the
    pool otherwise grows one connection at a time while 200 conversations queue)."""
    if pool is None:
        return config
    least = pool if warm else min(config.primary_pool_min, pool)
    return dataclasses.replace(config, primary_pool_max=pool, primary_pool_min=least)


RouterFactory = Callable[[], SessionRouter | ShardedRouter]


def run_demo_command(args: argparse.Namespace) -> int:
    if args.model and not os.environ.get("OPENAI_API_KEY"):
        print("pgsessions demo: --model needs OPENAI_API_KEY in the environment", file=sys.stderr)
        return 2
    if args.pool is not None and args.pool < 1:
        print("pgsessions demo: --pool must be >= 1", file=sys.stderr)
        return 2
    if args.sessions < 1:
        print("pgsessions demo: --sessions must be >= 1", file=sys.stderr)
        return 2
    if args.shards is not None and args.hosts:
        print("pgsessions demo: give --hosts or --shards, not both", file=sys.stderr)
        return 2
    log_out = sys.stderr if args.json else sys.stdout
    if args.shards is not None or shards_given(args.hosts):
        return _run_sharded(args, log_out)
    try:
        config, source = _config(args)
    except ValueError as exc:
        print(f"pgsessions demo: {exc}", file=sys.stderr)
        return 2
    cluster = None
    started = False
    if config is None:
        from ..devcluster import ClusterError
        from ..devcluster.local import default_dir, ensure_local_cluster

        print(f"starting the local cluster in {default_dir()} ...", file=log_out, flush=True)
        t0 = time.monotonic()
        try:
            cluster, started = ensure_local_cluster()
        except ClusterError as exc:
            print(f"pgsessions demo: {exc}", file=sys.stderr)
            return 1
        verb = f"started in {time.monotonic() - t0:.1f}s" if started else "already running"
        mode = "synchronous" if cluster.sync else "asynchronous"
        print(
            f"local cluster {verb}: primary + {len(cluster.replicas)} replicas ({mode})",
            file=log_out,
            flush=True,
        )
        config = _sized(
            RouterConfig(hosts=cluster.dsns()),
            args.pool if args.pool is not None else demo_pool_size(args.sessions),
            warm=True,
        )
        source = f"local cluster, {mode} replication"
    one = config
    try:
        summary = asyncio.run(_demo(args, lambda: SessionRouter(one), source, log_out))
    finally:
        if cluster is not None and started and not args.keep_cluster:
            cluster.stop()
            print("local cluster stopped", file=log_out, flush=True)
        elif cluster is not None:
            print(f"local cluster left running in {cluster.base_dir}", file=log_out, flush=True)
    return _report(args, summary, log_out)


def _report(args: argparse.Namespace, summary: dict[str, Any], log_out: Any) -> int:
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from ..demo.summary import format_summary

        print(format_summary(summary), file=log_out)
    return 0 if not summary["errors"] else 1


def _run_sharded(args: argparse.Namespace, log_out: Any) -> int:
    """The demo over shards: ``--shards N`` local clusters, else ``PGSESSIONS_SHARDS``."""
    from ..demo.shards import start_local_shards, stop_started
    from ..devcluster import ClusterError
    from ..devcluster.cluster import STATE_FILE
    from ..devcluster.local import default_dir
    from ..router.placement import DEFAULT_BUCKETS

    pool = {} if args.pool is None else {"primary_pool_max": args.pool}
    if args.shards is None:
        try:
            sharded = ShardedRouter.from_env(**pool)
        except ValueError as exc:
            print(f"pgsessions demo: {exc}", file=sys.stderr)
            return 2
        summary = asyncio.run(_demo(args, lambda: sharded, "PGSESSIONS_SHARDS", log_out))
        return _report(args, summary, log_out)
    base = default_dir().resolve()
    if (base / STATE_FILE).exists():
        print(
            f"pgsessions demo: a single cluster runs in {base}: `pgsessions cluster down` it, "
            "or set PGSESSIONS_CLUSTER_DIR",
            file=sys.stderr,
        )
        return 2
    print(f"starting {args.shards} local shards in {base} ...", file=log_out, flush=True)
    t0 = time.monotonic()
    try:
        clusters = start_local_shards(base, args.shards)
    except ClusterError as exc:
        print(f"pgsessions demo: {exc}", file=sys.stderr)
        return 1
    size = args.pool if args.pool is not None else demo_pool_size(args.sessions // args.shards)
    shards = {
        f"s{i}": _sized(RouterConfig(hosts=c.dsns()), size, warm=True)
        for i, (c, _) in enumerate(clusters, start=1)
    }
    print(
        f"{args.shards} shards ready in {time.monotonic() - t0:.1f}s: "
        + ", ".join(
            f"{n} primary + {len(c.replicas)} replica"
            for n, (c, _) in zip(shards, clusters, strict=True)
        ),
        file=log_out,
        flush=True,
    )
    raw = os.environ.get("PGSESSIONS_BUCKETS", "").strip()
    buckets = int(raw) if raw.isdigit() else DEFAULT_BUCKETS
    source = f"{args.shards} local shards"
    try:
        summary = asyncio.run(
            _demo(args, lambda: ShardedRouter(shards, buckets=buckets), source, log_out)
        )
    finally:
        if not args.keep_cluster:
            stop_started(clusters)
            print("local shards stopped", file=log_out, flush=True)
        else:
            print(f"local shards left running in {base}", file=log_out, flush=True)
    return _report(args, summary, log_out)


async def _demo(
    args: argparse.Namespace, make_router: RouterFactory, source: str, out: Any
) -> dict[str, Any]:
    # the Agents SDK takes ~2 s to import: only a running demo pays for it, not `--help`
    import agents

    from ..demo.shards import format_placement, placement
    from ..demo.stats import DemoStats
    from ..demo.summary import summarize
    from ..demo.view import LiveView
    from ..demo.workload import Conversations
    from ..drills.runner import quiet_pool_logs

    agents.set_tracing_disabled(True)
    quiet_pool_logs()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts = 0
    main_task = asyncio.current_task()

    def on_signal() -> None:
        nonlocal interrupts
        interrupts += 1
        stop.set()
        if interrupts > 1 and main_task is not None:
            main_task.cancel()  # a second Ctrl-C: do not wait for running turns

    for s in previous:
        loop.add_signal_handler(s, on_signal)
    try:
        async with make_router() as router:
            await migrate(router)
            metrics = _serve_metrics(router, args)
            metrics_url = metrics.url if metrics is not None else None
            if metrics_url:
                print(f"metrics: {metrics_url}/metrics", file=out, flush=True)
            stats = DemoStats()
            run_id = uuid.uuid4().hex[:8]
            think = args.think
            convs = Conversations(
                router,
                stats,
                count=args.sessions,
                prefix=f"demo-{run_id}",
                model=args.model,
                think=(think / 3, think * 5 / 3),
            )
            placed = placement(router, convs.session_ids)
            if placed is not None:
                print(format_placement(placed), file=out, flush=True)
            view = LiveView(out, tty=out.isatty(), duration=args.duration or None)
            convs.start()
            try:
                deadline = stats.started + args.duration if args.duration > 0 else None
                while not stop.is_set():
                    try:
                        async with asyncio.timeout(1.0):
                            await stop.wait()
                    except TimeoutError:
                        pass
                    view.frame(stats, router, metrics_url)
                    if deadline is not None and time.monotonic() >= deadline:
                        break
            finally:
                interrupted = stop.is_set()
                await convs.finish()
                elapsed = time.monotonic() - stats.started
                if metrics is not None:
                    metrics.stop()
            return await summarize(
                router,
                stats,
                prefix=convs.session_ids[0].rsplit("-", 1)[0],
                elapsed=elapsed,
                sessions=args.sessions,
                model=args.model or "scripted (offline)",
                source=source,
                metrics_url=metrics_url,
                interrupted=interrupted,
                session_ids=convs.session_ids,
            )
    finally:
        for s, handler in previous.items():
            loop.remove_signal_handler(s)
            signal.signal(s, handler)


def _serve_metrics(router: Router, args: argparse.Namespace) -> Any:
    if args.no_metrics:
        return None
    try:
        from ..monitoring import serve
    except ImportError:
        return None
    try:
        return serve(router, args.metrics_host, args.metrics_port)
    except OSError:
        return serve(router, args.metrics_host, 0)  # the port is taken: any free one
