"""`pgsessions bench`: options, a cluster, the run, the table, JSON/Markdown.

Only the standard library is imported at module level: `pgsessions --help` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import WORKLOADS

if TYPE_CHECKING:
    from .harness import BenchConfig

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `pgsessions bench` (also used by `python -m bench`)."""
    p.add_argument(
        "--workload",
        action="append",
        choices=[*WORKLOADS, "all"],
        help="workload to run (repeatable; default all: wal, turn, history, read-heavy, "
        "runner, agent)",
    )
    p.add_argument(
        "--agent-sessions", type=int, default=256, help="sessions of the agent workload (256)"
    )
    p.add_argument(
        "--agent-duration",
        type=float,
        default=6.0,
        help="seconds per agent cell and round (6: each session makes a few turns)",
    )
    p.add_argument(
        "--agent-pause",
        type=float,
        nargs=2,
        default=[0.2, 2.0],
        metavar=("MIN", "MAX"),
        help="the agent workload's pause after each turn, uniform in seconds (0.2 2.0)",
    )
    p.add_argument(
        "--duration", type=float, default=2.0, help="seconds per cell and round (2; history: half)"
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; median reported (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (1)")
    p.add_argument(
        "--sessions",
        type=_ints,
        default=[32, 1, 128],
        help="concurrent sessions of the turn workload, first = headline (32,1,128)",
    )
    p.add_argument(
        "--history-sizes",
        type=_ints,
        default=[100, 10_000, 100_000],
        help="items in the history sessions (100,10000,100000)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated contenders (pgsessions-routed, pgsessions-primary, sqlalchemy, "
        "raw-floor, sqlite-file)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="add a routed pgsessions contender with these RouterConfig options, e.g. "
        "catch_up_wait=0 (repeatable; for A/B runs of router settings)",
    )
    p.add_argument("--pool-size", type=int, default=16, help="connections per host (16)")
    p.add_argument(
        "--hosts",
        nargs="+",
        default=None,
        metavar="DSN",
        help="DSNs of an existing cluster, or one comma-separated list (default: a fresh "
        "temporary local cluster, primary + 2 replicas, fsync on, stopped afterwards)",
    )
    p.add_argument("--replicas", type=int, default=2, help="replicas of the temporary cluster (2)")
    p.add_argument(
        "--sync", action="store_true", help="temporary cluster with synchronous replication"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: one 1.5 s round per cell, the first --sessions value, "
        "histories up to 10k",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="write a Markdown report here")
    p.add_argument(
        "--save",
        action="store_true",
        help=f"write {RESULTS_DIR.name}/latest.json and latest.md in the bench directory",
    )
    p.add_argument("--keep", action="store_true", help="keep the benchmark tables afterwards")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="profile the run with pyinstrument (pip install pyinstrument) and write a text "
        "report here (.html: an HTML report); use with --only one contender",
    )


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from .harness import BenchConfig

    workloads = args.workload or ["all"]
    if "all" in workloads:
        workloads = list(WORKLOADS)
    cfg = BenchConfig(
        workloads=tuple(dict.fromkeys(workloads)),
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        turn_sessions=tuple(args.sessions),
        history_sizes=tuple(sorted(args.history_sizes)),
        agent_sessions=args.agent_sessions,
        agent_duration=args.agent_duration,
        agent_pause=(min(args.agent_pause), max(args.agent_pause)),
    )
    if args.quick:
        cfg.duration, cfg.rounds, cfg.warmup = 1.5, 1, 0.5
        cfg.agent_duration, cfg.wal_adds = 4.0, 100
        cfg.turn_sessions = cfg.turn_sessions[:1]
        cfg.history_sizes = tuple(s for s in cfg.history_sizes if s <= 10_000) or (100,)
    return cfg


def estimate_seconds(cfg: BenchConfig, contenders: int) -> float:
    total = 0.0
    for w in cfg.workloads:
        if w == "wal":
            total += 10 * cfg.wal_adds * 2 * 0.003  # 5 rounds x 2 stores, a few ms per add
            continue
        n = {"turn": len(cfg.turn_sessions), "history": len(cfg.history_sizes)}.get(w, 1)
        d = {"history": cfg.duration / 2, "agent": cfg.agent_duration}.get(w, cfg.duration)
        k = {"runner": contenders + 1, "agent": min(contenders, 3)}.get(w, contenders)
        total += n * k * (cfg.rounds * d + cfg.warmup)
    return total


def _split_roles(dsns: list[str]) -> tuple[str, list[str]]:
    import psycopg

    primary, replicas = None, []
    for d in dsns:
        with psycopg.connect(d, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row and row[0]:
            replicas.append(d)
        elif primary is None:
            primary = d
        else:
            raise SystemExit(f"two writable hosts among --hosts: {primary} and {d}")
    if primary is None:
        raise SystemExit("no writable host among --hosts")
    return primary, replicas


def _variant(spec: str) -> Any:
    """A routed pgsessions contender with RouterConfig options from ``k=v,k=v``."""
    from .contenders import PgSessionsContender

    options: dict[str, Any] = {}
    for part in spec.split(","):
        key, _, raw = part.partition("=")
        value: Any = raw.strip()
        for conv in (int, float):
            try:
                value = conv(value)
                break
            except ValueError:
                pass
        if value in ("true", "false"):
            value = value == "true"
        options[key.strip()] = value
    return PgSessionsContender(True, name=f"pgsessions-routed[{spec}]", **options)


def _profiled(coro: Any, out: Path) -> Any:
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled", interval=0.0005)
    with profiler:
        results = asyncio.run(coro)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".html":
        out.write_text(profiler.output_html())
    else:
        out.write_text(profiler.output_text(unicode=True, show_all=False))
    print(f"wrote profile {out}")
    return results


def main(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``; 0 when every contender passed its checks."""
    from .contenders import BenchEnv, default_contenders
    from .report import render_markdown, render_text
    from .run import run_bench

    cfg = config_from_args(args)
    contenders = default_contenders()
    if args.only:
        wanted = {x.strip() for x in args.only.split(",")}
        unknown = wanted - {c.name for c in contenders}
        if unknown:
            print(f"unknown contender(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        contenders = [c for c in contenders if c.name in wanted]
    for spec in args.variant:
        contenders.append(_variant(spec))
    cluster: Any = None
    workdir = Path(tempfile.mkdtemp(prefix="pgsessions-bench-"))
    try:
        if args.hosts:
            from pgsessions.router.dsn import split_hosts

            primary, replicas = _split_roles(split_hosts(args.hosts))
        else:
            from pgsessions.devcluster import LocalCluster

            print(f"starting a local cluster: primary + {args.replicas} replicas, fsync on ...")
            cluster = LocalCluster(replicas=args.replicas, sync=args.sync, fsync=True)
            cluster.start()
            primary, replicas = cluster.primary.dsn, [r.dsn for r in cluster.replicas]
        env = BenchEnv(
            primary_dsn=primary,
            replica_dsns=replicas,
            workdir=workdir,
            prefix=f"bench_{uuid.uuid4().hex[:6]}",
            pool_size=args.pool_size,
        )
        est = estimate_seconds(cfg, len(contenders))
        print(f"running {', '.join(cfg.workloads)}; about {est / 60:.1f} min of measurement")
        coro = run_bench(env, cfg, contenders, keep=args.keep)
        if args.profile is not None:
            results = _profiled(coro, args.profile)
        else:
            results = asyncio.run(coro)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(render_text(results))
    outputs: list[tuple[Path, str]] = []
    if args.save:
        outputs += [(RESULTS_DIR / "latest.json", "json"), (RESULTS_DIR / "latest.md", "md")]
    if args.json:
        outputs.append((args.json, "json"))
    if args.markdown:
        outputs.append((args.markdown, "md"))
    for path, kind in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=2) + "\n" if kind == "json" else render_markdown(results)
        path.write_text(text)
        print(f"wrote {path}")
    failed = [c["name"] for c in results["contenders"] if c["status"] == "failed"]
    if failed:
        print(f"FAILED the correctness guard: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_arguments(p)
    return p
