"""Growing and evening out a sharded set-up: a new shard joins owning no bucket
(:func:`add_shard`), and :func:`rebalance` plans and runs the moves that even the buckets
out (:func:`plan_rebalance` is the pure plan)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from ..errors import ShardError
from ..router.config import RouterConfig
from ..router.directory import Directory
from ..router.session_router import SessionRouter
from ..router.shard_sql import shard_sql
from ..router.sharded import ShardedRouter
from ..sessions.schema import migrate
from .move import MoveResult, Progress, move_buckets, resume_moves


async def add_shard(name: str, config: RouterConfig, *, buckets: int) -> None:
    """Migrate the cluster of ``config`` and make it shard ``name`` of a set-up of
    ``buckets`` buckets, owning none yet (a router that lists it opens afterwards). Idempotent;
    ShardError when the cluster is already another shard or has another bucket count."""
    qs = shard_sql(config.schema)
    async with SessionRouter(config) as router:
        await migrate(router)
        async with router.primary_connection() as conn, conn.transaction():
            await conn.execute(qs.lock, (f"pgsessions.migrate:{config.schema}",))
            cur = await conn.execute(qs.directory)
            row = await cur.fetchone()
            if row is not None:
                got_name, got_buckets, _, _ = row
                if (got_name, got_buckets) != (name, buckets):
                    raise ShardError(
                        name,
                        f"the cluster is already shard {got_name!r} of a set-up of "
                        f"{got_buckets} buckets",
                    )
                return
            await conn.execute(qs.claim_identity, (name, buckets))


def plan_rebalance(
    directory: Directory, shards: Sequence[str], *, limit: int | None = None
) -> list[tuple[list[int], str]]:
    """The moves that even the buckets out over ``shards`` (counts differing by one at most):
    ``[(buckets, to), ...]``, each from one source shard to one target, at most ``limit``
    buckets each. A shard over its share gives up its highest buckets."""
    names = sorted(shards)
    base, extra = divmod(directory.buckets, len(names))
    owned: dict[str, list[int]] = {n: [] for n in names}
    for b, owner in enumerate(directory.owners):
        if owner is not None:
            owned.setdefault(owner, []).append(b)
    # the shards with most buckets keep the one extra bucket each
    by_size = sorted(names, key=lambda n: (-len(owned[n]), n))
    share = {n: base + (1 if i < extra else 0) for i, n in enumerate(by_size)}
    surplus: list[tuple[str, int]] = []  # (source, bucket)
    for n in sorted(owned):
        keep = share.get(n, 0)
        surplus += [(n, b) for b in owned[n][keep:]]
    moves: list[tuple[list[int], str]] = []
    for n in names:
        need = share[n] - len(owned[n])
        while need > 0 and surplus:
            source = surplus[0][0]
            batch = [b for s, b in surplus if s == source][: min(need, limit or need)]
            surplus = [x for x in surplus if x[1] not in set(batch)]
            moves.append((batch, n))
            need -= len(batch)
    return moves


async def rebalance(
    router: ShardedRouter,
    *,
    limit: int | None = 64,
    without: Sequence[str] = (),
    progress: Progress | None = None,
    wait: float = 3600.0,
) -> list[MoveResult]:
    """Even the buckets out over every shard of ``router`` but those ``without`` (which
    give all theirs away: before :func:`remove_shard`), one move of at most ``limit``
    buckets at a time (see :func:`.move.move_buckets`). An unfinished move (a mover that
    died) is resumed first: its buckets may be owned by no shard (fenced), which no plan
    sees."""
    results: list[MoveResult] = await resume_moves(router, progress=progress, wait=wait)
    directory = await router.refresh()
    if directory is None:
        raise ShardError(next(iter(router.shards)), "the sharded set-up is not made yet")
    keep = [n for n in router.shards if n not in without]
    if not keep:
        raise ValueError("rebalance needs at least one shard to keep buckets")
    for batch, to in plan_rebalance(directory, keep, limit=limit):
        results += await move_buckets(router, batch, to=to, progress=progress, wait=wait)
    return results


__all__: Sequence[str] = ("add_shard", "plan_rebalance", "rebalance", "remove_shard")


async def remove_shard(router: ShardedRouter, name: str) -> None:
    """Take shard ``name`` out of the set-up: only when it owns no bucket and no move is in
    progress on any shard; its identity row is deleted (its cluster is no shard any more;
    then drop it from the configuration). ShardError naming it otherwise."""
    from .move import shard_status

    status = await shard_status(router)
    if name not in status["shards"]:
        raise ShardError(name, "is not in the router's configuration")
    if status["shards"][name]["buckets"]:
        raise ShardError(
            name,
            f"owns {status['shards'][name]['buckets']} buckets: move them away first "
            "(`pgsessions shard move ... --to OTHER`, or rebalance without it)",
        )
    if status["in_progress"]:
        raise ShardError(name, f"moves in progress: {', '.join(status['in_progress'])}")
    async with router.shards[name].primary_connection() as conn:
        qs = shard_sql(router.config.schema)
        async with conn.transaction():
            await conn.execute(qs.lock, (f"pgsessions.migrate:{router.config.schema}",))
            await conn.execute(
                sql.SQL("DELETE FROM {}.shard_identity").format(
                    sql.Identifier(router.config.schema)
                )
            )
