"""`pgsessions shard move|status|resume|abort|cleanup`: move buckets between the shards of
``PGSESSIONS_SHARDS`` online (pgsessions.shards.move) and look at the directory."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import sys
from typing import Any


def add_shard_command(subparsers: Any) -> None:
    """Add ``shard move BUCKETS --to NAME``, ``shard status``, ``shard resume``,
    ``shard abort`` and ``shard cleanup`` (all with ``--json`` and ``--schema``)."""
    p = subparsers.add_parser(
        "shard",
        help="move buckets between shards online; the directory and moves in progress",
        description='Work on the sharded set-up of PGSESSIONS_SHARDS ("s1=dsn1,dsn2;'
        "s2=dsn3\"; PGSESSIONS_BUCKETS, default 1024). The shards' primaries need "
        "wal_level = logical and a role that may replicate (locally: `pgsessions cluster up "
        "--shards N` sets it).",
    )
    sub = p.add_subparsers(dest="shard_cmd", required=True, metavar="ACTION")

    def common(q: Any) -> None:
        q.add_argument("--json", action="store_true", help="JSON lines instead of text")
        q.add_argument(
            "--schema", default=None, help="schema name (default PGSESSIONS_SCHEMA or pgsessions)"
        )
        q.set_defaults(func=run_shard_command)

    mv = sub.add_parser(
        "move",
        help="move buckets to a shard while writes go on",
        description="Copy the buckets to the shard with logical replication, fence them on "
        "their owner, flip the directory once the copy caught up, then drop the "
        "replication objects and delete the old owner's rows. A move interrupted earlier is "
        "resumed first. One progress line per phase.",
    )
    mv.add_argument("buckets", help="a bucket (7), a range (0-63) or a list (1,5,9-12)")
    mv.add_argument("--to", required=True, metavar="NAME", help="the shard that takes them")
    common(mv)
    add = sub.add_parser(
        "add",
        help="make a new cluster a shard owning no bucket yet",
        description="Migrate the cluster that PGSESSIONS_SHARDS lists as NAME and give it its "
        "shard identity (no bucket: move or rebalance some to it).",
    )
    add.add_argument("name", metavar="NAME")
    common(add)
    rb = sub.add_parser(
        "rebalance",
        help="even the buckets out over the shards (moves of at most --limit buckets)",
    )
    rb.add_argument("--limit", type=int, default=64, help="buckets per move (default 64)")
    rb.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="NAME",
        help="a shard that gives all its buckets away (before `shard remove NAME`)",
    )
    common(rb)
    rm = sub.add_parser(
        "remove",
        help="take a shard that owns no bucket out of the set-up",
        description="Refused while the shard owns buckets or a move is in progress; then "
        "its identity is deleted and the PGSESSIONS_SHARDS without it is printed.",
    )
    rm.add_argument("name", metavar="NAME")
    common(rm)
    common(sub.add_parser("status", help="owner and epoch per bucket range, moves, leftovers"))
    common(sub.add_parser("resume", help="run every interrupted move to its end"))
    common(sub.add_parser("abort", help="roll back every interrupted move that has not flipped"))
    common(
        sub.add_parser(
            "cleanup",
            help="drop publications, subscriptions and slots of moves no longer in progress",
        )
    )


def run_shard_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def _printer(as_json: bool) -> Any:
    def progress(event: Any) -> None:
        if as_json:
            print(json.dumps({"event": "progress", **dataclasses.asdict(event)}), flush=True)
            return
        from ..router.directory import ranges

        extra = ""
        if event.rows_copied is not None:
            extra += f", rows {event.rows_copied}"
        if event.lag_bytes is not None:
            extra += f", lag {event.lag_bytes} bytes"
        if event.note is not None:
            extra += f" ({event.note})"
        print(
            f"[{event.seconds:7.2f}s] move {event.move_id} {event.source} -> {event.target} "
            f"buckets {ranges(event.buckets)}: {event.phase}{extra}",
            flush=True,
        )

    return progress


async def _run(args: argparse.Namespace) -> int:
    import psycopg

    from ..router import RouterError, ShardedRouter
    from ..router.directory import ranges
    from ..shards import grow
    from ..shards import move as mv

    overrides: dict[str, object] = {"read_from_replicas": False}
    if args.schema:
        overrides["schema"] = args.schema
    progress = _printer(args.json)
    try:
        if args.shard_cmd == "add":
            return await _add(args.name, overrides, args.json)
        router = ShardedRouter.from_env(**overrides)
        async with router:
            if args.shard_cmd == "move":
                buckets = mv.parse_buckets(args.buckets)
                results = await mv.move_buckets(router, buckets, to=args.to, progress=progress)
                _results(results, args.json)
            elif args.shard_cmd == "rebalance":
                if args.limit < 1:
                    raise ValueError(f"--limit must be >= 1, got {args.limit}")
                results = await grow.rebalance(
                    router, limit=args.limit, without=args.without, progress=progress
                )
                _results(results, args.json)
            elif args.shard_cmd == "remove":
                await grow.remove_shard(router, args.name)
                import os

                from ..router.shard_env import parse_shards, render_shards

                rest = parse_shards(os.environ["PGSESSIONS_SHARDS"])
                rest.pop(args.name, None)
                env = render_shards(rest)
                print(
                    json.dumps({"removed": args.name, "PGSESSIONS_SHARDS": env})
                    if args.json
                    else f"shard {args.name} removed; now use\n"
                    f"export PGSESSIONS_SHARDS={shlex.quote(env)}"
                )
            elif args.shard_cmd == "resume":
                _results(await mv.resume_moves(router, progress=progress), args.json)
            elif args.shard_cmd == "abort":
                done = await mv.abort_move(router, progress=progress)
                print(
                    json.dumps({"aborted": done})
                    if args.json
                    else f"rolled back: {', '.join(done) or 'no move in progress'}"
                )
            elif args.shard_cmd == "cleanup":
                dropped = await mv.drop_leftovers(router)
                if args.json:
                    print(json.dumps({"dropped": [list(x) for x in dropped]}))
                else:
                    for shard, kind, name in dropped:
                        print(f"shard {shard}: dropped {kind} {name}")
                    print(f"{len(dropped)} leftovers dropped")
            else:
                status = await mv.shard_status(router)
                status["leftovers"] = [list(x) for x in mv.leftovers(status)]
                if args.json:
                    print(json.dumps(status, indent=2))
                else:
                    _print_status(status, ranges)
    except (ValueError, RouterError, psycopg.Error) as exc:
        print(f"pgsessions shard {args.shard_cmd}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _add(name: str, overrides: dict[str, object], as_json: bool) -> int:
    import os

    from ..router import RouterConfig, ShardedRouter
    from ..router.shard_env import parse_shards
    from ..shards import grow

    shards = parse_shards(os.environ.get("PGSESSIONS_SHARDS", ""))
    if name not in shards:
        raise ValueError(f"PGSESSIONS_SHARDS lists no shard {name!r}: add NAME=DSN,... to it")
    raw = os.environ.get("PGSESSIONS_BUCKETS", "").strip()
    buckets = int(raw) if raw else 1024
    config = RouterConfig.from_env(**{**overrides, "hosts": shards[name], "name": name})
    await grow.add_shard(name, config, buckets=buckets)
    async with ShardedRouter.from_env(**overrides) as router:  # the set-up opens with it
        counts = router.stats()["buckets"]
    if as_json:
        print(json.dumps({"added": name, "buckets": counts}))
    else:
        print(
            f"shard {name} added (owns no bucket); buckets per shard: "
            + ", ".join(f"{n} {c}" for n, c in counts.items())
        )
    return 0


def _results(results: list[Any], as_json: bool) -> None:
    from ..router.directory import ranges

    for r in results:
        if as_json:
            print(json.dumps({"event": "moved", **dataclasses.asdict(r)}))
        else:
            pause = "-" if r.pause is None else f"{r.pause * 1000:.0f} ms"
            print(
                f"moved buckets {ranges(r.buckets)} {r.source} -> {r.target} ({r.move_id}"
                f"{', resumed' if r.resumed else ''}): {r.rows_moved} rows, {r.seconds:.2f}s, "
                f"writes fenced for {pause}"
            )
    if not results and not as_json:
        print("nothing to move")


def _print_status(status: dict[str, Any], ranges: Any) -> None:
    print(f"{status['buckets']} buckets")
    for r in status["ranges"]:
        span = str(r["first"]) if r["first"] == r["last"] else f"{r['first']}-{r['last']}"
        print(f"  {span:>12}  {r['owner'] or '(no owner: moving)'}  epoch {r['epoch']}")
    for name, info in status["shards"].items():
        print(
            f"shard {name}: {info['buckets']} buckets, about {info['rows_estimate']} rows, "
            f"{info['bytes'] / 1e6:.1f} MB"
        )
        for mvd in info["moves"]:
            print(
                f"  move {mvd['id']} {mvd['source']} -> {mvd['target']} buckets "
                f"{mvd['buckets']}: {mvd['phase']}"
                + (f", {mvd['rows_moved']} rows" if mvd["rows_moved"] is not None else "")
            )
        for s in info["slots"]:
            print(
                f"  slot {s['slot']} ({'active' if s['active'] else 'inactive'}, "
                f"retains {s['retained_bytes']} bytes of WAL)"
            )
    print(f"moves in progress: {', '.join(status['in_progress']) or 'none'}")
    left = status["leftovers"]
    if left:
        print(
            "leftovers (drop with `pgsessions shard cleanup`): "
            + ", ".join(f"{k} {n} on {s}" for s, k, n in left)
        )
    else:
        print("leftovers: none")
