"""Moving buckets between shards: `python -m bench.shard_move --mb 100`.

Starts two throw-away clusters (no replicas, fsync off, wal_level = logical) as shards s1 and
s2 of a 64-bucket set-up, loads about ``--mb`` MB of history (messages of 1 kB) into the
conversations of ``--buckets`` buckets of s1, then moves those buckets to s2 in one move
while one writer per bucket keeps adding items to a conversation of it. Reports the rows
and bytes moved, the time of each phase, the moving rate, the fence-to-take time and the
writers' longest write (their pause), and checks that every acknowledged write is on s2
once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any


async def run(mb: int, n_buckets: int) -> dict[str, Any]:
    from pgsessions import PostgresSession, RouterConfig, ShardedRouter, migrate
    from pgsessions.devcluster import LocalCluster
    from pgsessions.drills.history import load_history
    from pgsessions.router.placement import bucket_of
    from pgsessions.shards import move_buckets

    clusters = [
        LocalCluster(replicas=0, fsync=False, settings={"wal_level": "logical"}) for _ in range(2)
    ]
    for c in clusters:
        c.start()
    schema = f"move_bench_{uuid.uuid4().hex[:6]}"
    try:
        cfgs = {
            n: RouterConfig(hosts=c.dsns(), schema=schema, failover_timeout=30)
            for n, c in zip(("s1", "s2"), clusters, strict=True)
        }
        async with ShardedRouter(cfgs, buckets=64) as router:
            await migrate(router)
            d = router.directory
            assert d is not None
            moving = [b for b in range(64) if d.owners[b] == "s1"][:n_buckets]
            t0 = time.monotonic()
            size = load_history(clusters[0].primary, schema, moving, mb, total_buckets=64)
            loaded = time.monotonic() - t0
            sids: dict[int, str] = {}
            i = 0
            while len(sids) < len(moving):
                sid = f"w-{i}"
                if bucket_of(sid, 64) in moving:
                    sids.setdefault(bucket_of(sid, 64), sid)
                i += 1
            acked: list[str] = []
            longest = [0.0]
            stop = False

            async def writer(sid: str) -> None:
                s = PostgresSession(sid, router)
                n = 0
                while not stop:
                    t = time.monotonic()
                    await s.add_items([{"role": "user", "content": f"{sid}/{n}"}])
                    longest[0] = max(longest[0], time.monotonic() - t)
                    acked.append(f"{sid}/{n}")
                    n += 1

            tasks = [asyncio.create_task(writer(s)) for s in sids.values()]
            await asyncio.sleep(0.5)
            [result] = await move_buckets(router, moving, to="s2")
            stop = True
            await asyncio.gather(*tasks)
            stored = clusters[1].primary.execute(
                f"SELECT item->>'content' FROM \"{schema}\".messages WHERE session_id = ANY(%s)",
                (list(sids.values()),),
            )
            copy = result.phases.get("copied", 0.0)
            return {
                "buckets": len(moving),
                "history_mb": round(size / 1e6, 1),
                "load_seconds": round(loaded, 1),
                "rows_moved": result.rows_moved,
                "move_seconds": round(result.seconds, 2),
                "phases": result.phases,
                "copy_mb_per_s": round(size / 1e6 / copy, 1) if copy else None,
                "fence_to_take_ms": round((result.pause or 0) * 1000, 1),
                "writers_longest_write_s": round(longest[0], 3),
                "writes_acked": len(acked),
                "stored_once": sorted(r[0] for r in stored) == sorted(acked),
            }
    finally:
        for c in clusters:
            c.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.shard_move")
    p.add_argument("--mb", type=int, default=100, help="history to move, in MB (default 100)")
    p.add_argument("--buckets", type=int, default=4, help="buckets moved (default 4)")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args.mb, args.buckets)), indent=2))


if __name__ == "__main__":
    main()
