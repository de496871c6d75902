"""Operations on the shards of a sharded set-up: moving buckets between them online
(:mod:`.move`, statements in :mod:`.move_sql`), adding a shard and evening the buckets out
(:mod:`.grow`)."""

from .grow import add_shard, plan_rebalance, rebalance, remove_shard
from .move import (
    MoveError,
    MoveProgress,
    MoveResult,
    abort_move,
    drop_leftovers,
    leftovers,
    move_buckets,
    parse_buckets,
    resume_moves,
    shard_status,
)

__all__ = [
    "MoveError",
    "MoveProgress",
    "MoveResult",
    "abort_move",
    "add_shard",
    "drop_leftovers",
    "leftovers",
    "move_buckets",
    "parse_buckets",
    "plan_rebalance",
    "rebalance",
    "remove_shard",
    "resume_moves",
    "shard_status",
]
