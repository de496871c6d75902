"""Operations on the shards of a sharded set-up: moving buckets between them online
(:mod:`.move`, statements in :mod:`.move_sql`)."""

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
    "drop_leftovers",
    "leftovers",
    "move_buckets",
    "parse_buckets",
    "resume_moves",
    "shard_status",
]
