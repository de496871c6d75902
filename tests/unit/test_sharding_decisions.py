"""Pure sharding decisions, no server: placement (pinned forever), the first spread of
buckets, directory validation, which shard serves a key, and sharded tokens."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from pgsessions.errors import DirectoryError, ShardError
from pgsessions.router import shard_tokens
from pgsessions.router.directory import ShardClaim, build_directory, ranges
from pgsessions.router.placement import DEFAULT_BUCKETS, bucket_of, spread
from pgsessions.router.shard_env import parse_shards, render_shards

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


# the directory ----------------------------------------------------------------------------
def claim(
    shard: str, owned: range | list[int], *, name: str | None = "", cluster: str = ""
) -> ShardClaim:
    return ShardClaim(
        shard,
        (cluster or f"sys-{shard}", "db"),
        name=shard if name == "" else name,
        buckets=8,
        owned={b: 1 for b in owned},
    )


def test_directory_from_two_shards_places_each_session_on_its_owner() -> None:
    d = build_directory([claim("s1", range(4)), claim("s2", range(4, 8))], 8)
    assert d is not None
    assert d.counts() == {"s1": 4, "s2": 4}
    for i in range(50):
        sid = f"x-{i}"
        place = d.place(sid)
        assert place.bucket == bucket_of(sid, 8)
        assert place.shard == ("s1" if place.bucket < 4 else "s2") and place.epoch == 1


def test_no_shard_set_up_yet_is_no_directory() -> None:
    assert build_directory([claim("s1", [], name=None), claim("s2", [], name=None)], 8) is None


def test_two_shards_of_one_cluster_are_refused() -> None:
    with pytest.raises(ShardError, match="'s2': is the same cluster as shard 's1'"):
        build_directory(
            [claim("s1", range(4), cluster="A"), claim("s2", range(4, 8), cluster="A")], 8
        )


def test_a_shard_under_another_name_or_bucket_count_or_not_set_up_is_refused() -> None:
    with pytest.raises(ShardError, match="'s1': the cluster is shard 's9'"):
        build_directory([claim("s1", range(4), name="s9"), claim("s2", range(4, 8))], 8)
    with pytest.raises(ShardError, match="'s2': is not set up as a shard"):
        build_directory([claim("s1", range(8)), claim("s2", [], name=None)], 8)
    with pytest.raises(ShardError, match="set up with 8 buckets, the router expects 16"):
        build_directory([claim("s1", range(8))], 16)
    with pytest.raises(ShardError, match="claims bucket 9, outside 0-7"):
        build_directory([claim("s1", [*range(8), 9])], 8)


def test_a_bucket_claimed_twice_or_by_none_is_refused_naming_the_buckets() -> None:
    with pytest.raises(
        DirectoryError, match=r"buckets 3-4 are claimed by two shards \(s1 and s2\)"
    ):
        build_directory([claim("s1", range(5)), claim("s2", range(3, 8))], 8)
    with pytest.raises(DirectoryError, match="buckets 0-1, 7 are owned by none of the shards s1"):
        build_directory([claim("s1", range(2, 7))], 8)
    # at different epochs the newer claim wins: a move's target over a source's replica
    # that has not replayed the fence yet
    newer = claim("s2", range(3, 8))
    newer = dataclasses.replace(newer, owned={**dict(newer.owned or {}), 3: 2, 4: 2})
    for claims in ([claim("s1", range(5)), newer], [newer, claim("s1", range(5))]):
        d = build_directory(claims, 8)
        assert d is not None
        assert d.owners[2:5] == ("s1", "s2", "s2") and d.epochs[2:5] == (1, 2, 2)
    # while the router runs (a refresh), a bucket without owner fails the call that needs it
    d = build_directory([claim("s1", range(2, 8))], 8, complete=False)
    assert d is not None
    sid = next(f"x-{i}" for i in range(100) if bucket_of(f"x-{i}", 8) < 2)
    with pytest.raises(DirectoryError, match="owned by none of the shards this router reaches"):
        d.place(sid)


def test_ranges_are_written_compactly() -> None:
    assert ranges([7, 0, 1, 2, 5]) == "0-2, 5, 7"


# sharded tokens ---------------------------------------------------------------------------
def test_a_token_names_its_shard_and_merging_keeps_the_newest_of_each() -> None:
    assert shard_tokens.parse("s1:0/4000028") == {"s1": 0x4000028}
    assert shard_tokens.merge(["s1:0/10", None, "s2:0/5", "s1:0/20"]) == "s1:0/20+s2:0/5"
    assert shard_tokens.merge(["s1:0/10"]) == "s1:0/10"
    assert shard_tokens.merge([None]) is None
    assert shard_tokens.part_for("s1:0/20+s2:0/5", "s2") == "0/5"
    assert shard_tokens.part_for("s1:0/20", "s2") is None


@pytest.mark.parametrize("bad", ["", "0/10", "s1", "s1:", "s1:zz", "s 1:0/1", "s1:0/1+"])
def test_a_non_token_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match="sharded consistency token"):
        shard_tokens.parse(bad)


@pytest.mark.parametrize("bad", ["s1:", "s1:zz", "s1:0/1+", "s1:0/1:2", "s1:-0/1"])
def test_a_shards_own_part_is_validated_on_the_quick_path_too(bad: str) -> None:
    # a token of the one shard asked for skips the parse, not the check
    with pytest.raises(ValueError, match="sharded consistency token"):
        shard_tokens.part_for(bad, "s1")
    assert shard_tokens.part_for("s1:0/4a", "s1") == "0/4a"
    assert shard_tokens.part_for("s10:0/4a", "s1") is None
    # and merging two tokens of one shard (a session's and its write's) checks both
    with pytest.raises(ValueError, match="sharded consistency token"):
        shard_tokens.merge(["s1:0/10", bad])
    assert shard_tokens.merge(["s1:0/10", "s1:0/9"]) == "s1:0/10"


def test_shard_names_are_plain() -> None:
    assert shard_tokens.check_shard_name("eu-west_1") == "eu-west_1"
    for bad in ("", "a+b", "a:b", "x" * 65, "a;b"):
        with pytest.raises(ValueError, match="shard name"):
            shard_tokens.check_shard_name(bad)


# the environment --------------------------------------------------------------------------
def test_pgsessions_shards_is_parsed_shard_by_shard() -> None:
    text = (
        "s1=host=a port=1 dbname=x,host=b port=2 dbname=x; "
        "s2=postgresql://u:secret@h1:5432,h2:5433/db;"
    )
    got = parse_shards(text)
    assert list(got) == ["s1", "s2"]
    assert got["s1"] == ["host=a port=1 dbname=x", "host=b port=2 dbname=x"]
    assert len(got["s2"]) == 2
    assert parse_shards(render_shards(got)) == got


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "is empty"),
        ("postgresql://u:secret@h/db", "part 1"),
        ("s 1=host=a", "part 1"),
        ("s1=host=a;s1=host=b", "twice"),
        ("s1=", "no hosts"),
    ],
)
def test_a_bad_pgsessions_shards_is_named_without_its_passwords(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_shards(text)
    assert "secret" not in str(info.value)


def test_the_newer_of_two_tokens_of_one_shard_is_one_of_them() -> None:
    assert shard_tokens.merge(["s1:0/20", "s1:0/10"]) == "s1:0/20"
    assert shard_tokens.merge(["s1:0/10", "s1:0/20"]) == "s1:0/20"
    assert shard_tokens.merge(["s1:0/10", "s2:0/20"]) == "s1:0/10+s2:0/20"
    with pytest.raises(ValueError, match="sharded consistency token"):
        shard_tokens.merge(["s1:0/10", "s1:nope"])


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("s1:0/20", "s1:0/10"),
        ("s1:0/10", "s1:1/0"),
        ("s1:0/A", "s1:0/a"),
        (None, "s1:0/10"),
        ("s1:0/10", None),
        (None, None),
        ("s1:0/10", "s2:0/20"),
        ("s1:0/10+s2:0/5", "s2:0/20"),
        ("s3:0/10", "s3:0/20"),  # a shard this router does not know: the whole parse
        ("s10:0/1", "s1:0/2"),
    ],
)
def test_the_newer_of_two_is_what_merging_them_gives(a: str | None, b: str | None) -> None:
    assert shard_tokens.newer(a, b, {"s1", "s2", "s10"}) == shard_tokens.merge([a, b])


@pytest.mark.parametrize("bad", ["s1:", "s1:zz", "s1:0/1+", "s1:0/1:2", "s1", "s 1:0/1"])
def test_the_newer_of_two_checks_both(bad: str) -> None:
    for pair in ((bad, "s1:0/10"), ("s1:0/10", bad)):
        with pytest.raises(ValueError, match="sharded consistency token"):
            shard_tokens.newer(*pair, {"s1", "s 1"})


@pytest.mark.parametrize("bad", [0, -1.0, 3601, True, "1"])
def test_directory_interval_out_of_range_is_refused_naming_it(bad: object) -> None:
    from pgsessions.router import ShardedRouter

    with pytest.raises(ValueError, match="directory_interval must be"):
        ShardedRouter({"s1": "postgresql://h1/db"}, directory_interval=bad)  # type: ignore[arg-type]


def test_directory_interval_defaults_to_the_check_interval() -> None:
    from pgsessions.router import RouterConfig, ShardedRouter

    cfg = RouterConfig(hosts=["postgresql://h1/db"], check_interval=0.3)
    assert ShardedRouter({"s1": cfg}).directory_interval == 0.3
    assert ShardedRouter({"s1": cfg}, directory_interval=5).directory_interval == 5.0


def test_a_token_that_is_a_str_subclass_is_a_token() -> None:
    class Text(str):
        pass

    assert shard_tokens.part_for(Text("s1:0/4a"), "s1") == "0/4a"
    assert shard_tokens.newer(Text("s1:0/10"), Text("s1:0/20"), {"s1"}) == "s1:0/20"
