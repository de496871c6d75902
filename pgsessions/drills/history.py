"""Loading history into buckets straight on a shard's primary (the volume a move copies):
``pgsessions drill shard-move --history-mb N`` and ``python -m bench.shard_move --mb N``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..devcluster.node import Node

#: messages per loaded conversation (of about 1 kB each)
PER_CONVERSATION = 100


def load_history(
    node: Node,
    schema: str,
    buckets: Sequence[int],
    mb: float,
    *,
    total_buckets: int,
    prefix: str = "big",
) -> int:
    """About ``mb`` MB of conversations of :data:`PER_CONVERSATION` 1 kB messages, with
    session ids ``prefix-N`` in ``buckets`` (of ``total_buckets``), inserted with two
    statements on ``node`` (a primary that owns the buckets), then VACUUM ANALYZE. Returns
    the bytes of the messages stored in ``buckets`` (``pg_column_size``)."""
    moving = sorted(set(buckets))
    if not moving or mb <= 0:
        return 0
    per = PER_CONVERSATION
    n_conv = max(1, int(mb * 1024) // per)
    q = f'"{schema}"'
    node.execute(
        f"INSERT INTO {q}.conversations (session_id, next_seq, item_count)"
        " SELECT s, %s + 1, %s FROM (SELECT %s || '-' || i AS s"
        f" FROM generate_series(1, %s::bigint * %s / %s) i) g WHERE {q}.bucket_of(s, %s)"
        " = ANY(%s) LIMIT %s",
        (per, per, prefix, n_conv, total_buckets, len(moving), total_buckets, moving, n_conv),
    )
    node.execute(
        f"INSERT INTO {q}.messages (session_id, bucket, seq, item, role)"
        " SELECT c.session_id, c.bucket, k,"
        " json_build_object('role', 'user', 'content', repeat('x', 960)), 'user'"
        f" FROM {q}.conversations c, generate_series(1, %s) k"
        " WHERE c.bucket = ANY(%s) AND c.session_id LIKE %s",
        (per, moving, prefix + "-%"),
    )
    node.execute("VACUUM ANALYZE")
    rows = node.execute(
        f"SELECT coalesce(sum(pg_column_size(m.*)), 0)::bigint FROM {q}.messages m"
        " WHERE bucket = ANY(%s)",
        (moving,),
    )
    return int(rows[0][0])
