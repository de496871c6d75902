"""The fleet benchmark (issue 31): `python -m bench.fleet`.

Many conversations from several processes with think time, the stores back to back in one
run on one cluster (a fresh primary + 2 asynchronous replicas, fsync on, unless ``--hosts``):

- **pgsessions-routed**: PostgresSession through a SessionRouter given the primary and both
  replicas; **sqlalchemy**: the SDK's SQLAlchemySession + asyncpg on the primary. Both are
  set up by bench/contenders.py, each process with its own router / engine
  (``--pool-size`` connections per host per process, all open before the start).
- ``--processes`` worker processes (spawned) run ``--conversations`` conversations between
  them, one asyncio task each. A turn is ``get_items(limit=50)`` then ``add_items`` of a user
  message and a ~1 KB assistant message; then the conversation thinks, uniform in
  ``--think`` seconds (first, once, uniform in 0 to the upper bound, to spread the starts).
- ``--warmup`` seconds, then ``--seconds`` measured: a turn counts when it ends inside the
  measured window; its latency (turn, and the add_items of it) is recorded. Errors are
  counted by exception type over the whole run (warm-up included).
- **Guard**: each turn's read must return ``min(50, 2 x turns so far)`` items ending with the
  assistant message the conversation wrote last (read-your-writes); a conversation whose
  add raised is no longer checked (what it stored is unknown).

Figures per store: **offered** turns/s = conversations / mean think (what the fleet would
make if every turn were instant); **achieved** turns/s; **allowed** turns/s =
conversations / (mean think + mean turn latency), what the think time allows at the
latency measured: a closed loop cannot do more. **Held** = no error, no guard violation,
and achieved >= 95% of allowed (no conversation stalls beyond what the latency accounts
for); ``achieved / offered`` shows how far the latency itself cost. Also reported: how
long the pauses really took (a CPU-starved event loop wakes its conversations late, which
lowers the achieved rate below the allowed one) and the workers' CPU per turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import queue as queue_mod
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .contenders import BenchEnv, Contender, PgSessionsContender, SQLAlchemyContender
from .harness import checkpoint, percentile, wait_replicas_caught_up
from .payloads import Payloads, assistant_marker, item_text

FLEET_CONTENDERS = ("pgsessions-routed", "sqlalchemy")
#: seconds a worker may take to start, open its store and report ready
READY_TIMEOUT = 180.0

Log = Callable[[str], None]


@dataclass(frozen=True)
class FleetConfig:
    """What to run; the defaults are issue 31's fleet (2,000 conversations, 8 processes)."""

    processes: int = 8
    conversations: int = 2000
    seconds: float = 20.0
    warmup: float = 5.0
    think: tuple[float, float] = (0.5, 2.0)
    limit: int = 50
    #: connections per host per process (each process has its own router / engine), as
    #: `pgsessions bench` gives every contender per host
    pool_size: int = 16
    #: seconds between progress lines
    progress: float = 5.0
    #: held: achieved >= this share of what think time and turn latency allow
    held_share: float = 0.95

    def conversations_of(self, index: int) -> int:
        """Conversations process ``index`` runs (the remainder goes to the first ones)."""
        base, extra = divmod(self.conversations, self.processes)
        return base + (1 if index < extra else 0)

    @property
    def think_mean(self) -> float:
        return (self.think[0] + self.think[1]) / 2

    @property
    def offered(self) -> float:
        """Turns/s if every turn were instant: conversations / mean think."""
        return self.conversations / self.think_mean


def make_contender(name: str) -> Contender:
    """A fleet contender by name, set up as bench/contenders.py does for `pgsessions bench`."""
    if name == "pgsessions-routed":
        return PgSessionsContender(routed=True)
    if name == "sqlalchemy":
        return SQLAlchemyContender()
    raise ValueError(f"unknown fleet contender {name!r} (known: {', '.join(FLEET_CONTENDERS)})")


# ------------------------------------------------------------------------------ pure parts
def allowed_rate(conversations: int, think_mean: float, turn_mean: float) -> float:
    """Turns/s a closed loop of ``conversations`` can make: each turn takes ``turn_mean``
    and is followed by ``think_mean`` of thinking."""
    cycle = think_mean + turn_mean
    return conversations / cycle if cycle > 0 else 0.0


def is_held(achieved: float, allowed: float, errors: int, violations: int, share: float) -> bool:
    """The offered load was held: no error, no guard violation, and ``achieved`` at least
    ``share`` of ``allowed``."""
    return errors == 0 and violations == 0 and allowed > 0 and achieved >= share * allowed


def _ms(sorted_values: Sequence[float], q: float) -> float:
    return round(percentile(sorted_values, q) * 1000, 1)


def summarize(
    name: str, reports: Sequence[dict[str, Any]], cfg: FleetConfig, failures: Sequence[str] = ()
) -> dict[str, Any]:
    """Merge the workers' reports of one contender into its figures (see the module doc)."""
    turns = sorted(x for r in reports for x in r["turn_latencies"])
    adds = sorted(x for r in reports for x in r["add_latencies"])
    errors: Counter[str] = Counter()
    for r in reports:
        errors.update(r["errors"])
    violations = sum(r["violations"] for r in reports)
    thinks = sum(r["think_count"] for r in reports)
    think_mean = sum(r["think_sum"] for r in reports) / thinks if thinks else cfg.think_mean
    turn_mean = statistics.fmean(turns) if turns else 0.0
    achieved = len(turns) / cfg.seconds if cfg.seconds > 0 else 0.0
    conversations = sum(r["conversations"] for r in reports)
    allowed = allowed_rate(conversations, think_mean, turn_mean)
    routing: Counter[str] = Counter()
    for r in reports:
        routing.update(r.get("reads_routed") or {})
    reads = sum(routing.values())
    cpu = sum(r["cpu_s"] for r in reports)
    done = sum(r["turns_done"] for r in reports)
    slept = sum(r["slept_sum"] for r in reports) / thinks if thinks else None
    n_errors = sum(errors.values())
    return {
        "contender": name,
        "processes": len(reports),
        "conversations": conversations,
        "turns": len(turns),
        "offered_turns_per_s": round(cfg.offered, 1),
        "achieved_turns_per_s": round(achieved, 1),
        "allowed_turns_per_s": round(allowed, 1),
        "achieved_over_offered": round(achieved / cfg.offered, 3) if cfg.offered else 0.0,
        "held": not failures and is_held(achieved, allowed, n_errors, violations, cfg.held_share),
        "errors": n_errors,
        "errors_by_type": dict(errors.most_common()),
        "error_samples": [s for r in reports for s in r["error_samples"]][:5],
        "violations": violations,
        "violation_samples": [s for r in reports for s in r["violation_samples"]][:5],
        "failures": list(failures),
        "think_mean_s": round(think_mean, 3),
        "think_slept_mean_s": None if slept is None else round(slept, 3),
        "turn_mean_ms": round(turn_mean * 1000, 1),
        "turn_p50_ms": _ms(turns, 0.50),
        "turn_p99_ms": _ms(turns, 0.99),
        "add_p50_ms": _ms(adds, 0.50),
        "add_p99_ms": _ms(adds, 0.99),
        "client_cpu_ms_per_turn": round(1000 * cpu / done, 2) if done else None,
        "replica_read_share": (
            round(sum(n for k, n in routing.items() if k.startswith("replica/")) / reads, 4)
            if reads
            else None
        ),
    }


# ------------------------------------------------------------------------------ a worker
@dataclass
class Conversation:
    sid: str
    session: Any
    turns: int = 0
    #: an add raised: what is stored is unknown, the guard skips this conversation
    uncertain: bool = False

    def check(self, items: list[Any], limit: int) -> str | None:
        """None when ``items`` end with this conversation's last write (read-your-writes)."""
        if self.uncertain:
            return None
        want = min(limit, 2 * self.turns)
        if len(items) != want:
            return f"{self.sid}: read {len(items)} items before turn {self.turns}, expected {want}"
        if self.turns and not item_text(items[-1]).startswith(
            assistant_marker(self.sid, self.turns - 1)
        ):
            return f"{self.sid}: the previous turn is missing (read-your-writes)"
        return None


@dataclass
class WorkerStats:
    turn_latencies: list[float] = field(default_factory=list)
    add_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    violations: int = 0
    violation_samples: list[str] = field(default_factory=list)
    think_sum: float = 0.0
    think_count: int = 0
    #: how long those pauses really took (a busy event loop wakes its tasks late)
    slept_sum: float = 0.0
    #: turns done since the start (warm-up included), for the progress lines
    done: int = 0

    def error(self, exc: BaseException) -> None:
        self.errors[type(exc).__name__] += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])

    def violation(self, what: str) -> None:
        self.violations += 1
        if len(self.violation_samples) < 3:
            self.violation_samples.append(what[:300])


async def run_conversations(
    convs: Sequence[Conversation], cfg: FleetConfig, rng: random.Random, stats: WorkerStats
) -> None:
    """Run every conversation for warm-up + measured seconds from now (see the module doc)."""
    pl = Payloads()
    low, high = cfg.think
    t0 = time.perf_counter()
    begin, end = t0 + cfg.warmup, t0 + cfg.warmup + cfg.seconds

    async def think(seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, end - time.perf_counter())))

    async def one(c: Conversation) -> None:
        await think(rng.uniform(0, high))
        while time.perf_counter() < end:
            start = time.perf_counter()
            added = None
            try:
                got = await c.session.get_items(limit=cfg.limit)
                problem = c.check(got, cfg.limit)
                if problem is not None:
                    stats.violation(problem)
                added = time.perf_counter()
                await c.session.add_items(pl.turn(c.sid, c.turns))
            except Exception as exc:
                stats.error(exc)
                if added is not None:
                    c.uncertain = True
            else:
                done = time.perf_counter()
                c.turns += 1
                stats.done += 1
                if begin <= done <= end:
                    stats.turn_latencies.append(done - start)
                    stats.add_latencies.append(done - added)
            pause = rng.uniform(low, high)
            before = time.perf_counter()
            await think(pause)
            if begin <= before and before + pause <= end:  # a whole pause, in the window
                stats.think_sum += pause
                stats.think_count += 1
                stats.slept_sum += time.perf_counter() - before

    await asyncio.gather(*(one(c) for c in convs))


async def _worker_run(
    name: str, env: BenchEnv, cfg: FleetConfig, index: int, out: Any, start: Any
) -> dict[str, Any]:
    contender = make_contender(name)
    await contender.open(env)
    try:
        await contender.warm(env.pool_size)
        convs = [
            Conversation(sid, contender.session(sid))
            for sid in (f"{env.prefix}-p{index}-c{i}" for i in range(cfg.conversations_of(index)))
        ]
        out.put(("ready", index, None))
        if not await asyncio.to_thread(start.wait, READY_TIMEOUT):
            raise TimeoutError("no start signal from the parent")
        stats = WorkerStats()
        cpu0 = time.process_time()

        async def report_progress() -> None:
            while True:
                await asyncio.sleep(1.0)
                out.put(("progress", index, (stats.done, sum(stats.errors.values()))))

        reporter = asyncio.create_task(report_progress())
        try:
            await run_conversations(convs, cfg, random.Random(index), stats)
        finally:
            reporter.cancel()
        return {
            "conversations": len(convs),
            "turn_latencies": stats.turn_latencies,
            "add_latencies": stats.add_latencies,
            "errors": dict(stats.errors),
            "error_samples": stats.error_samples,
            "violations": stats.violations,
            "violation_samples": stats.violation_samples,
            "think_sum": stats.think_sum,
            "think_count": stats.think_count,
            "slept_sum": stats.slept_sum,
            "turns_done": stats.done,
            "cpu_s": time.process_time() - cpu0,
            "reads_routed": contender.read_counts(),
        }
    finally:
        await contender.close()


def worker_main(
    name: str, env: BenchEnv, cfg: FleetConfig, index: int, out: Any, start: Any
) -> None:
    """A worker process: run its conversations, put ("result", index, report) on ``out``."""
    try:
        report = asyncio.run(_worker_run(name, env, cfg, index, out, start))
    except BaseException as exc:  # the parent reports it; never a silent death
        out.put(("failed", index, f"{type(exc).__name__}: {exc}"[:500]))
        return
    out.put(("result", index, report))


# ------------------------------------------------------------------------------ the parent
def run_contender(name: str, env: BenchEnv, cfg: FleetConfig, log: Log) -> dict[str, Any]:
    """One contender's fleet: spawn the workers, start them together, gather their reports."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Event()
    procs = [
        ctx.Process(target=worker_main, args=(name, env, cfg, i, out, start), daemon=True)
        for i in range(cfg.processes)
    ]
    for p in procs:
        p.start()
    reports: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    ready: set[int] = set()
    progress: dict[int, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while len(ready) + len(failures) < cfg.processes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: workers not ready within {READY_TIMEOUT:.0f} s")
            try:
                kind, index, payload = out.get(timeout=1.0)
            except queue_mod.Empty:
                _check_alive(procs, ready, failures)
                continue
            if kind == "ready":
                ready.add(index)
            elif kind == "failed":
                failures.append(f"process {index}: {payload}")
        log(f"{name}: {len(ready)} processes ready, {cfg.conversations} conversations")
        start.set()
        t0 = time.monotonic()
        last_t, last_done = t0, 0
        next_line = t0 + cfg.progress
        # the run, plus time for the last turns and thinks, and pool timeouts, to end
        deadline = t0 + cfg.warmup + cfg.seconds + 120.0
        while len(reports) + len(failures) < cfg.processes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: workers did not finish")
            try:
                kind, index, payload = out.get(timeout=0.5)
            except queue_mod.Empty:
                kind = ""
            if kind == "progress":
                progress[index] = payload
            elif kind == "result":
                reports[index] = payload
            elif kind == "failed":
                failures.append(f"process {index}: {payload}")
            now = time.monotonic()
            if now >= next_line:
                done = sum(d for d, _ in progress.values())
                errors = sum(e for _, e in progress.values())
                phase = "warm-up" if now - t0 < cfg.warmup else "measuring"
                rate = (done - last_done) / (now - last_t)
                log(
                    f"  {name}: {now - t0:5.1f} s ({phase}), {done:,} turns,"
                    f" {rate:,.0f}/s, {errors} errors"
                )
                last_t, last_done, next_line = now, done, now + cfg.progress
            if not kind:
                _check_alive(procs, set(reports), failures)
    finally:
        start.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    return summarize(name, [reports[i] for i in sorted(reports)], cfg, failures)


def _check_alive(procs: Sequence[Any], answered: set[int], failures: list[str]) -> None:
    for i, p in enumerate(procs):
        if p.exitcode is not None and i not in answered:
            note = f"process {i}: exited with code {p.exitcode}"
            if not any(f.startswith(f"process {i}:") for f in failures):
                failures.append(note)


async def _prepare(name: str, env: BenchEnv) -> Contender:
    """Create the contender's schema and tables once, before its workers open it."""
    c = make_contender(name)
    await c.open(env)
    await c.close()
    return c


async def _between(env: BenchEnv) -> None:
    await wait_replicas_caught_up(env)
    await checkpoint(env)


def run_fleet(
    env: BenchEnv, cfg: FleetConfig, names: Sequence[str] = FLEET_CONTENDERS, log: Log = print
) -> dict[str, Any]:
    """Every contender's fleet, back to back on ``env``; returns the report as a dict."""
    from .report import machine_info

    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = asyncio.run(machine_info(env.primary_dsn, env.replica_dsns))
    results: list[dict[str, Any]] = []
    for name in names:
        c = make_contender(name)
        why = c.unavailable()
        if why:
            log(f"skipping {name}: {why}")
            continue
        prepared = asyncio.run(_prepare(name, env))
        try:
            asyncio.run(_between(env))
            results.append(run_contender(name, env, cfg, log))
        finally:
            asyncio.run(prepared.drop())
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    config = {**asdict(cfg), "pool_size": env.pool_size}  # what the contenders were given
    return {"date": date, "machine": machine, "config": config, "contenders": results}


def render(report: dict[str, Any]) -> str:
    """The report as a text table."""
    cfg = report["config"]
    m = report["machine"]
    lines = [
        f"fleet: {cfg['conversations']:,} conversations from {cfg['processes']} processes,"
        f" think {cfg['think'][0]:g}-{cfg['think'][1]:g} s, {cfg['seconds']:g} s measured"
        f" after {cfg['warmup']:g} s warm-up, {cfg['pool_size']} connections per host per"
        " process",
        f"{report['date']}; {m['cpu_count']} cores, load average {m['load_avg_start']} ->"
        f" {m.get('load_avg_end')}",
        "",
    ]
    head = (
        f"{'contender':18s} {'offered/s':>9s} {'allowed/s':>9s} {'achieved/s':>10s}"
        f" {'held':>4s} {'errors':>6s} {'add p50':>8s} {'add p99':>8s}"
        f" {'turn p50':>8s} {'turn p99':>8s}"
    )
    lines.append(head)
    for c in report["contenders"]:
        lines.append(
            f"{c['contender']:18s} {c['offered_turns_per_s']:9.0f} {c['allowed_turns_per_s']:9.0f}"
            f" {c['achieved_turns_per_s']:10.0f} {'yes' if c['held'] else 'no':>4s}"
            f" {c['errors']:6d} {c['add_p50_ms']:6.0f}ms {c['add_p99_ms']:6.0f}ms"
            f" {c['turn_p50_ms']:6.0f}ms {c['turn_p99_ms']:6.0f}ms"
        )
    for c in report["contenders"]:
        share = c["replica_read_share"]
        lines.append(
            f"{c['contender']}: {c['achieved_over_offered']:.0%} of offered; pauses took"
            f" {c['think_slept_mean_s']} s on average ({c['think_mean_s']} s drawn); client CPU"
            f" {c['client_cpu_ms_per_turn']} ms per turn"
            + ("" if share is None else f"; {share:.1%} of reads on replicas")
        )
        if c["errors_by_type"]:
            lines.append(f"{c['contender']} errors: {c['errors_by_type']}")
        for s in c["violation_samples"] + c["failures"]:
            lines.append(f"{c['contender']} FAILED: {s}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = FleetConfig()
    p = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--processes", type=int, default=d.processes, help="worker processes (8)")
    p.add_argument("--conversations", type=int, default=d.conversations, help="in all (2000)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="measured seconds (20)")
    p.add_argument("--warmup", type=float, default=d.warmup, help="seconds before (5)")
    p.add_argument(
        "--think", type=float, nargs=2, default=d.think, metavar=("LOW", "HIGH"), help="(0.5 2)"
    )
    p.add_argument("--pool-size", type=int, default=d.pool_size, help="per host per process (16)")
    p.add_argument("--progress", type=float, default=d.progress, help="seconds between lines (5)")
    p.add_argument("--only", default="", help=f"comma-separated ({','.join(FLEET_CONTENDERS)})")
    p.add_argument("--hosts", default="", help="an existing cluster (primary first) instead")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--save",
        action="store_true",
        help="also write results/fleet-latest.json and fleet-latest.md in the bench directory",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fleet; 1 if a contender broke the guard or lost a worker."""
    args = build_parser().parse_args(argv)
    cfg = FleetConfig(
        processes=args.processes,
        conversations=args.conversations,
        seconds=args.seconds,
        warmup=args.warmup,
        think=(args.think[0], args.think[1]),
        pool_size=args.pool_size,
        progress=args.progress,
    )
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(FLEET_CONTENDERS)
    unknown = [n for n in names if n not in FLEET_CONTENDERS]
    if unknown:  # before a cluster starts
        print(f"unknown contender(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    log: Log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else print
    cluster: Any = None
    workdir = Path(tempfile.mkdtemp(prefix="pgsessions-fleet-"))
    try:
        if args.hosts:
            from pgsessions.router.dsn import split_hosts

            primary, *replicas = split_hosts(args.hosts)
        else:
            from pgsessions.devcluster import LocalCluster

            log("starting a local cluster: primary + 2 replicas, fsync on ...")
            cluster = LocalCluster(replicas=2, fsync=True)
            cluster.start()
            primary, replicas = cluster.primary.dsn, [r.dsn for r in cluster.replicas]
        env = BenchEnv(
            primary_dsn=primary,
            replica_dsns=replicas,
            workdir=workdir,
            prefix=f"fleet_{uuid.uuid4().hex[:6]}",
            pool_size=cfg.pool_size,
        )
        report = run_fleet(env, cfg, names, log)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    if args.save:
        results = Path(__file__).resolve().parent / "results"
        (results / "fleet-latest.json").write_text(json.dumps(report, indent=2) + "\n")
        md = f"# Fleet ({time.strftime('%Y-%m-%d')})\n\n`python -m bench.fleet`\n\n"
        (results / "fleet-latest.md").write_text(md + "```\n" + render(report) + "\n```\n")
        print(f"wrote {results / 'fleet-latest.json'} and fleet-latest.md")
    bad = [c["contender"] for c in report["contenders"] if c["violations"] or c["failures"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
