"""get_items on a branch against main: `python -m bench.branches`.

One conversation of 10,000 items on main, branched at item 5,000 with 5,000 items of its own
(so the branch is as long as main); `get_items()` (all) and `get_items(50)` on the branch
against the same on main, for PostgresSession and for the SDK's AdvancedSQLiteSession (a
file in a temporary directory), interleaved in rounds in one run. Wall time per call, median
of the rounds; the target (issue 28) is a branch read within 1.2x of main. Starts its own
throw-away cluster (no replicas, fsync off) unless given ``--dsn``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Reader = Callable[[], Awaitable[Any]]


def _items(prefix: str, start: int, n: int) -> list[Any]:
    """``n`` items from pair number ``start``: a user question, then an answer of ~200 B."""
    out: list[Any] = []
    for i in range(start, start + n // 2):
        out.append({"role": "user", "content": f"{prefix} question {i} " + "q" * 120})
        out.append({"role": "assistant", "content": f"{prefix} answer {i} " + "a" * 200})
    return out


async def _fill(session: Any, items: int, branch_at: int, batch: int = 500) -> None:
    """main: ``items`` items; then a branch from the user turn at item ``branch_at`` + 1 with
    ``items - branch_at`` items of its own; the session is left on main."""
    for start in range(0, items, batch):
        await session.add_items(_items("main", start // 2, min(batch, items - start)))
    await session.create_branch_from_turn(branch_at // 2 + 1, "edit")
    for start in range(branch_at, items, batch):
        await session.add_items(_items("edit", start // 2, min(batch, items - start)))
    await session.switch_to_branch("main")


async def _time(f: Reader, n: int) -> float:
    gc.collect()  # the garbage of the case before (10,000 dicts) is not this case's cost
    t0 = time.perf_counter()
    for _ in range(n):
        await f()
    return (time.perf_counter() - t0) / n * 1e3


async def run(
    dsn: str, *, items: int = 10_000, branch_at: int = 5_000, rounds: int = 5, calls: int = 5
) -> dict[str, Any]:
    """The medians (ms per call) and the branch/main ratios; prints a table."""
    from agents.extensions.memory import AdvancedSQLiteSession

    from pgsessions import PostgresSession, RouterConfig, SessionRouter, migrate

    schema = f"bench_br_{uuid.uuid4().hex[:6]}"
    cfg = RouterConfig(hosts=[dsn], schema=schema, read_from_replicas=False)
    with tempfile.TemporaryDirectory() as tmp:
        sdk = AdvancedSQLiteSession(
            session_id="bench", db_path=Path(tmp) / "advanced.db", create_tables=True
        )
        try:
            async with SessionRouter(cfg) as router:
                await migrate(router)
                ours = PostgresSession("bench", router)
                await _fill(ours, items, branch_at)
                await _fill(sdk, items, branch_at)
                for s in (ours, sdk):  # both as long, and really different past the branch
                    edit = await s.get_items(branch_id="edit")
                    main = await s.get_items(branch_id="main")
                    if not (len(edit) == len(main) == items and edit[-1] != main[-1]):
                        raise RuntimeError(f"{type(s).__name__}: the branch was not built")
                cases: dict[str, Reader] = {
                    "pgsessions main all": lambda: ours.get_items(branch_id="main"),
                    "pgsessions branch all": lambda: ours.get_items(branch_id="edit"),
                    "pgsessions main 50": lambda: ours.get_items(50, branch_id="main"),
                    "pgsessions branch 50": lambda: ours.get_items(50, branch_id="edit"),
                    "AdvancedSQLiteSession main all": lambda: sdk.get_items(branch_id="main"),
                    "AdvancedSQLiteSession branch all": lambda: sdk.get_items(branch_id="edit"),
                    "AdvancedSQLiteSession main 50": lambda: sdk.get_items(50, branch_id="main"),
                    "AdvancedSQLiteSession branch 50": lambda: sdk.get_items(50, branch_id="edit"),
                }
                for f in cases.values():  # warm caches and plans
                    await f()
                samples: dict[str, list[float]] = {k: [] for k in cases}
                for _ in range(rounds):
                    for label, f in cases.items():
                        samples[label].append(await _time(f, calls))
                async with router.primary_connection() as conn:
                    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            sdk.close()
    medians = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {
        f"{who} {size}": medians[f"{who} branch {size}"] / medians[f"{who} main {size}"]
        for who in ("pgsessions", "AdvancedSQLiteSession")
        for size in ("all", "50")
    }
    for label, ms in medians.items():
        print(f"{label:36s} {ms:9.2f} ms/call", flush=True)
    for label, r in ratios.items():
        print(f"branch/main {label:34s} {r:5.2f}x", flush=True)
    return {"items": items, "branch_at": branch_at, "ms": medians, "ratios": ratios}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.branches", description=__doc__)
    p.add_argument("--dsn", default=None, help="a primary to use (default: a throw-away one)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    p.add_argument("--calls", type=int, default=5, help="calls per case per round (5)")
    args = p.parse_args()
    if args.dsn:
        asyncio.run(run(args.dsn, rounds=args.rounds, calls=args.calls))
        return
    from pgsessions.devcluster import LocalCluster

    with LocalCluster(replicas=0, fsync=False) as cluster:
        asyncio.run(run(cluster.primary.dsn, rounds=args.rounds, calls=args.calls))


if __name__ == "__main__":
    main()
