"""Placement: which bucket a conversation belongs to (pure, fixed forever).

A bucket is the first 8 bytes of SHA-256 of the session id's UTF-8, read as a big-endian
unsigned integer, modulo the bucket count chosen when the sharded set-up was made. The
function never changes (a test pins its values): stored rows and the directory depend on it.
"""

from __future__ import annotations

import hashlib

#: the bucket count of a new sharded set-up; fixed once the set-up exists
DEFAULT_BUCKETS = 1024


def bucket_of(session_id: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """The bucket of ``session_id`` among ``buckets`` (0 <= result < buckets)."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets!r}")
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def spread(shards: list[str], buckets: int) -> dict[int, str]:
    """An even first assignment of ``buckets`` to ``shards``: contiguous ranges, in the
    order of the shards' names (the counts differ by at most one)."""
    names = sorted(shards)
    if not names:
        raise ValueError("no shards to spread buckets over")
    if buckets < len(names):
        raise ValueError(f"{buckets} buckets cannot be spread over {len(names)} shards")
    base, extra = divmod(buckets, len(names))
    out: dict[int, str] = {}
    start = 0
    for i, name in enumerate(names):
        size = base + (1 if i < extra else 0)
        for b in range(start, start + size):
            out[b] = name
        start += size
    return out
