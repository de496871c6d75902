"""Pure sharding decisions, no server: placement (pinned forever), the first spread of
buckets, directory validation, which shard serves a key, and sharded tokens."""

from __future__ import annotations

import hashlib

import pytest

from pgsessions.router.placement import DEFAULT_BUCKETS, bucket_of, spread

# placement --------------------------------------------------------------------------------
#: known values: these must never change (stored rows and directories depend on them)
PINNED = {
    ("", 1024): 20,
    ("conv-42", 1024): 368,
    ("é", 1024): 851,
    ("session-0", 1024): 325,
    ("conv-42", 16): 0,
    ("session-0", 16): 5,
    ("anything", 1): 0,
}


@pytest.mark.parametrize(("session_id", "buckets"), sorted(PINNED))
def test_bucket_of_is_pinned(session_id: str, buckets: int) -> None:
    assert bucket_of(session_id, buckets) == PINNED[(session_id, buckets)]


def test_bucket_of_is_the_first_8_bytes_of_sha256_mod_n() -> None:
    sid = "tenant-7/conversation-\u00e9\U0001f600"
    digest = hashlib.sha256(sid.encode("utf-8")).digest()
    assert (
        bucket_of(sid)
        == int.from_bytes(digest[:8], "big") % DEFAULT_BUCKETS
        == bucket_of(sid, 1024)
    )


def test_bucket_of_refuses_no_buckets() -> None:
    with pytest.raises(ValueError, match="buckets"):
        bucket_of("x", 0)


def test_spread_is_even_contiguous_and_ordered_by_name() -> None:
    got = spread(["s2", "s1", "s3"], 10)
    assert [got[b] for b in range(10)] == ["s1"] * 4 + ["s2"] * 3 + ["s3"] * 3
    counts = {name: list(spread(["a", "b"], 1024).values()).count(name) for name in "ab"}
    assert counts == {"a": 512, "b": 512}


def test_spread_refuses_too_few_buckets_or_no_shard() -> None:
    with pytest.raises(ValueError, match="cannot be spread"):
        spread(["a", "b"], 1)
    with pytest.raises(ValueError, match="no shards"):
        spread([], 4)


def test_sessions_spread_evenly_over_buckets() -> None:
    counts = [0] * 16
    for i in range(16_000):
        counts[bucket_of(f"session-{i}", 16)] += 1
    assert max(abs(c - 1000) for c in counts) < 120
