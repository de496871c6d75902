"""Sharding figures: `python -m bench.sharding`.

1. Client CPU per turn (get_items(50) then add_items(2 items)) through a ShardedRouter over
   one shard against a SessionRouter on the same cluster and schema (target: within 3%):
   one coroutine, process CPU time, the two routers' turns interleaved turn by turn (which
   goes first alternates), summed per router and round; the ratio of the best rounds and the
   median of the rounds' paired ratios.
2. The spread of 10,000 sessions over two shards (two clusters): sessions and writes each
   shard holds, counted on its primary (target: within 5% of even).

Starts its own throw-away clusters (no replicas, fsync off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from .micro import _cpu_per_call
from .payloads import Payloads


async def turn_cpu(dsn: str, n: int, rounds: int) -> dict[str, Any]:
    """Client CPU (us) per turn of each router, best per round, and their ratio."""
    from pgsessions import PostgresSession, RouterConfig, SessionRouter, ShardedRouter, migrate

    schema = f"shard_bench_{uuid.uuid4().hex[:6]}"
    pl = Payloads()
    cfg = RouterConfig(hosts=[dsn], schema=schema, primary_pool_min=1, primary_pool_max=1)
    best: dict[str, list[float]] = {"SessionRouter": [], "ShardedRouter (1 shard)": []}
    async with SessionRouter(cfg) as plain, ShardedRouter({"s1": cfg}) as sharded:
        await migrate(sharded)
        routers = {"SessionRouter": plain, "ShardedRouter (1 shard)": sharded}
        sessions = {}
        for label, router in routers.items():
            s = PostgresSession(f"turns-{label[:7]}", router)
            for i in range(50):
                await s.add_items(pl.turn(s.session_id, i))
            sessions[label] = s
        counter = iter(range(10**9))

        def turn(s: PostgresSession) -> Any:
            async def run() -> None:
                await s.get_items(limit=50)
                await s.add_items(pl.turn(s.session_id, next(counter)))

            return run

        labels = list(sessions)
        turns = {label: turn(s) for label, s in sessions.items()}
        for label in labels:  # warm-up
            await _cpu_per_call(turns[label], max(50, n // 10))
        for _ in range(rounds):
            # turn by turn, which router goes first alternating: the machine's drift (other
            # work, frequency) lands on both routers' sums alike
            spent = dict.fromkeys(labels, 0.0)
            for i in range(n):
                for label in labels if i % 2 == 0 else labels[::-1]:
                    c0 = time.process_time()
                    await turns[label]()
                    spent[label] += time.process_time() - c0
            for label in labels:
                best[label].append(spent[label] / n * 1e6)
        async with plain.primary_connection() as c:
            await c.execute(f'DROP SCHEMA "{schema}" CASCADE')
    plain_us = min(best["SessionRouter"])
    sharded_us = min(best["ShardedRouter (1 shard)"])
    paired = sorted(
        s / p for p, s in zip(best["SessionRouter"], best["ShardedRouter (1 shard)"], strict=True)
    )
    return {
        "client_cpu_us_per_turn": {k: round(min(v), 1) for k, v in best.items()},
        "rounds": {k: [round(x, 1) for x in v] for k, v in best.items()},
        "sharded_over_plain": round(sharded_us / plain_us, 4),
        # each round's two measurements are taken back to back: their ratio shares the load
        "median_paired_ratio": round(paired[len(paired) // 2], 4),
        "target": "<= 1.03",
    }


async def spread(dsns: dict[str, str], sessions: int, concurrency: int) -> dict[str, Any]:
    """Sessions and writes per shard for ``sessions`` sessions, one add each."""
    from pgsessions import PostgresSession, RouterConfig, ShardedRouter, migrate

    schema = f"shard_spread_{uuid.uuid4().hex[:6]}"
    shards = {n: RouterConfig(hosts=[d], schema=schema) for n, d in dsns.items()}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(sessions):
        queue.put_nowait(i)
    async with ShardedRouter(shards) as router:
        await migrate(router)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                s = PostgresSession(f"user-{i}-{uuid.uuid4().hex[:8]}", router)
                await s.add_items([{"role": "user", "content": f"hello {i}"}])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        counts: dict[str, dict[str, int]] = {}
        for name, shard in router.shards.items():
            async with shard.primary_connection() as c:
                cur = await c.execute(
                    f'SELECT (SELECT count(*) FROM "{schema}".conversations),'
                    f' (SELECT count(*) FROM "{schema}".messages)'
                )
                row = await cur.fetchone()
                assert row is not None
                counts[name] = {"sessions": int(row[0]), "writes": int(row[1])}
                await c.execute(f'DROP SCHEMA "{schema}" CASCADE')
        buckets = router.stats()["buckets"]
    even = sessions / len(dsns)
    worst = max(abs(c["sessions"] - even) / even for c in counts.values())
    return {
        "sessions": sessions,
        "per_shard": counts,
        "buckets": buckets,
        "worst_deviation_from_even": round(worst, 4),
        "target": "<= 0.05",
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sharding", description=__doc__)
    p.add_argument("-n", type=int, default=500, help="turns per measurement (500)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    p.add_argument("--sessions", type=int, default=10_000, help="sessions spread (10000)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    from pgsessions.devcluster import LocalCluster

    with LocalCluster(replicas=0, fsync=False) as a, LocalCluster(replicas=0, fsync=False) as b:
        cpu = asyncio.run(turn_cpu(a.primary.dsn, args.n, args.rounds))
        dist = asyncio.run(
            spread({"s1": a.primary.dsn, "s2": b.primary.dsn}, args.sessions, args.concurrency)
        )
    result = {"turn_cpu": cpu, "spread": dist}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for label, us in cpu["client_cpu_us_per_turn"].items():
        print(f"{label:28s} {us:8.1f} us client CPU per turn (best of {args.rounds} rounds)")
    print(f"{'ratio of the bests':28s} {cpu['sharded_over_plain']:8.4f} (target <= 1.03)")
    print(f"{'median paired ratio':28s} {cpu['median_paired_ratio']:8.4f}")
    for name, c in dist["per_shard"].items():
        print(
            f"{name}: {c['sessions']} sessions, {c['writes']} writes, "
            f"{dist['buckets'][name]} buckets"
        )
    print(f"worst deviation from even: {dist['worst_deviation_from_even']:.2%} (target <= 5%)")


if __name__ == "__main__":
    main()
